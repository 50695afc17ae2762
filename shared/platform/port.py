"""The labeling platform port.

Both adapters speak Labelbox's shapes: export rows are Labelbox model-run export rows (dicts), uploaded
predictions and metrics are Labelbox NDJSON import rows. So the conversions are tested once and the
local file-backed model run is a faithful stand-in.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, Protocol

from shared.domain.examples import Split

MAX_STATUS_MESSAGE = 255  # Labelbox keeps at most 255 characters of a model run's error message


class ModelRunStatus(StrEnum):
    EXPORTING_DATA = "EXPORTING_DATA"
    PREPARING_DATA = "PREPARING_DATA"
    TRAINING_MODEL = "TRAINING_MODEL"
    COMPLETE = "COMPLETE"
    FAILED = "FAILED"


@dataclass(frozen=True)
class ModelRunInfo:
    id: str
    model_id: str | None
    name: str | None = None


@dataclass
class UploadResult:
    """Outcome of one prediction import: which rows Labelbox accepted and the per-row errors."""

    name: str
    accepted: int
    errors: list[dict[str, Any]] = field(default_factory=list)


@dataclass(frozen=True)
class SendResult:
    """Outcome of sending rows to a labeling project as one batch with the model run's pre-labels.

    `sent` rows are in the batch; `skipped_in_project` were in the project already and were left out.
    `already_sent`: a batch of this name was there, so nothing was sent now (a retry or a duplicate).
    `unmatched_features`: the model's features the project's ontology lacks, so they are not pre-labeled.
    """

    project_id: str
    batch_name: str
    sent: int
    skipped_in_project: int
    batch_id: str | None = None
    import_id: str | None = None  # Labelbox's send-to-annotate task, or the local pre-label file
    already_sent: bool = False
    unmatched_features: tuple[str, ...] = ()


class PlatformError(RuntimeError):
    """The labeling platform refused or failed a call; the message is safe to show a user."""


class ProjectRefused(PlatformError):
    """Rows could not go to the labeling project (missing or foreign project, an ontology without the
    model's features): retrying will not help, the project or its ontology must change."""


class ModelRunNotFound(PlatformError):
    """The model run does not exist (or this key cannot see it): retrying will not help, the id must change."""


class SliceNotFound(PlatformError):
    """The Catalog slice does not exist (or this key cannot see it): the config must name another."""


class ExportState(StrEnum):
    RUNNING = "running"
    COMPLETE = "complete"
    FAILED = "failed"


@dataclass(frozen=True)
class ExportStatus:
    """One look at an export task, so a caller can bound its own wait instead of blocking in the adapter."""

    state: ExportState
    error: str | None = None  # FAILED: Labelbox's reason (from the task's error file), safe to show a user
    row_errors: int = 0  # COMPLETE: rows in the export's ERRORS stream
    row_error_samples: tuple[str, ...] = ()  # at most 5, safe to show a user


def cut_message(message: str, limit: int = MAX_STATUS_MESSAGE) -> str:
    message = " ".join(message.split())
    return message if len(message) <= limit else message[: limit - 1] + "…"


class LabelingPlatform(Protocol):
    def get_model_run(self, model_run_id: str) -> ModelRunInfo:
        """The model run's ids and name; ModelRunNotFound when there is no such run."""
        ...

    def export_rows(self, model_run_id: str) -> Iterator[dict[str, Any]]:
        """Streams the model run's export rows (Labelbox model-run export shape), never all in memory.

        Starts the export and waits for it: `start_export`, `export_status` until done, `read_export`.
        """
        ...

    def start_export(self, model_run_id: str) -> str:
        """Starts the model run's export and returns its task id at once, without waiting for it."""
        ...

    def export_status(self, task_id: str) -> ExportStatus:
        """One look at the export task; never waits for it to finish."""
        ...

    def read_export(self, model_run_id: str, task_id: str) -> Iterator[dict[str, Any]]:
        """Streams a COMPLETE export's rows with bounded memory; PlatformError if the task is not COMPLETE."""
        ...

    def data_row_splits(self, model_run_id: str) -> Mapping[str, Split]:
        """Split of every data row, for exports whose rows do not carry it (`model_run_data_rows()`)."""
        ...

    def open_media(self, row_data: str, *, model_run_id: str | None = None) -> Iterator[bytes]:
        """The bytes of a data row's media, in chunks (an http(s) URL, or a file the platform holds)."""
        ...

    def media_size(self, row_data: str, *, model_run_id: str | None = None) -> int | None:
        """The media's size in bytes when the source can tell cheaply (HEAD, stat); None otherwise."""
        ...

    def update_status(
        self,
        model_run_id: str,
        status: ModelRunStatus,
        *,
        metadata: Mapping[str, str] | None = None,
        error_message: str | None = None,
    ) -> None:
        """Sets the model run's training status; the error message is cut to 255 characters."""
        ...

    def get_config(self, model_run_id: str) -> dict[str, Any]:
        """The model run's config (Labelbox's training metadata); {} when it has none."""
        ...

    def update_config(self, model_run_id: str, config: Mapping[str, Any]) -> None:
        """Replaces the model run's config: callers merge into what `get_config` returned."""
        ...

    def upload_predictions(self, model_run_id: str, name: str, rows: list[dict[str, Any]]) -> UploadResult:
        """Imports prediction and metric rows (Labelbox NDJSON) and waits for the import to finish."""
        ...

    def send_to_project(
        self,
        model_run_id: str,
        project_id: str,
        data_row_ids: Sequence[str],
        *,
        batch_name: str,
        priority: int,
        features: Collection[str] = (),
    ) -> SendResult:
        """Sends the rows to the labeling project as one batch named `batch_name`, with the model run's
        predictions on them as pre-labels, each feature mapped by name onto the project's ontology.

        `features` are the names of the features the pre-labels use (empty: all of the model's). Rows
        already in the project are skipped and counted. Idempotent by `batch_name`: when the project has
        a batch of that name, nothing is sent again (`already_sent`). ProjectRefused for a missing or
        foreign project and for an ontology with none of the features; PlatformError otherwise.
        """
        ...

    def add_rows_from_slice(
        self, model_run_id: str, slice_id: str, *, progress: Callable[[int], None] | None = None
    ) -> int:
        """Adds the Catalog slice's data rows to the model run, unlabeled, so its export carries them.

        Returns how many rows the slice has, those already in the run included (adding one again is
        harmless, and Labelbox does not say which were new); `progress(rows so far)` is called between
        batches. SliceNotFound when there is no such slice, before anything is added.
        """
        ...
