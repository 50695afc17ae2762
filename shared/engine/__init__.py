"""The local training engine: a small PyTorch detector and classifier trained in detached job processes.

It reads the Vertex import JSONL the ETL writes and writes Vertex AutoML's batch-prediction output, so
the chain treats it exactly like Vertex. `shared.training.local_engine.LocalEngineBackend` is its
`TrainingBackend` adapter; `jobs` starts and watches the job processes without importing torch.
`vertex_job` runs the same training and prediction as a Vertex AI custom job, from the package that
scripts/build_engine_package.py builds.
"""
