"""Counts of what ETL kept and skipped, by reason, and Vertex's minimums checked against them.

The counts reach the user twice: in the run record and in the model run's status metadata, so a user
can tell why 312 of 10,000 rows are missing without reading logs.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from shared.examples import Split
from shared.model_types import Task

MIN_IMAGES_PER_LABEL = 10
TRAINING_SPLITS = (Split.TRAINING, Split.VALIDATION, Split.TEST)


@dataclass
class DataQuality:
    task: Task
    rows_seen: int = 0
    rows_kept: int = 0
    boxes_kept: int = 0
    rows_skipped: Counter[str] = field(default_factory=Counter)
    boxes_dropped: Counter[str] = field(default_factory=Counter)
    images_per_split: Counter[str] = field(default_factory=Counter)
    per_class_per_split: defaultdict[str, Counter[str]] = field(default_factory=lambda: defaultdict(Counter))
    boxes_per_class: Counter[str] = field(default_factory=Counter)

    def skip(self, reason: str) -> None:
        self.rows_skipped[reason] += 1

    def drop_boxes(self, reasons: Counter[str]) -> None:
        self.boxes_dropped.update(reasons)

    def keep(self, split: Split, labels: Iterable[str]) -> None:
        """A kept row: `labels` are its box labels (one per box) or its classification answers."""
        labels = list(labels)
        self.rows_kept += 1
        self.images_per_split[split.value] += 1
        if self.task is Task.OBJECT_DETECTION:
            self.boxes_kept += len(labels)
            self.boxes_per_class.update(labels)
        for label in set(labels):
            self.per_class_per_split[label][split.value] += 1

    def vertex_problems(self) -> list[str]:
        """Why Vertex would refuse this training set, in words a user can act on; empty if it is fine."""
        problems = []
        empty = [s.value for s in TRAINING_SPLITS if not self.images_per_split.get(s.value)]
        if empty:
            problems.append(
                f"no usable rows in the {', '.join(empty)} split(s): assign data rows to every split in the "
                "model run (Labelbox: model run > Manage splits)"
            )
        # unassigned rows are not imported: a label seen only there is one Vertex never sees
        imported = {
            label: n
            for label, by_split in self.per_class_per_split.items()
            if (n := sum(c for s, c in by_split.items() if s != Split.UNASSIGNED.value))
        }
        few = {label: n for label, n in imported.items() if n < MIN_IMAGES_PER_LABEL}
        if few:
            listed = ", ".join(f"{label} ({n})" for label, n in sorted(few.items()))
            problems.append(
                f"Vertex needs at least {MIN_IMAGES_PER_LABEL} images per label; too few for: {listed}. "
                "Label more rows or remove these classes from the ontology"
            )
        if self.task is Task.SINGLE_LABEL_CLASSIFICATION and 0 < len(imported) < 2:
            problems.append("single-label classification needs at least two different answers")
        if not self.rows_kept:
            problems.append("no usable rows at all; see the skip reasons")
        return problems

    def to_dict(self) -> dict[str, Any]:
        return {
            "rows_seen": self.rows_seen,
            "rows_kept": self.rows_kept,
            "rows_skipped": dict(self.rows_skipped.most_common()),
            "boxes_kept": self.boxes_kept,
            "boxes_dropped": dict(self.boxes_dropped.most_common()),
            "images_per_split": dict(self.images_per_split),
            "per_class_per_split": {k: dict(v) for k, v in sorted(self.per_class_per_split.items())},
            "boxes_per_class": dict(self.boxes_per_class.most_common()),
        }

    def summary(self) -> dict[str, str]:
        """Short string values for Labelbox's status metadata (a dict of strings)."""
        skipped = sum(self.rows_skipped.values())
        out = {
            "rows_kept": str(self.rows_kept),
            "rows_skipped": str(skipped),
            "splits": ", ".join(f"{k} {v}" for k, v in sorted(self.images_per_split.items())),
        }
        if skipped:
            out["skip_reasons"] = "; ".join(f"{r}: {n}" for r, n in self.rows_skipped.most_common(5))
        if self.boxes_dropped:
            out["boxes_dropped"] = "; ".join(f"{r}: {n}" for r, n in self.boxes_dropped.most_common(5))
        return out
