"""A finished run's report data, gathered from its record, its metrics and its evaluated rows. Pure:
the images come through `image_of`, so the caller decides where they are read from."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

from shared.dataset.manifest import ManifestRow
from shared.domain.run_record import RunRecord
from shared.evaluation import Evaluated
from shared.metrics.detections import ImageDetections
from shared.report.data import ReportData, ReportSample, SampleBox, SampleItem, SampleLabel

REPORT_SAMPLES = 24


def _boxes(detections: ImageDetections) -> list[SampleItem]:
    return [
        SampleBox(label, float(b[0]), float(b[1]), float(b[2] - b[0]), float(b[3] - b[1]), confidence=float(score))
        for label, score, b in zip(detections.pred_labels, detections.pred_scores, detections.pred_boxes, strict=True)
    ]


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
    by_id = {row.data_row_id: row for row in rows}
    uploaded = {d.image_id: d for d in evaluated.uploaded}
    items = {i.image_id: i for i in evaluated.classifications}
    shown_samples = []
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
        shown_samples.append(
            ReportSample(
                data_row_id, image_of(row.image_uri), row.mime_type, row.width, row.height, truth, shown, row.split
            )
        )
    return ReportData(
        run_id=record.run_id,
        model_run_id=record.model_run_id,
        model_type=record.model_type,
        task=record.task,
        backend=record.backend,
        status="complete",
        created_at=record.created_at,
        finished_at=finished_at,
        training={**record.metrics.get("training", {}), **{f"job_{k}": v for k, v in record.jobs.items()}},
        data_quality=record.data_quality,
        metrics=metrics,
        samples=shown_samples,
    )
