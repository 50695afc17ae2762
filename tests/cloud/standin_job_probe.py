"""A tiny CustomJob module for the Vertex stand-in's tests: `python -m tests.cloud.standin_job_probe`.

Without options it writes `$AIP_MODEL_DIR/summary.json` through google-cloud-storage (which reaches the
GCS emulator through STORAGE_EMULATOR_HOST, as a real job reaches GCS): the Vertex variables it saw, its
arguments and its working directory. `--sleep S` waits first (a job to cancel); `--fail MESSAGE` writes
`error: MESSAGE` and one more line to stderr and exits 1, as a failing trainer would.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

SEEN = (
    "AIP_MODEL_DIR",
    "AIP_CHECKPOINT_DIR",
    "AIP_TENSORBOARD_LOG_DIR",
    "CLOUD_ML_JOB_ID",
    "CUDA_VISIBLE_DEVICES",
    "PROBE_SPEC_ENV",
)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="standin_job_probe")
    parser.add_argument("--sleep", type=float, default=0.0)
    parser.add_argument("--fail")
    parser.add_argument("rest", nargs="*")
    args = parser.parse_args(argv)
    print(f"probe {os.getpid()} started in {os.getcwd()} with {sys.argv[1:]}", flush=True)
    time.sleep(args.sleep)
    if args.fail is not None:
        print("loading the data", file=sys.stderr)
        print(f"error: {args.fail}", file=sys.stderr)
        print("giving up", file=sys.stderr)
        return 1
    import google.cloud.storage as storage  # as shared/store/gcs.py imports it, for mypy
    from google.auth.credentials import AnonymousCredentials

    bucket, _, prefix = os.environ["AIP_MODEL_DIR"].removeprefix("gs://").partition("/")
    summary = {"env": {k: os.environ.get(k) for k in SEEN}, "argv": sys.argv[1:], "cwd": os.getcwd()}
    client = storage.Client(project="test-project", credentials=AnonymousCredentials())
    client.bucket(bucket).blob(f"{prefix}summary.json").upload_from_string(json.dumps(summary))
    print(f"wrote gs://{bucket}/{prefix}summary.json", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
