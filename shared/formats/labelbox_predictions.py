"""The chain's predictions -> Labelbox prediction-import NDJSON rows. Pure, no I/O.

Rows are name-based ({"name": feature, ...}) and keyed by `dataRow.id`; Labelbox accepts them as it
accepts schemaId-based rows. Every row's uuid is derived from a seed, the data row and the prediction's
position, so a re-run of the inference stage produces byte-identical rows instead of duplicates.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from shared.domain.predictions import PredictedLabel, VertexPrediction

# Namespace for prediction uuids: the same seed in another product must not collide with ours.
_UUID_NAMESPACE = uuid.uuid5(uuid.NAMESPACE_URL, "labelbox-vertex-chain/predictions")
_PIXEL_DECIMALS = 2
_CONFIDENCE_DECIMALS = 6


@dataclass(frozen=True)
class RowContext:
    """What a prediction needs to know about its data row: its id and the original image size."""

    data_row_id: str
    width: int
    height: int


def bbox_prediction_rows(
    pred: VertexPrediction,
    row: RowContext,
    *,
    uuid_seed: str,
    name_for: Mapping[str, str] | None = None,
) -> list[dict[str, Any]]:
    """One Labelbox bbox row per predicted box, in pixels of the original image, clipped to it.

    `name_for` maps a Vertex display name to the Labelbox feature name; a name it lacks is kept as is.
    A box that clipping leaves with no area is dropped: Labelbox rejects it, and it shows nothing.
    """
    _check_size(row)
    rows: list[dict[str, Any]] = []
    for index, box in enumerate(pred.boxes):
        left, width = _span(box.x_min, box.x_max, row.width)
        top, height = _span(box.y_min, box.y_max, row.height)
        if width <= 0 or height <= 0:
            continue
        name = name_for.get(box.label, box.label) if name_for is not None else box.label
        rows.append(
            {
                "uuid": _uuid(uuid_seed, row.data_row_id, "bbox", index),
                "dataRow": {"id": row.data_row_id},
                "name": name,
                "confidence": _confidence(box.confidence),
                "bbox": {"top": top, "left": left, "height": height, "width": width},
            }
        )
    return rows


def classification_prediction_rows(
    pred: VertexPrediction,
    row: RowContext,
    *,
    question: str,
    multi_label: bool,
    uuid_seed: str,
) -> list[dict[str, Any]]:
    """The image's answer to `question`: a radio row (top label) or a checklist row (every label).

    Apply the confidence threshold first (`apply_limits`); a checklist with no label left yields no row,
    because Labelbox has no way to say "predicted none of these" with a confidence.
    """
    labels = _best_per_label(pred.labels)
    if not labels:
        return []
    answer: dict[str, Any] | list[dict[str, Any]]
    if multi_label:
        answer = [{"name": label.label, "confidence": _confidence(label.confidence)} for label in labels]
    else:
        top = labels[0]
        answer = {"name": top.label, "confidence": _confidence(top.confidence)}
    kind = "checklist" if multi_label else "radio"
    return [
        {
            "uuid": _uuid(uuid_seed, row.data_row_id, kind, 0),
            "dataRow": {"id": row.data_row_id},
            "name": question,
            "answer": answer,
        }
    ]


def _check_size(row: RowContext) -> None:
    if row.width <= 0 or row.height <= 0:
        raise ValueError(f"data row {row.data_row_id} has no usable image size ({row.width}x{row.height})")


def _span(start: float, end: float, size: int) -> tuple[float, float]:
    """Start and length in pixels, clipped to [0, size]; the length is rounded from the exact difference
    (not from rounded edges), so it matches (max - min) * size, and never runs past the edge."""
    lo = min(float(size), max(0.0, start * size))
    hi = min(float(size), max(0.0, end * size))
    offset = round(lo, _PIXEL_DECIMALS)
    length = min(round(hi - lo, _PIXEL_DECIMALS), round(size - offset, _PIXEL_DECIMALS))
    return offset, max(0.0, length)


def _confidence(value: float) -> float:
    return round(min(1.0, max(0.0, value)), _CONFIDENCE_DECIMALS)


def _uuid(seed: str, data_row_id: str, kind: str, index: int) -> str:
    return str(uuid.uuid5(_UUID_NAMESPACE, f"{seed}/{data_row_id}/{kind}/{index}"))


def _best_per_label(labels: tuple[PredictedLabel, ...]) -> list[PredictedLabel]:
    """Most confident first; a label repeated keeps its highest confidence (Labelbox rejects repeats)."""
    best: dict[str, PredictedLabel] = {}
    for label in labels:
        if label.label not in best or label.confidence > best[label.label].confidence:
            best[label.label] = label
    return sorted(best.values(), key=lambda label: label.confidence, reverse=True)
