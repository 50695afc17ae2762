"""`Example` -> Vertex AI image dataset import JSONL line.

Vertex's own limits are applied here, so that an import never fails on data we could have checked:
boxes are clipped to the image and dropped (with a reason) when under 8 px or under 1% of a side
(after Vertex's own down-scaling of images whose short side exceeds 1024 px), and an image with more
than 500 boxes is rejected. Label display names are made Vertex-safe once per run by `LabelNames`,
which keeps the mapping back to the Labelbox feature names for the predictions.
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from shared.domain.examples import Example, NormalizedBox, PixelBox, Split
from shared.domain.model_types import Task

ML_USE = "aiplatform.googleapis.com/ml_use"
MAX_BOXES_PER_IMAGE = 500
MIN_BOX_PX = 8
MIN_BOX_FRACTION = 0.01
VERTEX_MAX_SHORT_SIDE = 1024
_LABEL_VALUE = re.compile(r"[^a-z0-9_-]")


class TooManyBoxes(ValueError):
    pass


@dataclass
class LabelNames:
    """Labelbox feature name <-> Vertex display name, stable for a run and collision-free."""

    to_vertex: dict[str, str] = field(default_factory=dict)

    def vertex_name(self, feature: str) -> str:
        name = self.to_vertex.get(feature)
        if name is None:
            base = re.sub(r"[^A-Za-z0-9_]", "_", feature.strip())[:32] or "label"
            if not base[0].isalpha():
                base = ("l_" + base)[:32]
            name, n = base, 1
            taken = set(self.to_vertex.values())
            while name in taken:
                n += 1
                name = f"{base[: 32 - len(str(n)) - 1]}_{n}"
            self.to_vertex[feature] = name
        return name

    def to_feature(self) -> dict[str, str]:
        return {v: k for k, v in self.to_vertex.items()}


def label_value(text: str) -> str:
    """A GCP resource-label value: lowercase letters, digits, `_` and `-`, at most 63 characters."""
    return _LABEL_VALUE.sub("_", text.lower())[:63]


def normalize_boxes(boxes: tuple[PixelBox, ...], width: int, height: int) -> tuple[list[NormalizedBox], Counter[str]]:
    """Clips to the image, drops boxes Vertex would drop, and normalizes to [0, 1]."""
    if len(boxes) > MAX_BOXES_PER_IMAGE:
        raise TooManyBoxes(f"image has {len(boxes)} boxes (Vertex accepts at most {MAX_BOXES_PER_IMAGE})")
    scale = min(1.0, VERTEX_MAX_SHORT_SIDE / min(width, height))
    kept: list[NormalizedBox] = []
    dropped: Counter[str] = Counter()
    for b in boxes:
        x1, y1 = max(0.0, b.left), max(0.0, b.top)
        x2, y2 = min(float(width), b.left + b.width), min(float(height), b.top + b.height)
        w, h = x2 - x1, y2 - y1
        if w <= 0 or h <= 0:
            dropped["box outside the image"] += 1
        elif w * scale < MIN_BOX_PX or h * scale < MIN_BOX_PX:
            dropped["box under 8 px"] += 1
        elif w < MIN_BOX_FRACTION * width or h < MIN_BOX_FRACTION * height:
            dropped["box under 1% of the image side"] += 1
        else:
            kept.append(NormalizedBox(b.label, x1 / width, y1 / height, x2 / width, y2 / height))
    return kept, dropped


def import_line(
    example: Example,
    *,
    image_uri: str,
    task: Task,
    names: LabelNames,
    boxes: list[NormalizedBox] | None = None,
) -> dict[str, Any]:
    """The Vertex import line for one example (boxes already normalized for object detection)."""
    if example.split is Split.UNASSIGNED:
        raise ValueError("unassigned rows are not training data")
    line: dict[str, Any] = {"imageGcsUri": image_uri}
    if task is Task.OBJECT_DETECTION:
        line["boundingBoxAnnotations"] = [
            {
                "displayName": names.vertex_name(b.label),
                "xMin": round(b.x_min, 6),
                "yMin": round(b.y_min, 6),
                "xMax": round(b.x_max, 6),
                "yMax": round(b.y_max, 6),
            }
            for b in boxes or []
        ]
    elif task is Task.SINGLE_LABEL_CLASSIFICATION:
        line["classificationAnnotation"] = {"displayName": names.vertex_name(example.labels[0])}
    else:
        line["classificationAnnotations"] = [{"displayName": names.vertex_name(lbl)} for lbl in example.labels]
    line["dataItemResourceLabels"] = {
        ML_USE: example.split.value,
        "data_row_id": label_value(example.data_row_id),
    }
    return line
