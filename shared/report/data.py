"""What a run report shows: plain data the inference stage gathers from the run record and the store."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class SampleBox:
    """A box drawn on a sample, in pixels of the original image; ground truth has no confidence."""

    label: str
    left: float
    top: float
    width: float
    height: float
    confidence: float | None = None


@dataclass(frozen=True)
class SampleLabel:
    """A classification answer shown under a sample; ground truth has no confidence."""

    label: str
    confidence: float | None = None


SampleItem = SampleBox | SampleLabel


@dataclass(frozen=True)
class ReportSample:
    """One held-out image with its ground truth and the model's predictions.

    Boxes are in pixels of the original image (`width` x `height`), as Labelbox stores them; the report
    scales the image down and draws the boxes over it in the same coordinates. A classification run
    passes labels only; any coordinates it passes are ignored.
    """

    data_row_id: str
    image: bytes
    mime_type: str
    width: int
    height: int
    ground_truth: Sequence[SampleItem]
    predictions: Sequence[SampleItem]
    split: str
    note: str = ""  # a line under the image (a row to label next: how unsure the model is)


@dataclass(frozen=True)
class ReportData:
    """Everything one report shows. Mappings are taken as the run record holds them; a missing key
    shows as "n/a" instead of failing, because a report of a half-finished run is still useful.

    `metrics` follows the evaluation schema: detection ({"map50", "map50_95", "per_class", ...}) or
    classification ({"accuracy" | "exact_match", "macro_f1", "per_class", ...}); `task` decides which.
    `data_quality` holds the ETL's counts: scalars ("rows_seen"), counts by reason ({"reason": n}) and
    per-class-per-split counts ({class: {split: n}}), each shown as its shape suggests.
    """

    run_id: str
    model_run_id: str
    model_type: str
    task: str
    backend: str
    status: str
    created_at: str | None = None
    finished_at: str | None = None
    training: Mapping[str, Any] = field(default_factory=dict)
    data_quality: Mapping[str, Any] = field(default_factory=dict)
    metrics: Mapping[str, Any] = field(default_factory=dict)
    samples: Sequence[ReportSample] = ()
    error: str | None = None
    label_next: Sequence[ReportSample] = ()  # most uncertain first
    label_next_strategy: str = ""
    rows_ranked: int = 0  # the unlabeled and unassigned rows predicted on, of which `label_next` are the top

    @property
    def is_classification(self) -> bool:
        return "classification" in str(self.task)
