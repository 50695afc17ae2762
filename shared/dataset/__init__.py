"""The training data a run makes: staged images, the Vertex import lines, and the row manifest."""
