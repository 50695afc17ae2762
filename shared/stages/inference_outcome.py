"""What a delivery shard reports (its shard result), and the run's totals over every shard. Pure.

A shard's result stays small (counts, and the keys of what it stored): its rows' metrics are in its
partials and its report candidates in an object of their own, so that the fan-in never holds more than
counts per shard. Counters are summed in shard order, which is the manifest's order.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from shared.stages.upload import ChunkUpload


@dataclass
class ShardOutcome:
    rows: int  # the shard's held-out rows
    predictions: int  # prediction rows uploaded (boxes or answers, without the metric rows)
    predicted_rows: int  # rows with at least one prediction uploaded
    failed: int  # rows the backend could not predict
    problems: dict[str, int] = field(default_factory=dict)  # lines or rows that could not be joined, by reason
    failed_reasons: dict[str, int] = field(default_factory=dict)
    uploads: dict[str, ChunkUpload] = field(default_factory=dict)  # by import name, in chunk order
    partials: dict[str, str] = field(default_factory=dict)  # split -> the key of its metrics partial
    candidates: str = ""  # the key of the report candidates
    ranked: int = 0  # rows to rank for labeling (unlabeled, unassigned): predicted, never scored
    label_next: str = ""  # the key of its top rows to label next

    def to_json(self) -> dict[str, Any]:
        return {
            "rows": self.rows,
            "predictions": self.predictions,
            "predicted_rows": self.predicted_rows,
            "failed": self.failed,
            "problems": dict(self.problems),
            "failed_reasons": dict(self.failed_reasons),
            "uploads": {name: upload.to_json() for name, upload in self.uploads.items()},
            "partials": dict(self.partials),
            "candidates": self.candidates,
            "ranked": self.ranked,
            "label_next": self.label_next,
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> ShardOutcome:
        return cls(
            rows=int(data["rows"]),
            predictions=int(data["predictions"]),
            predicted_rows=int(data["predicted_rows"]),
            failed=int(data["failed"]),
            problems={str(k): int(v) for k, v in data.get("problems", {}).items()},
            failed_reasons={str(k): int(v) for k, v in data.get("failed_reasons", {}).items()},
            uploads={name: ChunkUpload.from_json(u) for name, u in data.get("uploads", {}).items()},
            partials={str(k): str(v) for k, v in data.get("partials", {}).items()},
            candidates=str(data.get("candidates", "")),
            ranked=int(data.get("ranked", 0)),
            label_next=str(data.get("label_next", "")),
        )


@dataclass
class DeliveryTotals:
    """Every shard's outcome summed: what one pass over all held-out rows would have counted."""

    rows: int = 0
    predictions: int = 0
    predicted_rows: int = 0
    failed: int = 0
    problems: Counter[str] = field(default_factory=Counter)
    failed_reasons: Counter[str] = field(default_factory=Counter)
    uploads: list[tuple[str, ChunkUpload]] = field(default_factory=list)
    partials: dict[str, list[str]] = field(default_factory=dict)  # split -> every shard's partial of it
    candidates: list[str] = field(default_factory=list)
    ranked: int = 0
    label_next: list[str] = field(default_factory=list)

    @classmethod
    def of(cls, outcomes: Sequence[ShardOutcome]) -> DeliveryTotals:
        totals = cls()
        for outcome in outcomes:
            totals.rows += outcome.rows
            totals.predictions += outcome.predictions
            totals.predicted_rows += outcome.predicted_rows
            totals.failed += outcome.failed
            totals.problems.update(outcome.problems)
            totals.failed_reasons.update(outcome.failed_reasons)
            totals.uploads.extend(outcome.uploads.items())
            for split, key in outcome.partials.items():
                totals.partials.setdefault(split, []).append(key)
            if outcome.candidates:
                totals.candidates.append(outcome.candidates)
            totals.ranked += outcome.ranked
            if outcome.label_next:
                totals.label_next.append(outcome.label_next)
        totals.problems += Counter()  # no reason counted zero
        totals.failed_reasons += Counter()
        return totals

    def all_partials(self) -> list[str]:
        """Every partial of every split: together, all the held-out rows scored."""
        return [key for split in sorted(self.partials) for key in self.partials[split]]
