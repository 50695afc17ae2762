"""The detached job process: `python -m shared.engine.worker <job folder> --lock-fd N`.

Started by `jobs.launch`, in its own session so it outlives the request that started it. It reads
`spec.json`, runs the training or the batch prediction, and keeps `state.json` current; any exception
ends as FAILED with the reason, SIGTERM as CANCELLED (when cancel was requested) or FAILED. The
inherited lock descriptor is never closed: holding it is how others know this process is alive.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import traceback
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Any

import psutil

from shared.engine.job_folders import (
    CANCELLED,
    CHECKPOINT,
    FAILED,
    ONNX_MODEL,
    RUNNING,
    SUCCEEDED,
    StateWriter,
    now_iso,
    read_json,
)

if TYPE_CHECKING:
    from shared.store.port import ObjectStore

log = logging.getLogger("shared.engine.worker")

BATCH_PREDICTION = "batch_prediction"
TRAINING = "training"


class Terminated(Exception):
    """SIGTERM arrived: stop where we are and record why."""


def _on_sigterm(_signum: int, _frame: FrameType | None) -> None:
    raise Terminated("terminated by SIGTERM")


def _configure_torch(spec: dict[str, Any]) -> None:
    from shared.engine.train import configure_torch

    configure_torch(spec.get("threads"))


def _store(spec: dict[str, Any]) -> ObjectStore:
    from shared.store.local_folder import LocalFolderStore

    return LocalFolderStore(Path(spec["bucket_dir"]), spec["bucket_name"])


def _run_training(folder: Path, spec: dict[str, Any], state: StateWriter) -> dict[str, Any]:
    from shared.engine.train import TrainSettings, resolve_device, train

    settings = TrainSettings(
        task=spec["task"],
        import_uri=spec["import_uri"],
        seed=int(spec["seed"]),
        max_steps=spec.get("max_steps"),
        train_seconds=float(spec["train_seconds"]),
        display_name=spec.get("display_name") or "local-model",
        **spec.get("settings", {}),
    )
    device = resolve_device(spec.get("device", "auto"))
    state.update(device=str(device), mode="steps" if settings.max_steps is not None else "wall_time")
    summary = train(settings, _store(spec), folder / CHECKPOINT, device=device, report=lambda p: state.update(**p))
    return {"result": CHECKPOINT, **summary, **_export(folder)}


def _export(folder: Path) -> dict[str, Any]:
    """`model.onnx` beside the checkpoint (see `onnx_model.export_checkpoint`); SIGTERM goes through."""
    from shared.engine.onnx_model import export_checkpoint

    return export_checkpoint(folder / CHECKPOINT, folder / ONNX_MODEL, passing=(Terminated,))


def _run_batch_prediction(folder: Path, spec: dict[str, Any], state: StateWriter) -> dict[str, Any]:
    from shared.engine.model import load_checkpoint
    from shared.engine.onnx_model import runner_for
    from shared.engine.predict import PredictionJob, Predictor, run_batch_prediction
    from shared.engine.train import resolve_device

    device = resolve_device(spec.get("device", "auto"))
    state.update(device=str(device))
    loaded = load_checkpoint(Path(spec["checkpoint"]), device)
    if loaded.config.task != spec["task"]:
        raise ValueError(f"the model was trained for {loaded.config.task}, not {spec['task']}")
    job = PredictionJob(
        instances_uri=spec["instances_uri"],
        output_dir_uri=spec["output_dir_uri"],
        confidence_threshold=float(spec["confidence_threshold"]),
        max_predictions=int(spec["max_predictions"]),
        **spec.get("settings", {}),
    )
    runner = runner_for(loaded, Path(spec["checkpoint"]).parent / ONNX_MODEL, job.runtime, device)
    runtime = "torch" if runner is None else "onnx"
    state.update(runtime=runtime)
    summary = run_batch_prediction(Predictor(loaded, device, runner), _store(spec), job, lambda p: state.update(**p))
    return {"result": spec["output_dir_uri"], "runtime": runtime, **summary}


def run(folder: Path) -> int:
    state = StateWriter(folder)
    signal.signal(signal.SIGTERM, _on_sigterm)
    try:
        state.update(state=RUNNING, pid=os.getpid(), create_time=psutil.Process().create_time(), started_at=now_iso())
        spec = read_json(folder / "spec.json")
        _configure_torch(spec)
        kind = spec.get("kind")
        if kind == TRAINING:
            outcome = _run_training(folder, spec, state)
        elif kind == BATCH_PREDICTION:
            outcome = _run_batch_prediction(folder, spec, state)
        else:
            raise ValueError(f"unknown job kind {kind!r}")
        state.update(**outcome)
        state.update(state=SUCCEEDED, finished_at=now_iso())
    except Terminated as exc:
        cancelled = state.cancel_requested()
        log.warning("job stopped: %s", exc)
        state.update(
            state=CANCELLED if cancelled else FAILED,
            error="cancelled by request" if cancelled else str(exc),
            finished_at=now_iso(),
        )
        return 1
    except Exception as exc:
        traceback.print_exc()
        state.update(state=FAILED, error=f"{type(exc).__name__}: {exc}"[:1000], finished_at=now_iso())
        return 1
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Runs one local engine job folder.")
    parser.add_argument("folder", type=Path)
    parser.add_argument("--lock-fd", type=int, default=None, help="inherited descriptor holding the job's flock")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    log.info("job %s starting (pid %d)", args.folder.name, os.getpid())
    return run(args.folder)


if __name__ == "__main__":
    sys.exit(main())
