"""Format conversions between Labelbox, the chain and Vertex AI: pure functions, no I/O."""
