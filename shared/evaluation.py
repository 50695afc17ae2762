"""Joins batch predictions to the held-out rows ETL staged, and turns them into what Labelbox receives.

Pure: it takes manifest rows (what ETL recorded per data row) and parsed Vertex prediction lines, and
returns Labelbox prediction rows, per-row metric rows and the inputs of the run-level evaluation. The
join key is the staged image's URI, which is the only thing a Vertex prediction line carries back.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from shared.dataset.manifest import ManifestRow
from shared.domain.examples import to_pixels
from shared.domain.label_next import in_pool
from shared.domain.model_types import Task
from shared.domain.predictions import PredictedLabel, VertexPrediction
from shared.formats.labelbox_metrics import metric_import_rows, uncertainty_import_rows
from shared.formats.labelbox_predictions import RowContext, bbox_prediction_rows, classification_prediction_rows
from shared.formats.vertex_prediction import PredictionLineError, apply_limits
from shared.metrics import uncertainty as al
from shared.metrics.detections import ClassificationItem, ImageDetections
from shared.metrics.row_metrics import classification_row_metrics, detection_row_metrics

EMPTY = VertexPrediction(content_uri="", mime_type=None)


@dataclass
class Joined:
    """Predictions joined to rows, plus what could not be joined, counted by reason.

    `failed` holds the rows whose instance the backend could not predict (an error line, as Vertex
    writes to its `errors_*` files): they are counted by reason and left out of the metrics, since
    scoring them as misses would blame the model for an image it never saw."""

    predictions: dict[str, VertexPrediction] = field(default_factory=dict)  # by data row id
    problems: Counter[str] = field(default_factory=Counter)
    failed: dict[str, str] = field(default_factory=dict)  # data row id -> reason
    failed_reasons: Counter[str] = field(default_factory=Counter)


_URI = re.compile(r"gs://\S+|https?://\S+")


def failure_reason(line: PredictionLineError) -> str:
    """One reason per kind of failure: the backend's message without the image's own URI."""
    detail = " ".join(_URI.sub("<image>", line.detail).split())[:120]
    return f"{line.reason}: {detail}" if detail else line.reason


def join_predictions(
    rows: Mapping[str, ManifestRow], lines: Iterable[VertexPrediction | PredictionLineError]
) -> Joined:
    """`rows` is keyed by image URI. Rows without a prediction line are counted, not dropped."""
    joined = Joined()
    for line in lines:
        if isinstance(line, PredictionLineError):
            row = rows.get(line.content_uri) if line.content_uri else None
            if row is not None and line.reason.startswith("vertex error"):
                reason = failure_reason(line)
                if row.data_row_id not in joined.failed:
                    joined.failed[row.data_row_id] = reason
                    joined.failed_reasons[reason] += 1
                continue
            joined.problems[f"prediction line skipped: {line.reason}"] += 1
            continue
        row = rows.get(line.content_uri)
        if row is None:
            joined.problems["prediction for an image not in the held-out set"] += 1
        elif row.data_row_id in joined.predictions:
            joined.problems["duplicate prediction for an image"] += 1
        else:
            joined.predictions[row.data_row_id] = line
    for data_row_id in set(joined.failed) & set(joined.predictions):  # a retried instance that succeeded
        joined.failed_reasons[joined.failed.pop(data_row_id)] -= 1
    joined.failed_reasons += Counter()  # drop reasons counted down to zero
    missing = len(rows) - len(joined.predictions) - len(joined.failed)
    if missing:
        joined.problems["held-out image without a prediction"] += missing
    return joined


def _xyxy(boxes: Sequence[tuple[float, float, float, float]]) -> np.ndarray:
    if not boxes:
        return np.zeros((0, 4), dtype=np.float64)
    a = np.asarray(boxes, dtype=np.float64)
    return np.stack([a[:, 0], a[:, 1], a[:, 0] + a[:, 2], a[:, 1] + a[:, 3]], axis=1)


@dataclass(frozen=True)
class PoolRow:
    """A row to rank for labeling: how unsure the model is, and what was uploaded for it (detection: the
    boxes, as `uploaded`; classification: every answer's confidence)."""

    uncertainty: al.Uncertainty
    uploaded: ImageDetections | None
    scores: Mapping[str, float]


@dataclass
class Evaluated:
    """What a run uploads and scores. `detections` hold every predicted box (the run-level curves sweep all
    confidences); `uploaded` hold, per detection row, only the boxes uploaded, as uploaded (the per-row
    diagnostics Labelbox shows next to them)."""

    upload_rows: dict[str, list[dict[str, Any]]]  # by data row id: predictions, then metric rows
    detections: list[ImageDetections]
    classifications: list[ClassificationItem]
    predicted_rows: int
    prediction_count: int
    uploaded: list[ImageDetections] = field(default_factory=list)
    pool: dict[str, PoolRow] = field(default_factory=dict)  # rows to rank for labeling, never scored


def evaluate_rows(
    rows: Sequence[ManifestRow],
    joined: Joined,
    *,
    task: Task,
    feature_for: Mapping[str, str],
    question: str | None,
    confidence_threshold: float,
    max_predictions: int,
    uuid_seed: str,
) -> Evaluated:
    """Labelbox rows for every held-out row (predictions above the threshold, and diagnostics), and the
    full-confidence detections for the run-level curves.

    The per-row diagnostics count exactly the predictions uploaded: above `confidence_threshold`, the
    `max_predictions` most confident, with the geometry of the uploaded rows (clipped to the image, rounded
    to 0.01 px, none left without area), so that they are what the SDK would compute on the model run.
    Rows to rank for labeling (unlabeled or unassigned, `in_pool`) get their predictions and their
    uncertainty (`shared.metrics.uncertainty`) instead, and stay out of every figure.
    Run-level mAP, PR curves and the figures at the threshold use every box: they are curves over all
    confidences, and the cap is a display limit, not part of the model.
    """
    detections: list[ImageDetections] = []
    uploaded: list[ImageDetections] = []
    items: list[ClassificationItem] = []
    predictions: dict[str, list[dict[str, Any]]] = {}
    pool: dict[str, PoolRow] = {}
    classes = sorted(set(feature_for.values()))
    count = predicted = 0
    for row in rows:
        if row.data_row_id in joined.failed:
            continue  # never predicted: neither uploaded nor scored
        raw = joined.predictions.get(row.data_row_id, EMPTY)
        shown = apply_limits(raw, confidence_threshold=confidence_threshold, max_predictions=max_predictions)
        context = RowContext(row.data_row_id, row.width, row.height)
        if in_pool(row.split.value, row.labeled):
            out, pool[row.data_row_id] = _pool_row(
                row, raw, shown, context, task, feature_for, question, classes, confidence_threshold, uuid_seed
            )
            predictions[row.data_row_id] = out + uncertainty_import_rows(
                row.data_row_id, pool[row.data_row_id].uncertainty, uuid_seed=uuid_seed
            )
            count += len(out)
            predicted += bool(out)
            continue
        if task is Task.OBJECT_DETECTION:
            out = bbox_prediction_rows(shown, context, uuid_seed=uuid_seed, name_for=feature_for)
            full = [
                (
                    feature_for.get(b.label, b.label),
                    b.confidence,
                    to_pixels(b.x_min, b.y_min, b.x_max, b.y_max, row.width, row.height),
                )
                for b in raw.boxes
            ]
            gt_labels, gt_boxes = tuple(b[0] for b in row.boxes), _xyxy([b[1:] for b in row.boxes])
            detections.append(
                ImageDetections(
                    image_id=row.data_row_id,
                    gt_labels=gt_labels,
                    gt_boxes=gt_boxes,
                    pred_labels=tuple(f[0] for f in full),
                    pred_scores=np.asarray([f[1] for f in full], dtype=np.float64),
                    pred_boxes=_xyxy([f[2] for f in full]),
                )
            )
            uploaded.append(_as_uploaded(row.data_row_id, gt_labels, gt_boxes, out))
        else:
            out = classification_prediction_rows(
                _renamed(shown, feature_for),
                context,
                question=question or "classification",
                multi_label=task is Task.MULTI_LABEL_CLASSIFICATION,
                uuid_seed=uuid_seed,
            )
            items.append(
                ClassificationItem(
                    image_id=row.data_row_id,
                    gt_labels=frozenset(row.labels),
                    scores={feature_for.get(lb.label, lb.label): lb.confidence for lb in raw.labels},
                )
            )
        predictions[row.data_row_id] = out
        count += len(out)
        predicted += bool(out)

    if task is Task.OBJECT_DETECTION:
        per_row = detection_row_metrics(uploaded)
        ids = [d.image_id for d in uploaded]
        kind = "detection"
    else:
        per_row = classification_row_metrics(
            items, multi_label=task is Task.MULTI_LABEL_CLASSIFICATION, confidence_threshold=confidence_threshold
        )
        ids = [i.image_id for i in items]
        kind = "classification"
    for data_row_id, metrics in zip(ids, per_row, strict=True):
        predictions[data_row_id] = predictions[data_row_id] + metric_import_rows(
            data_row_id, metrics, kind=kind, uuid_seed=uuid_seed
        )
    return Evaluated(predictions, detections, items, predicted, count, uploaded, pool)


def _renamed(prediction: VertexPrediction, feature_for: Mapping[str, str]) -> VertexPrediction:
    return VertexPrediction(
        prediction.content_uri,
        prediction.mime_type,
        labels=tuple(PredictedLabel(feature_for.get(lb.label, lb.label), lb.confidence) for lb in prediction.labels),
    )


def _pool_row(
    row: ManifestRow,
    raw: VertexPrediction,
    shown: VertexPrediction,
    context: RowContext,
    task: Task,
    feature_for: Mapping[str, str],
    question: str | None,
    classes: Sequence[str],
    threshold: float,
    uuid_seed: str,
) -> tuple[list[dict[str, Any]], PoolRow]:
    """A row to rank for labeling: its prediction rows to upload, and its `PoolRow`."""
    if task is Task.OBJECT_DETECTION:
        out = bbox_prediction_rows(shown, context, uuid_seed=uuid_seed, name_for=feature_for)
        uncertainty = al.detection([b.confidence for b in raw.boxes], threshold=threshold)
        entry = PoolRow(uncertainty, _as_uploaded(row.data_row_id, (), _xyxy([]), out), {})
    else:
        multi = task is Task.MULTI_LABEL_CLASSIFICATION
        out = classification_prediction_rows(
            _renamed(shown, feature_for),
            context,
            question=question or "classification",
            multi_label=multi,
            uuid_seed=uuid_seed,
        )
        scores = {feature_for.get(lb.label, lb.label): lb.confidence for lb in raw.labels}
        uncertainty = al.multi_label(scores, classes) if multi else al.single_label(scores, max(2, len(classes)))
        entry = PoolRow(uncertainty, None, scores)
    return out, entry


def _as_uploaded(
    data_row_id: str, gt_labels: tuple[str, ...], gt_boxes: np.ndarray, rows: Sequence[Mapping[str, Any]]
) -> ImageDetections:
    """The ground truth against the bbox rows uploaded, read back as Labelbox reads them (left + width)."""
    boxes = [r for r in rows if "bbox" in r]
    return ImageDetections(
        image_id=data_row_id,
        gt_labels=gt_labels,
        gt_boxes=gt_boxes,
        pred_labels=tuple(r["name"] for r in boxes),
        pred_scores=np.asarray([r["confidence"] for r in boxes], dtype=np.float64),
        pred_boxes=_xyxy([(b["left"], b["top"], b["width"], b["height"]) for b in (r["bbox"] for r in boxes)]),
    )


def chunk_by_rows(upload_rows: Mapping[str, list[dict[str, Any]]], rows_per_chunk: int) -> list[list[dict[str, Any]]]:
    """Upload chunks in data-row order: the same run always cuts the same chunks, so a re-run can skip
    exactly the chunks already uploaded."""
    ids = sorted(i for i, r in upload_rows.items() if r)
    return [
        [row for data_row_id in ids[start : start + rows_per_chunk] for row in upload_rows[data_row_id]]
        for start in range(0, len(ids), rows_per_chunk)
    ]
