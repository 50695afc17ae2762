"""The local engine as a `TrainingBackend`: training and batch prediction in detached processes.

Refs are `local-engine://jobs/<job_id>` (a job folder under the engine dir), so any adapter instance
in any process, given the same engine dir, finds a job from the ref alone. A trained model is
`local-engine://jobs/<job_id>/model.pt`, with its ONNX export `model.onnx` beside it (when the
export succeeded; the training state says `onnx` or `onnx_error`). The local engine has no dataset
resource: the import JSONL in the bucket is the dataset, so an "import" checks the file and its ref is
the file's gs:// URI.

Training is bounded by `max_steps` when given (exactly that many steps; the same seed then gives the
same weights) and otherwise by `train_seconds` of wall time, which stops at the first step past the
budget and so is not repeatable: how many steps fit depends on the machine's load.

This module imports no torch; the job processes do.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import shutil
import tempfile
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from shared.domain.model_types import Task
from shared.domain.run_paths import RunPaths
from shared.engine import job_folders
from shared.engine.worker import BATCH_PREDICTION, TRAINING
from shared.formats.vertex_output import output_directory_name
from shared.store.port import WILDCARD, ObjectStore, matching
from shared.training.port import DatasetRequest, JobRef, JobState, JobStatus, PredictionRequest, TrainingRequest

SCHEME = "local-engine://"
JOBS = SCHEME + "jobs/"
# the engine knobs an operator may override (fields of TrainSettings and PredictionJob; a test keeps them in step)
TRAIN_SETTINGS = frozenset(
    {"batch_size", "learning_rate", "weight_decay", "input_size", "width", "backbone", "cache_bytes"}
)
PREDICTION_SETTINGS = frozenset({"batch_size", "lines_per_file", "class_agnostic_nms", "runtime"})
RUN_TRAIN_SETTINGS = ("batch_size", "learning_rate", "input_size", "backbone")  # what a run's config may set of them
JOB_START_MARGIN_S = 600.0  # starting the process, loading data, validating and saving around the budget
PROGRESS_KEYS = (
    "step",
    "total_steps",
    "loss",
    "images_per_s",
    "eta_s",
    "elapsed_s",
    "instances",
    "errors",
    "files",
    "validation_map50",
    "validation_map",
    "validation_accuracy",
    "onnx",
    "onnx_error",
    "runtime",
    "backbone",
    "input_size",
)


class LocalEngineBackend:
    name = "local"

    def __init__(
        self,
        store: ObjectStore,
        engine_dir: Path,
        *,
        train_seconds: float,
        seed: int,
        device: str = "auto",
        bucket_dir: Path | None = None,
        max_steps: int | None = None,
        threads: int | None = None,
        train_settings: Mapping[str, Any] | None = None,
        prediction_settings: Mapping[str, Any] | None = None,
    ) -> None:
        """`max_steps` trains exactly that many steps (repeatable for a seed) instead of `train_seconds`.

        `train_settings` / `prediction_settings` override engine knobs (e.g. `input_size`, `width`,
        `batch_size`, `lines_per_file`); the defaults suit the demo data on a small CPU.
        """
        root = bucket_dir if bucket_dir is not None else getattr(store, "root", None)
        if root is None:
            raise ValueError("the local engine needs the bucket folder (bucket_dir) to read images from")
        if device not in ("auto", "cpu", "cuda"):
            raise ValueError(f"device must be auto, cpu or cuda, not {device!r}")
        for given, allowed in ((train_settings, TRAIN_SETTINGS), (prediction_settings, PREDICTION_SETTINGS)):
            unknown = set(given or {}) - allowed
            if unknown:
                raise ValueError(f"unknown engine settings {sorted(unknown)}; known: {sorted(allowed)}")
        self.store = store
        self.engine_dir = Path(engine_dir).resolve()
        self.bucket_dir = Path(root).resolve()
        self.train_seconds = float(train_seconds)
        self.seed = int(seed)
        self.device = device
        self.max_steps = max_steps
        self.threads = threads
        self.train_settings = dict(train_settings or {})
        self.prediction_settings = dict(prediction_settings or {})

    # -- dataset ------------------------------------------------------------------------------------

    def _existing_key(self, uri: str, what: str) -> str:
        key = self.store.key_from_uri(uri)
        if not self.store.exists(key):
            raise ValueError(f"the {what} {uri} does not exist")
        return key

    def start_dataset_import(self, request: DatasetRequest) -> JobRef:
        """A wildcard import URI (ETL writes its JSONL in chunks, as Vertex accepts) is gathered into one
        dataset file, streamed, like the dataset Vertex would hold; a plain URI is the dataset itself.

        Gathering again under the same key writes the same file: repeating a start is harmless."""
        import_uri, run_id = request.import_uri, request.run_id
        if WILDCARD not in import_uri:
            self._existing_key(import_uri, "import file")
            return JobRef(import_uri)
        keys = matching(self.store, self.store.key_from_uri(import_uri))
        if not keys:
            raise ValueError(f"no import file matches {import_uri}")
        dataset_key = RunPaths(run_id).local_dataset
        with tempfile.NamedTemporaryFile("w+b", suffix=".jsonl") as out:
            for key in keys:
                with self.store.open_read(key) as chunk:
                    shutil.copyfileobj(chunk, out, 1 << 20)
                if out.tell():
                    out.seek(-1, 2)
                    if out.read(1) != b"\n":  # a chunk without a final newline must not merge two lines
                        out.write(b"\n")
            out.flush()
            self.store.upload_file(dataset_key, out.name, content_type="application/jsonl")
        return JobRef(self.store.uri(dataset_key))

    def dataset_status(self, ref: str) -> JobStatus:
        try:
            self._existing_key(ref, "import file")
        except ValueError as exc:
            return JobStatus(JobState.FAILED, error=str(exc))
        return JobStatus(JobState.SUCCEEDED, result=ref)

    # -- jobs ---------------------------------------------------------------------------------------

    def _folder(self, ref: str) -> Path:
        if not ref.startswith(JOBS):
            raise ValueError(f"not a local engine job reference: {ref!r}")
        return job_folders.job_folder(self.engine_dir, ref[len(JOBS) :].split("/")[0])

    def _common_spec(self, kind: str, run_id: str, task: Task) -> dict[str, Any]:
        return {
            "kind": kind,
            "run_id": run_id,
            "task": task.value,
            "device": self.device,
            "threads": self.threads,
            "bucket_dir": str(self.bucket_dir),
            "bucket_name": self.store.bucket,
        }

    def _status(self, ref: str, result: Callable[[Path, dict[str, Any]], str | None]) -> JobStatus:
        """The job's status; `result(folder, state)` names what a succeeded job made."""
        try:
            folder = self._folder(ref)
            state = job_folders.read_state(folder)
        except (ValueError, LookupError) as exc:
            return JobStatus(JobState.FAILED, error=str(exc))
        progress = {k: state[k] for k in PROGRESS_KEYS if state.get(k) is not None}
        value = JobState(state.get("state", job_folders.FAILED))
        return JobStatus(
            value,
            error=state.get("error") if value in (JobState.FAILED, JobState.CANCELLED) else None,
            result=result(folder, state) if value is JobState.SUCCEEDED else None,
            progress=progress,
            link=folder.as_uri(),
        )

    def _launch(self, job_id: str, spec: Mapping[str, Any]) -> JobRef:
        """Starts the job, or finds the one an earlier start with the same key made (the folder exists)."""
        folder = job_folders.job_folder(self.engine_dir, job_id)
        # an existing folder was launched by an earlier call whose record write was lost: it is this job
        with contextlib.suppress(FileExistsError):
            job_folders.launch(folder, spec)
        return JobRef(JOBS + job_id, link=folder.as_uri())

    # -- training -----------------------------------------------------------------------------------

    def start_training(self, request: TrainingRequest) -> JobRef:
        self._existing_key(request.dataset, "import file")
        spec = self._common_spec(TRAINING, request.run_id, request.task) | {
            "import_uri": request.dataset,
            "display_name": request.display_name,
            "labels": dict(request.labels),
            "seed": self.seed,
            **self._budget(request.settings),
            "settings": self.train_settings
            | {k: request.settings[k] for k in RUN_TRAIN_SETTINGS if k in request.settings},
        }
        return self._launch(job_folders.job_id_for("train", request.run_id, request.job_key), spec)

    def training_status(self, ref: str) -> JobStatus:
        return self._status(ref, lambda folder, _state: f"{JOBS}{folder.name}/{job_folders.CHECKPOINT}")

    def _budget(self, settings: Mapping[str, object]) -> dict[str, Any]:
        """Steps or wall time: the run's own when its settings say (a run's steps or seconds replace the
        deployment's), else the engine's."""
        if "steps" in settings or "train_seconds" in settings:
            seconds = settings.get("train_seconds") or self.train_seconds
            return {"max_steps": settings.get("steps"), "train_seconds": float(seconds)}  # type: ignore[arg-type]
        return {"max_steps": self.max_steps, "train_seconds": self.train_seconds}

    def training_deadline_s(self, ref: str, task: Task, settings: Mapping[str, object]) -> float | None:
        """Wall-time training stops at its budget; step-bounded training has no time bound."""
        budget = self._budget(settings)
        return None if budget["max_steps"] is not None else budget["train_seconds"] + JOB_START_MARGIN_S

    def cancel_training(self, ref: str) -> None:
        job_folders.cancel(self._folder(ref))

    def checkpoint_path(self, model: str) -> Path:
        """The checkpoint file behind a model reference from `training_status`."""
        folder = self._folder(model)
        if model != f"{JOBS}{folder.name}/{job_folders.CHECKPOINT}":
            raise ValueError(f"not a local engine model reference: {model!r}")
        return folder / job_folders.CHECKPOINT

    # -- batch prediction ---------------------------------------------------------------------------

    def start_batch_prediction(self, request: PredictionRequest) -> JobRef:
        checkpoint = self.checkpoint_path(request.model)
        if not checkpoint.is_file():
            raise ValueError(f"the model {request.model} has no checkpoint (did its training succeed?)")
        self._existing_key(request.instances_uri, "instances file")
        self.store.key_from_uri(request.output_uri_prefix.rstrip("/") + "/x")  # same bucket, or ValueError
        model_name = job_folders.read_json(checkpoint.parent / job_folders.SPEC).get("display_name") or "model"
        output_dir = (
            f"{request.output_uri_prefix.rstrip('/')}/{output_directory_name(model_name, dt.datetime.now(dt.UTC))}"
        )
        spec = self._common_spec(BATCH_PREDICTION, request.run_id, request.task) | {
            "checkpoint": str(checkpoint),
            "model": request.model,
            "instances_uri": request.instances_uri,
            "output_dir_uri": output_dir,
            "confidence_threshold": request.confidence_threshold,
            "max_predictions": request.max_predictions,
            "display_name": request.display_name,
            "labels": dict(request.labels),
            "settings": self.prediction_settings,
        }
        return self._launch(job_folders.job_id_for("predict", request.run_id, request.job_key), spec)

    def batch_prediction_status(self, ref: str) -> JobStatus:
        return self._status(ref, lambda _folder, state: state.get("result"))
