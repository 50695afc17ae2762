"""Vertex AI batch-prediction output lines -> the chain's predictions (`shared.domain.predictions`). No I/O.

One line per image: {"instance": {"content", "mimeType"}, "prediction": {"ids", "displayNames",
"confidences", "bboxes"?}} or, for an image Vertex could not predict, {"instance": ..., "error": {"code",
"message"}}. Boxes are [xMin, xMax, yMin, yMax], normalized, top-left origin; classification output has
no "bboxes". A bad line never raises: it comes back as a `PredictionLineError` whose short `reason` the
caller counts, so one broken image cannot sink a run of a million.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, replace
from typing import Any

from shared.domain.predictions import PredictedBox, PredictedLabel, VertexPrediction

# Vertex writes float32 values; a box edge a hair outside [0, 1] is rounding, not a broken prediction.
COORDINATE_TOLERANCE = 0.01


@dataclass(frozen=True)
class PredictionLineError:
    """A line that yields no prediction. `reason` is short and stable so that reasons can be counted;
    `detail` carries the specifics (Vertex's own message, the offending value) for a log line."""

    content_uri: str | None
    reason: str
    detail: str = ""


class _BadLine(Exception):
    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(reason)
        self.reason = reason
        self.detail = detail


def parse_prediction_line(line: str | bytes) -> VertexPrediction | PredictionLineError:
    """Parse one JSONL line of Vertex batch-prediction output; never raises on bad input."""
    content_uri: str | None = None
    try:
        record = _load_object(line)
        instance = record.get("instance")
        content_uri = _content_uri(instance)
        if "error" in record:
            raise _BadLine(_error_reason(record["error"]), _error_detail(record["error"]))
        if content_uri is None:
            raise _BadLine("missing instance content")
        prediction = record.get("prediction")
        if not isinstance(prediction, dict):
            raise _BadLine("missing prediction")
        boxes, labels = _predictions(prediction)
    except _BadLine as bad:
        return PredictionLineError(content_uri=content_uri, reason=bad.reason, detail=bad.detail)
    mime_type = instance.get("mimeType") if isinstance(instance, dict) else None
    return VertexPrediction(
        content_uri=content_uri,
        mime_type=mime_type if isinstance(mime_type, str) else None,
        boxes=boxes,
        labels=labels,
    )


def apply_limits(pred: VertexPrediction, *, confidence_threshold: float, max_predictions: int) -> VertexPrediction:
    """Keep the `max_predictions` most confident boxes and labels at or above the threshold.

    Vertex applies the same parameters itself; the local engine and a re-run with a stricter threshold
    rely on this so that both backends hand Labelbox the same thing.
    """
    if not math.isfinite(confidence_threshold):
        raise ValueError("confidence_threshold must be a finite number")
    if max_predictions < 0:
        raise ValueError("max_predictions must be zero or more")

    def keep(items: tuple[Any, ...]) -> tuple[Any, ...]:
        kept = [item for item in items if item.confidence >= confidence_threshold]
        kept.sort(key=lambda item: item.confidence, reverse=True)
        return tuple(kept[:max_predictions])

    return replace(pred, boxes=keep(pred.boxes), labels=keep(pred.labels))


def _load_object(line: str | bytes) -> dict[str, Any]:
    if isinstance(line, bytes):
        try:
            line = line.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise _BadLine("not utf-8", str(exc)) from None
    if not line.strip():
        raise _BadLine("empty line")
    try:
        record = json.loads(line)
    except json.JSONDecodeError as exc:
        raise _BadLine("malformed json", str(exc)) from None
    if not isinstance(record, dict):
        raise _BadLine("not a json object", type(record).__name__)
    return record


def _content_uri(instance: object) -> str | None:
    if isinstance(instance, dict):
        content = instance.get("content")
        if isinstance(content, str) and content:
            return content
    return None


def _error_reason(error: object) -> str:
    code = error.get("code") if isinstance(error, dict) else None
    return f"vertex error {code}" if isinstance(code, int) and not isinstance(code, bool) else "vertex error"


def _error_detail(error: object) -> str:
    if isinstance(error, dict):
        return str(error.get("message", ""))[:500]
    return str(error)[:500]


def _predictions(prediction: dict[str, Any]) -> tuple[tuple[PredictedBox, ...], tuple[PredictedLabel, ...]]:
    names = _list(prediction, "displayNames")
    confidences = _list(prediction, "confidences")
    lengths = {len(names), len(confidences)}
    if "ids" in prediction:
        lengths.add(len(_list(prediction, "ids")))
    has_boxes = prediction.get("bboxes") is not None
    raw_boxes = _list(prediction, "bboxes") if has_boxes else []
    if has_boxes:
        lengths.add(len(raw_boxes))
    if len(lengths) != 1:
        raise _BadLine("mismatched array lengths", f"lengths {sorted(lengths)}")

    labels = [_label(name) for name in names]
    scores = [_confidence(value) for value in confidences]
    if not has_boxes:
        return (), tuple(PredictedLabel(label, score) for label, score in zip(labels, scores, strict=True))
    boxes = tuple(
        PredictedBox(label, score, *_box(raw)) for label, score, raw in zip(labels, scores, raw_boxes, strict=True)
    )
    return boxes, ()


def _list(prediction: dict[str, Any], key: str) -> list[Any]:
    value = prediction.get(key)
    if value is None:
        raise _BadLine(f"missing {key}")
    if not isinstance(value, list):
        raise _BadLine(f"{key} is not a list")
    return value


def _label(value: object) -> str:
    if not isinstance(value, str) or not value:
        raise _BadLine("invalid display name", repr(value)[:100])
    return value


def _number(value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise _BadLine("non-numeric value", repr(value)[:100])
    number = float(value)
    if not math.isfinite(number):
        raise _BadLine("non-finite value", repr(value))
    return number


def _unit(value: object, what: str) -> float:
    """A value in [0, 1], clipped when only rounding put it outside."""
    number = _number(value)
    if not -COORDINATE_TOLERANCE <= number <= 1 + COORDINATE_TOLERANCE:
        raise _BadLine(f"{what} out of range", repr(value))
    return min(1.0, max(0.0, number))


def _confidence(value: object) -> float:
    return _unit(value, "confidence")


def _box(raw: object) -> tuple[float, float, float, float]:
    if not isinstance(raw, list) or len(raw) != 4:
        raise _BadLine("bbox is not 4 numbers", repr(raw)[:100])
    x_min, x_max, y_min, y_max = (_unit(v, "bbox coordinate") for v in raw)
    if x_min > x_max or y_min > y_max:
        raise _BadLine("bbox min after max", repr(raw)[:100])
    return x_min, x_max, y_min, y_max
