"""Counts of what ETL kept and skipped, by reason, and Vertex's minimums checked against them.

The counts reach the user twice: in the run record (and the report made from it) and in the model
run's status metadata, so a user can tell why 312 of 10,000 rows are missing without reading logs.
A reason names a kind of problem ("image not found"), never one row's file, so counts stay few and
add up; a few examples of each (the data row id and what tells its problem apart, URLs without their
query string) are kept alongside, a bounded number per reason.
"""

from __future__ import annotations

import re
from collections import Counter, defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from shared.domain.examples import Split
from shared.domain.model_types import Task

MIN_IMAGES_PER_LABEL = 10
TRAINING_SPLITS = (Split.TRAINING, Split.VALIDATION, Split.TEST)
MAX_EXAMPLES = 5  # per reason
MAX_EXAMPLE_REASONS = 100  # reasons are kinds, so few; this only bounds a run record against surprises
EXAMPLE_ID_CHARS = 80
EXAMPLE_DETAIL_CHARS = 200
# Labelbox does not document its limits on status metadata (a dict of strings); these are conservative.
STATUS_VALUE_CHARS = 1000
STATUS_REASON_CHARS = 100
STATUS_KINDS = {"skipped": 30, "boxes dropped": 15, "warning": 15}
ROW_OF_DROPPED_LABELS = f"row with only dropped labels (under {MIN_IMAGES_PER_LABEL} images each)"
BOX_OF_DROPPED_LABEL = f"box of a dropped label (under {MIN_IMAGES_PER_LABEL} images)"
URL = re.compile(r"\b(?:https?|gs|file)://[^\s'\"]+")


def without_query(text: str) -> str:
    """`text` with every URL's query string and fragment cut: signed URLs carry their credentials there."""
    return URL.sub(lambda m: m.group(0).split("?", 1)[0].split("#", 1)[0], text)


