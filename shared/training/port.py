"""The training backend port.

Both backends expose the same life cycle, and every call returns at once: long work (dataset import,
training, batch prediction) is started and then polled by the `monitor` stage through `*_status`.
Job references are resource names (Vertex) or job folders (local engine), stored in the run record;
a job is always found again by its reference, never by a display name.

Every start is idempotent by its request's `job_key`: the stage records the key before it starts the
job, so when the write that would record the job's reference is lost (a crash, a timeout), the retry
asks again with the same key and gets the job that already exists instead of a second one (billed
twice, in Vertex's case).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Protocol

from shared.domain.model_types import Task


class RequestRefused(ValueError):
    """A start the backend refuses before anything is billed (a setting it cannot honour, or the service's
    own 400); the message says what to change, and the stage fails the run with it."""


class JobState(StrEnum):
    """Mirrors Vertex's PipelineState (and the matching JobState values)."""

    QUEUED = "queued"
    PENDING = "pending"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLING = "cancelling"
    CANCELLED = "cancelled"
    PAUSED = "paused"

    @property
    def finished(self) -> bool:
        return self in (JobState.SUCCEEDED, JobState.FAILED, JobState.CANCELLED)


@dataclass(frozen=True)
class JobStatus:
    state: JobState
    error: str | None = None  # the backend's own message when failed or cancelled
    result: str | None = None  # dataset name, model reference, or batch output directory once succeeded
    progress: Mapping[str, object] = field(default_factory=dict)
    link: str | None = None  # a console link a user can open, where one exists


@dataclass(frozen=True)
class JobRef:
    ref: str  # resource name or job folder URI: what the run record stores
    link: str | None = None


@dataclass(frozen=True)
class DatasetRequest:
    run_id: str
    task: Task
    import_uri: str  # the import JSONL ETL wrote (a `*` wildcard names its chunks)
    labels: Mapping[str, str]
    job_key: str  # names this launch: a second start with the same key finds the first one's dataset
    backend: str = ""  # the run's backend (shared.domain.model_types.Backend); "" = the deployment's only one


@dataclass(frozen=True)
class TrainingRequest:
    run_id: str
    task: Task
    dataset: str  # from start_dataset_import
    labels: Mapping[str, str]  # resource labels: every backend resource is findable by run
    display_name: str
    job_key: str  # names this launch: a second start with the same key returns the first one's job
    # the run's training settings (run_settings.KEYS of this backend), frozen at the run's start
    settings: Mapping[str, object] = field(default_factory=dict)
    backend: str = ""  # the run's backend (shared.domain.model_types.Backend); "" = the deployment's only one


@dataclass(frozen=True)
class PredictionRequest:
    run_id: str
    task: Task
    model: str  # from the training job's result
    instances_uri: str  # JSONL of {"content": gs uri, "mimeType": ...}
    output_uri_prefix: str
    confidence_threshold: float
    max_predictions: int
    labels: Mapping[str, str]
    display_name: str
    job_key: str  # names this launch: a second start with the same key returns the first one's job
    backend: str = ""  # the run's backend (shared.domain.model_types.Backend); "" = the deployment's only one


class TrainingBackend(Protocol):
    name: str

    def start_dataset_import(self, request: DatasetRequest) -> JobRef:
        """Creates the dataset and starts importing the JSONL; the ref is polled with `dataset_status`."""
        ...

    def dataset_status(self, ref: str) -> JobStatus: ...

    def start_training(self, request: TrainingRequest) -> JobRef: ...

    def training_status(self, ref: str) -> JobStatus:
        """Succeeded -> `result` is the trained model's reference."""
        ...

    def cancel_training(self, ref: str) -> None: ...

    def training_deadline_s(self, ref: str, task: Task, settings: Mapping[str, object]) -> float | None:
        """The longest the training `ref` of `task` with the run's `settings` can run within its budget,
        or None when it has no time bound."""
        ...

    def start_batch_prediction(self, request: PredictionRequest) -> JobRef: ...

    def batch_prediction_status(self, ref: str) -> JobStatus:
        """Succeeded -> `result` is the URI of the directory holding the prediction JSONL files."""
        ...
