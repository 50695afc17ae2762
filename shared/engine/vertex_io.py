"""The Vertex file formats the engine reads and writes, as pure functions (no I/O, no torch).

Reads: the dataset import JSONL (bounding boxes, single- or multi-label classification, `ml_use`
splits) and the batch-prediction instances JSONL. Writes: AutoML's batch-prediction output lines,
`{"instance", "prediction": {"ids", "displayNames", "confidences"[, "bboxes"]}}` sorted by confidence,
with `bboxes` as normalized `[xMin, xMax, yMin, yMax]`, and `{"instance", "error"}` for an instance
that could not be predicted. So the chain parses local and Vertex output with one code path.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from shared.formats.vertex_import import ML_USE

SPLITS = ("training", "validation", "test")
INVALID_ARGUMENT = 3  # google.rpc.Code, what Vertex reports for an unreadable instance
DEFAULT_MIME_TYPE = "image/jpeg"

Box = tuple[float, float, float, float]  # normalized x_min, y_min, x_max, y_max


@dataclass(frozen=True)
class ImportRow:
    image_uri: str
    split: str | None  # training | validation | test, None when the row has no ml_use
    boxes: tuple[tuple[str, Box], ...] = ()
    labels: tuple[str, ...] = ()


def _number(value: object, name: str) -> float:
    try:
        number = float(value)  # type: ignore[arg-type]  # Vertex's own examples write "0.3"
    except (TypeError, ValueError):
        raise ValueError(f"{name} is not a number: {value!r}") from None
    if not 0.0 <= number <= 1.0:
        raise ValueError(f"{name} is outside [0, 1]: {number}")
    return number


def _display_name(annotation: object) -> str:
    if not isinstance(annotation, Mapping) or not isinstance(annotation.get("displayName"), str):
        raise ValueError("an annotation has no displayName")
    name = annotation["displayName"].strip()
    if not name:
        raise ValueError("an annotation has an empty displayName")
    return name


def _list(row: Mapping[str, Any], key: str) -> list[Any]:
    """An annotation list; a key that is absent (or null) is an empty list, any other shape a ValueError."""
    value = row.get(key)
    if value is None:
        return []
    if not isinstance(value, list):
        raise ValueError(f"{key} is not a list")
    return value


def parse_import_line(line: str | Mapping[str, Any], task: str) -> ImportRow:
    """One import JSONL line; ValueError names what is wrong with it."""
    row = json.loads(line) if isinstance(line, str) else line
    if not isinstance(row, Mapping):
        raise ValueError("the line is not a JSON object")
    uri = row.get("imageGcsUri")
    if not isinstance(uri, str) or not uri:
        raise ValueError("imageGcsUri is missing")
    resource_labels = row.get("dataItemResourceLabels") or {}
    split = resource_labels.get(ML_USE) if isinstance(resource_labels, Mapping) else None
    split = split.lower() if isinstance(split, str) and split.lower() in SPLITS else None
    if task == "object_detection":
        boxes = []
        for annotation in _list(row, "boundingBoxAnnotations"):
            name = _display_name(annotation)
            x0, y0, x1, y1 = (_number(annotation.get(k), k) for k in ("xMin", "yMin", "xMax", "yMax"))
            if x1 <= x0 or y1 <= y0:
                raise ValueError(f"box of {name!r} has no area")
            boxes.append((name, (x0, y0, x1, y1)))
        return ImportRow(uri, split, boxes=tuple(boxes))
    if task == "single_label_classification":
        annotation = row.get("classificationAnnotation")
        if annotation is None:
            many = _list(row, "classificationAnnotations")
            if len(many) != 1:
                raise ValueError("a single-label row needs exactly one classificationAnnotation")
            annotation = many[0]
        return ImportRow(uri, split, labels=(_display_name(annotation),))
    if task == "multi_label_classification":
        many = _list(row, "classificationAnnotations")
        if not many and row.get("classificationAnnotation") is not None:
            many = [row["classificationAnnotation"]]
        names = sorted({_display_name(a) for a in many})
        return ImportRow(uri, split, labels=tuple(names))
    raise ValueError(f"unknown task {task!r}")


def parse_instance_line(line: str) -> dict[str, str]:
    """One batch-prediction instance, `{"content": gs uri, "mimeType": ...}`; ValueError if unusable."""
    instance = json.loads(line)
    if not isinstance(instance, dict) or not isinstance(instance.get("content"), str):
        raise ValueError("the instance has no content URI")
    return instance


def class_id(name: str) -> str:
    """A stable numeric id per label name, shaped like Vertex's annotation spec ids."""
    return str(int.from_bytes(hashlib.sha256(name.encode()).digest()[:8], "big") >> 1)


def _ordered(items: Iterable[tuple[float, int]], threshold: float, max_predictions: int) -> list[int]:
    """Positions of the items to report: confidence >= threshold, best first, at most max_predictions."""
    chosen = [(score, pos) for score, pos in items if score >= threshold]
    chosen.sort(key=lambda item: (-item[0], item[1]))
    return [pos for _score, pos in chosen[: max(0, max_predictions)]]


def _confidence(score: float) -> float:
    return round(float(score), 6)


def detection_line(
    instance: Mapping[str, str],
    detections: Sequence[tuple[str, float, Box]],
    *,
    confidence_threshold: float,
    max_predictions: int,
) -> dict[str, object]:
    """`detections` are (label, confidence, normalized (x_min, y_min, x_max, y_max))."""
    order = _ordered(((d[1], i) for i, d in enumerate(detections)), confidence_threshold, max_predictions)
    chosen = [detections[i] for i in order]
    return {
        "instance": dict(instance),
        "prediction": {
            "ids": [class_id(name) for name, _s, _b in chosen],
            "displayNames": [name for name, _s, _b in chosen],
            "confidences": [_confidence(score) for _n, score, _b in chosen],
            "bboxes": [[_clip(b[0]), _clip(b[2]), _clip(b[1]), _clip(b[3])] for _n, _s, b in chosen],
        },
    }


def _clip(value: float) -> float:
    return round(min(1.0, max(0.0, float(value))), 6)


def classification_line(
    instance: Mapping[str, str],
    scores: Mapping[str, float],
    *,
    confidence_threshold: float,
    max_predictions: int,
) -> dict[str, object]:
    """`scores` maps every class to its confidence (softmax or sigmoid)."""
    names = list(scores)
    order = _ordered(((scores[n], i) for i, n in enumerate(names)), confidence_threshold, max_predictions)
    chosen = [names[i] for i in order]
    return {
        "instance": dict(instance),
        "prediction": {
            "ids": [class_id(name) for name in chosen],
            "displayNames": chosen,
            "confidences": [_confidence(scores[name]) for name in chosen],
        },
    }


def error_line(instance: object, message: str) -> dict[str, object]:
    return {"instance": instance, "error": {"code": INVALID_ARGUMENT, "message": message}}


def predictions_file_name(index: int) -> str:
    """1-based, five digits: `predictions_00001.jsonl`, as AutoML writes them."""
    return f"predictions_{index:05d}.jsonl"


def errors_file_name(index: int) -> str:
    """Instances that could not be predicted go to `errors_00001.jsonl`..., apart, as AutoML writes them."""
    return f"errors_{index:05d}.jsonl"
