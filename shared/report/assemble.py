"""A finished run's report data, gathered from its record, its metrics and its evaluated rows. Pure:
the images come through `image_of`, so the caller decides where they are read from."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

from shared.dataset.manifest import ManifestRow
from shared.domain.label_next import Strategy
from shared.domain.run_record import RunRecord
from shared.evaluation import Evaluated
from shared.metrics.detections import ImageDetections
from shared.metrics.uncertainty import DETECTION_FLOOR, Uncertainty, label_next
from shared.report.data import ReportData, ReportSample, SampleBox, SampleItem, SampleLabel
from shared.run_settings import RunSettings

REPORT_SAMPLES = 24


def _boxes(detections: ImageDetections) -> list[SampleItem]:
    return [
        SampleBox(label, float(b[0]), float(b[1]), float(b[2] - b[0]), float(b[3] - b[1]), confidence=float(score))
        for label, score, b in zip(detections.pred_labels, detections.pred_scores, detections.pred_boxes, strict=True)
    ]


@dataclass(frozen=True)
class SampleCandidate:
    """A row the report may show, with what it shows for it, but not yet its image: delivery shards each
    pick their first rows (by data row id) and the fan-in keeps the first of all, reading only those
    images."""

    row: ManifestRow
    ground_truth: list[SampleItem]
    predictions: list[SampleItem]

    def to_json(self) -> dict[str, Any]:
        return {
            "row": self.row.to_json(),
            "ground_truth": [_item_json(i) for i in self.ground_truth],
            "predictions": [_item_json(i) for i in self.predictions],
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> SampleCandidate:
        return cls(
            ManifestRow.from_json(data["row"]),
            [_item_of(i) for i in data["ground_truth"]],
            [_item_of(i) for i in data["predictions"]],
        )


def _item_json(item: SampleItem) -> dict[str, Any]:
    return {"kind": "box" if isinstance(item, SampleBox) else "label", **asdict(item)}


def _item_of(data: Mapping[str, Any]) -> SampleItem:
    fields = {k: v for k, v in data.items() if k != "kind"}
    return SampleBox(**fields) if data["kind"] == "box" else SampleLabel(**fields)


def sample_candidates(
    evaluated: Evaluated, rows: Sequence[ManifestRow], *, threshold: float, samples: int = REPORT_SAMPLES
) -> list[SampleCandidate]:
    """The first `samples` rows (by data row id), each with exactly what was uploaded for it: the boxes
    after the threshold and the per-image cap, or the answers above the threshold."""
    by_id = {row.data_row_id: row for row in rows if row.data_row_id not in evaluated.pool}  # scored rows only
    uploaded = {d.image_id: d for d in evaluated.uploaded}
    items = {i.image_id: i for i in evaluated.classifications}
    out = []
    for data_row_id in sorted(by_id)[:samples]:
        row = by_id[data_row_id]
        truth: list[SampleItem]
        shown: list[SampleItem]
        if row.data_row_id in uploaded:
            truth = [SampleBox(b[0], b[1], b[2], b[3], b[4]) for b in row.boxes]
            shown = _boxes(uploaded[data_row_id])
        else:
            scores = items[data_row_id].scores if data_row_id in items else {}
            ranked = sorted(scores.items(), key=lambda kv: -kv[1])
            truth = [SampleLabel(label) for label in row.labels]
            shown = [SampleLabel(label, float(score)) for label, score in ranked if score >= threshold]
        out.append(SampleCandidate(row, truth, shown))
    return out


@dataclass(frozen=True)
class LabelNextCandidate:
    """A row to label next: how unsure the model is (`score` by the run's strategy) and what it predicted
    (the uploaded boxes or answers). Each delivery shard keeps its own top rows; the fan-in keeps the top
    of all, which is the top of one pass, since the order is total (score, then data row id)."""

    row: ManifestRow
    score: float
    uncertainty: Uncertainty
    predictions: list[SampleItem]

    def to_json(self) -> dict[str, Any]:
        return {
            "row": self.row.to_json(),
            "score": self.score,
            "uncertainty": asdict(self.uncertainty),
            "predictions": [_item_json(i) for i in self.predictions],
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> LabelNextCandidate:
        return cls(
            ManifestRow.from_json(data["row"]),
            float(data["score"]),
            Uncertainty(**data["uncertainty"]),
            [_item_of(i) for i in data["predictions"]],
        )

    def listed(self) -> dict[str, Any]:
        """What the run record lists for the row."""
        return {
            "data_row_id": self.row.data_row_id,
            "global_key": self.row.global_key,
            "split": self.row.split.value,
            "labeled": self.row.labeled,
            "score": round(self.score, 6),
            **{k: (round(v, 6) if isinstance(v, float) else v) for k, v in asdict(self.uncertainty).items()},
        }


def label_next_candidates(
    evaluated: Evaluated, rows: Sequence[ManifestRow], *, strategy: Strategy, count: int, threshold: float
) -> list[LabelNextCandidate]:
    """The `count` rows of `rows` to label first by `strategy`, with what was uploaded for each."""
    by_id = {row.data_row_id: row for row in rows}
    ranked = label_next({k: p.uncertainty for k, p in evaluated.pool.items() if k in by_id}, strategy, count)
    out = []
    for data_row_id, score in ranked:
        entry = evaluated.pool[data_row_id]
        shown: list[SampleItem]
        if entry.uploaded is not None:
            shown = _boxes(entry.uploaded)
        else:
            ranked_scores = sorted(entry.scores.items(), key=lambda kv: -kv[1])
            shown = [SampleLabel(label, float(s)) for label, s in ranked_scores if s >= threshold]
        out.append(LabelNextCandidate(by_id[data_row_id], score, entry.uncertainty, shown))
    return out


def top_label_next(candidates: Iterable[LabelNextCandidate], count: int) -> list[LabelNextCandidate]:
    """The first `count` of every shard's candidates in the ranking's order."""
    return sorted(candidates, key=lambda c: (-c.score, c.row.data_row_id))[: max(0, count)]


def chosen_samples(candidates: Iterable[SampleCandidate], samples: int = REPORT_SAMPLES) -> list[SampleCandidate]:
    """The first `samples` of every shard's candidates by data row id: the rows one pass would show,
    since each shard's candidates are its own first rows."""
    return sorted(candidates, key=lambda c: c.row.data_row_id)[:samples]


def report_data(
    record: RunRecord,
    metrics: Mapping[str, Any],
    evaluated: Evaluated,
    rows: Sequence[ManifestRow],
    *,
    image_of: Callable[[str], bytes],
    threshold: float,
    finished_at: str,
    samples: int = REPORT_SAMPLES,
) -> ReportData:
    """The first `samples` held-out rows (by data row id) are shown, each with exactly what was uploaded
    for it: the boxes after the threshold and the per-image cap, or the answers above the threshold."""
    chosen = sample_candidates(evaluated, rows, threshold=threshold, samples=samples)
    return report_data_of_samples(record, metrics, chosen, image_of=image_of, finished_at=finished_at)


def _note(candidate: LabelNextCandidate, strategy: str) -> str:
    u = candidate.uncertainty
    parts = [
        f"{strategy.replace('_', ' ')} score {candidate.score:.3f}",
        f"entropy {u.entropy:.3f}",
        f"least confidence {u.least_confidence:.3f}",
        f"margin {u.margin:.3f}",
    ]
    if u.boxes is not None:
        parts.append(f"{u.boxes} box{'es' if u.boxes != 1 else ''} above {DETECTION_FLOOR:g}")
    if u.no_detection:
        parts.append("no detection")
    return " · ".join(parts)


def report_data_of_samples(
    record: RunRecord,
    metrics: Mapping[str, Any],
    chosen: Sequence[SampleCandidate],
    *,
    image_of: Callable[[str], bytes],
    finished_at: str,
    label_next: Sequence[LabelNextCandidate] = (),
    label_next_strategy: str = "",
    rows_ranked: int = 0,
) -> ReportData:
    """The report of a finished run showing the `chosen` samples and the rows to label next, their
    images read through `image_of`."""

    def sample(
        row: ManifestRow, truth: list[SampleItem], shown: list[SampleItem], split: str, note: str = ""
    ) -> ReportSample:
        return ReportSample(
            row.data_row_id, image_of(row.image_uri), row.mime_type, row.width, row.height, truth, shown, split, note
        )

    shown_samples = [sample(c.row, c.ground_truth, c.predictions, c.row.split) for c in chosen]
    return ReportData(
        run_id=record.run_id,
        model_run_id=record.model_run_id,
        model_type=record.model_type,
        task=record.task,
        backend=record.backend,
        status="complete",
        created_at=record.created_at,
        finished_at=finished_at,
        training={
            **record.metrics.get("training", {}),
            **{f"job_{k}": v for k, v in record.jobs.items()},
            **(RunSettings.from_dict(record.settings).shown() if record.settings else {}),
        },
        data_quality=record.data_quality,
        metrics=metrics,
        samples=shown_samples,
        label_next=[
            sample(
                c.row,
                [],
                c.predictions,
                c.row.split.value if c.row.labeled else f"{c.row.split.value}, unlabeled",
                _note(c, label_next_strategy),
            )
            for c in label_next
        ],
        label_next_strategy=label_next_strategy,
        rows_ranked=rows_ranked,
    )