def _cut(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _shown(text: str, limit: int) -> str:
    """Text as a report can show it: an unprintable id (a NUL, a newline) escaped, and bounded."""
    return _cut(text if text.isprintable() else repr(text)[1:-1], limit)


@dataclass
class DataQuality:
    task: Task
    rows_seen: int = 0
    rows_kept: int = 0
    rows_unlabeled: int = 0  # kept, never trained: predicted on and ranked for labeling
    boxes_kept: int = 0
    rows_skipped: Counter[str] = field(default_factory=Counter)
    boxes_dropped: Counter[str] = field(default_factory=Counter)
    warnings: Counter[str] = field(default_factory=Counter)  # odd rows that are kept all the same
    labels_dropped: dict[str, int] = field(default_factory=dict)  # label -> images it had (ETL_RARE_LABELS=drop)
    images_per_split: Counter[str] = field(default_factory=Counter)
    per_class_per_split: defaultdict[str, Counter[str]] = field(default_factory=lambda: defaultdict(Counter))
    boxes_per_class: Counter[str] = field(default_factory=Counter)
    # reason -> up to MAX_EXAMPLES (data row id, detail)
    examples: dict[str, list[tuple[str | None, str | None]]] = field(default_factory=dict)

    def skip(self, reason: str, data_row_id: str | None = None, detail: str | None = None) -> None:
        self.rows_skipped[reason] += 1
        self._example(reason, data_row_id, detail)

    def warn(self, reason: str, data_row_id: str | None = None, detail: str | None = None) -> None:
        """A kept row with something the user should hear about (an unknown split, a wrong declared size)."""
        self.warnings[reason] += 1
        self._example(reason, data_row_id, detail)

    def drop_boxes(self, reasons: Counter[str], data_row_id: str | None = None) -> None:
        self.boxes_dropped.update(reasons)
        for reason in reasons:
            self._example(reason, data_row_id, None)

    def _example(self, reason: str, data_row_id: str | None, detail: str | None) -> None:
        if data_row_id is None and detail is None:
            return
        listed = self.examples.get(reason, ())
        if len(listed) >= MAX_EXAMPLES:
            return  # full: not worth making it showable
        shown_id = None if data_row_id is None else _shown(data_row_id, EXAMPLE_ID_CHARS)
        shown_detail = None if detail is None else _shown(without_query(detail), EXAMPLE_DETAIL_CHARS)
        self._add_example(reason, shown_id, shown_detail)

    def _add_example(self, reason: str, shown_id: str | None, shown_detail: str | None) -> None:
        """Adds an example already made showable, within the bounds."""
        listed = self.examples.get(reason)
        if listed is None:
            if len(self.examples) >= MAX_EXAMPLE_REASONS:
                return
            listed = self.examples[reason] = []
        if len(listed) >= MAX_EXAMPLES:
            return
        if shown_detail is not None and any(d == shown_detail for _, d in listed):
            return  # five different values tell more than the same one five times
        listed.append((shown_id, shown_detail))

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

    def keep_unlabeled(self) -> None:
        self.rows_unlabeled += 1

    def clear_kept(self) -> None:
        """Forgets the kept rows' counts, to count them again from rewritten chunks (rare labels dropped)."""
        self.rows_kept = self.rows_unlabeled = self.boxes_kept = 0
        self.images_per_split.clear()
        self.per_class_per_split.clear()
        self.boxes_per_class.clear()

    def imported_images_per_label(self) -> dict[str, int]:
        """Images per label over the training splits: unassigned rows are not imported, so never count."""
        return {
            label: n
            for label, by_split in self.per_class_per_split.items()
            if (n := sum(c for s, c in by_split.items() if s != Split.UNASSIGNED.value))
        }

    def rare_labels(self) -> dict[str, int]:
        """Labels Vertex would refuse (fewer than MIN_IMAGES_PER_LABEL images), with their image counts."""
        return {label: n for label, n in self.imported_images_per_label().items() if n < MIN_IMAGES_PER_LABEL}

    def vertex_problems(self) -> list[str]:
        """Why Vertex would refuse this training set, in words a user can act on; empty if it is fine."""
        problems = []
        empty = [s.value for s in TRAINING_SPLITS if not self.images_per_split.get(s.value)]
        if empty:
            problems.append(
                f"no usable rows in the {', '.join(empty)} split(s): assign data rows to every split in the "
                "model run (Labelbox: model run > Manage splits)"
            )
        few = self.rare_labels()
        if few:
            listed = ", ".join(f"{label} ({n})" for label, n in sorted(few.items()))
            problems.append(
                f"Vertex needs at least {MIN_IMAGES_PER_LABEL} images per label; too few for: {listed}. "
                "Label more rows, remove these classes from the ontology, or set ETL_RARE_LABELS=drop"
            )
        imported = self.imported_images_per_label()
        if self.task is Task.SINGLE_LABEL_CLASSIFICATION and 0 < len(imported) < 2:
            problems.append("single-label classification needs at least two different answers")
        if not self.rows_kept:
            problems.append("no usable rows at all; see the skip reasons")
        return problems

    def to_state(self) -> dict[str, Any]:
        """Everything counted, losslessly, for `from_state`: how a shard's counts reach the fan-in."""
        return {
            "task": self.task.value,
            "rows_seen": self.rows_seen,
            "rows_kept": self.rows_kept,
            "rows_unlabeled": self.rows_unlabeled,
            "boxes_kept": self.boxes_kept,
            "rows_skipped": dict(self.rows_skipped),
            "boxes_dropped": dict(self.boxes_dropped),
            "warnings": dict(self.warnings),
            "labels_dropped": dict(self.labels_dropped),
            "images_per_split": dict(self.images_per_split),
            "per_class_per_split": {k: dict(v) for k, v in self.per_class_per_split.items()},
            "boxes_per_class": dict(self.boxes_per_class),
            "examples": {reason: [list(e) for e in listed] for reason, listed in self.examples.items()},
        }

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> DataQuality:
        quality = cls(
            Task(state["task"]),
            rows_seen=state["rows_seen"],
            rows_kept=state["rows_kept"],
            rows_unlabeled=state.get("rows_unlabeled", 0),
            boxes_kept=state["boxes_kept"],
            rows_skipped=Counter(state["rows_skipped"]),
            boxes_dropped=Counter(state["boxes_dropped"]),
            warnings=Counter(state["warnings"]),
            labels_dropped=dict(state["labels_dropped"]),
            images_per_split=Counter(state["images_per_split"]),
            boxes_per_class=Counter(state["boxes_per_class"]),
        )
        for label, by_split in state["per_class_per_split"].items():
            quality.per_class_per_split[label].update(by_split)
        quality.examples = {reason: [(e[0], e[1]) for e in listed] for reason, listed in state["examples"].items()}
        return quality

    def merge(self, other: DataQuality) -> None:
        """Adds another part's counts (a shard's, in shard order); examples are kept up to the same bounds,
        the earlier part's first, so the merged counts read as one pass over the rows would."""
        self.rows_seen += other.rows_seen
        self.rows_kept += other.rows_kept
        self.rows_unlabeled += other.rows_unlabeled
        self.boxes_kept += other.boxes_kept
        self.rows_skipped.update(other.rows_skipped)
        self.boxes_dropped.update(other.boxes_dropped)
        self.warnings.update(other.warnings)
        self.labels_dropped.update(other.labels_dropped)
        self.images_per_split.update(other.images_per_split)
        self.boxes_per_class.update(other.boxes_per_class)
        for label, by_split in other.per_class_per_split.items():
            self.per_class_per_split[label].update(by_split)
        for reason, listed in other.examples.items():
            for row_id, detail in listed:
                self._add_example(reason, row_id, detail)

    def to_dict(self) -> dict[str, Any]:
        return {
            "rows_seen": self.rows_seen,
            "rows_kept": self.rows_kept,
            "rows_unlabeled": self.rows_unlabeled,
            "rows_skipped": dict(self.rows_skipped.most_common()),
            "boxes_kept": self.boxes_kept,
            "boxes_dropped": dict(self.boxes_dropped.most_common()),
            "warnings": dict(self.warnings.most_common()),
            "labels_dropped": dict(sorted(self.labels_dropped.items())),
            "images_per_split": dict(self.images_per_split),
            "per_class_per_split": {k: dict(v) for k, v in sorted(self.per_class_per_split.items())},
            "boxes_per_class": dict(self.boxes_per_class.most_common()),
            "examples": {
                reason: [": ".join(part for part in example if part is not None) for example in listed]
                for reason, listed in self.examples.items()
            },
        }

    def summary(self, run_record: str | None = None) -> dict[str, str]:
        """Labelbox's status metadata (a dict of strings): one key per reason, so every reason shows.

        Each value is at most STATUS_VALUE_CHARS and each reason's key at most STATUS_REASON_CHARS of
        its text; past STATUS_KINDS kinds of one sort, one "(N more kinds)" key points at the run
        record, which holds them all.
        """
        skipped = sum(self.rows_skipped.values())
        out = {
            "rows_kept": str(self.rows_kept),
            **({"rows_unlabeled": str(self.rows_unlabeled)} if self.rows_unlabeled else {}),
            "rows_skipped": str(skipped),
            "splits": ", ".join(f"{k} {v}" for k, v in sorted(self.images_per_split.items())),
        }
        where = f"the run record {run_record}" if run_record else "the run record"
        for sort, counts, field_name in (
            ("skipped", self.rows_skipped, "rows_skipped"),
            ("boxes dropped", self.boxes_dropped, "boxes_dropped"),
            ("warning", self.warnings, "warnings"),
        ):
            ranked = counts.most_common()
            shown, rest = ranked[: STATUS_KINDS[sort]], ranked[STATUS_KINDS[sort] :]
            if len(rest) == 1:  # one more key is no longer than the key that would point at it
                shown, rest = ranked, []
            keyed: Counter[str] = Counter()
            for reason, n in shown:
                keyed[f"{sort}: {_cut(' '.join(reason.split()), STATUS_REASON_CHARS)}"] += n
            out.update((k, str(n)) for k, n in keyed.items())
            if rest:
                text = f"{sum(n for _, n in rest)} more; every reason is under data_quality.{field_name} in {where}"
                out[f"{sort}: ({len(rest)} more kinds)"] = _cut(text, STATUS_VALUE_CHARS)
        if self.labels_dropped:
            listed = ", ".join(f"{label} ({n})" for label, n in sorted(self.labels_dropped.items()))
            note = (
                f"under Vertex's {MIN_IMAGES_PER_LABEL} images per label, left out of training and evaluation "
                "(ETL_RARE_LABELS=fail fails the run instead): "
            )
            out["labels dropped"] = _cut(note + listed, STATUS_VALUE_CHARS)
        return out
