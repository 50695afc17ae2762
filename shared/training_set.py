"""One kept data row -> its manifest line and its Vertex import line. Pure; ETL and its benchmark share it.

The manifest line (pixel boxes in the original image, split, size, staged URI) is what `inference` joins
predictions and ground truth through; the import line is what Vertex trains on. Unassigned rows get a
manifest line only: they never train.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import Any

from shared.data_quality import DataQuality
from shared.examples import Example, Split
from shared.formats.vertex_import import LabelNames, TooManyBoxes, import_line, normalize_boxes
from shared.model_types import Task


@dataclass(frozen=True)
class TrainingRow:
    manifest: dict[str, Any]
    import_line: dict[str, Any] | None


def training_row(
    example: Example,
    *,
    image_uri: str,
    mime_type: str,
    width: int,
    height: int,
    task: Task,
    names: LabelNames,
    quality: DataQuality,
    dropped: Counter[str] | None = None,
) -> TrainingRow | None:
    """The row's lines, counted in `quality`; None when Vertex's limits leave nothing to train on."""
    quality.drop_boxes(dropped or Counter())
    boxes = None
    if task is Task.OBJECT_DETECTION:
        try:
            boxes, vertex_dropped = normalize_boxes(example.boxes, width, height)
        except TooManyBoxes:
            quality.skip("image with more than 500 boxes")
            return None
        quality.drop_boxes(vertex_dropped)
        if not boxes:
            quality.skip("no box left after Vertex's size limits")
            return None
    quality.keep(example.split, [b.label for b in boxes] if boxes is not None else example.labels)
    manifest = {
        "data_row_id": example.data_row_id,
        "global_key": example.global_key,
        "image_uri": image_uri,
        "mime_type": mime_type,
        "width": width,
        "height": height,
        "split": example.split.value,
        "boxes": [
            [b.label, b.x_min * width, b.y_min * height, (b.x_max - b.x_min) * width, (b.y_max - b.y_min) * height]
            for b in boxes or []
        ],
        "labels": list(example.labels),
    }
    line = None
    if example.split is not Split.UNASSIGNED:
        line = import_line(example, image_uri=image_uri, task=task, names=names, boxes=boxes)
    return TrainingRow(manifest, line)
