"""Training backend port: dataset, training job and batch prediction, on Vertex AI or the local engine."""
