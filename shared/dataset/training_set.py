"""One kept data row -> its manifest line and its Vertex import line. Pure; ETL and its benchmark share it.

The manifest line (pixel boxes in the original image, split, size, staged URI) is what `inference` joins
predictions and ground truth through; the import line is what Vertex trains on. Unassigned rows get a
manifest line only: they never train. `ManifestRow.without` and `import_line_without` take labels out of
written lines again, for the labels ETL drops once it knows they have too few images.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import Any

from shared.dataset.manifest import Box, ManifestRow
from shared.domain.data_quality import DataQuality
from shared.domain.examples import Example, Split, to_pixels
from shared.domain.model_types import Task
from shared.formats.labelbox_export import no_usable_boxes_reason
from shared.formats.vertex_import import LabelNames, TooManyBoxes, import_line, normalize_boxes


@dataclass(frozen=True)
class TrainingRow:
    manifest: ManifestRow
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
    """The row's lines, counted in `quality`; None when Vertex's limits leave nothing to train on.

    `width` and `height` are the image's real (decoded) size: boxes are clipped and dropped against it."""
    row_id = example.data_row_id
    if not example.labeled:
        quality.keep_unlabeled()
        return TrainingRow(_manifest_row(example, image_uri, mime_type, width, height, ()), None)
    dropped = dropped or Counter()
    quality.drop_boxes(dropped, row_id)
    boxes = None
    if task is Task.OBJECT_DETECTION:
        try:
            boxes, vertex_dropped = normalize_boxes(example.boxes, width, height)
        except TooManyBoxes:
            quality.skip("image with more than 500 boxes", row_id, f"{len(example.boxes)} boxes")
            return None
        quality.drop_boxes(vertex_dropped, row_id)
        if not boxes:
            quality.skip(no_usable_boxes_reason(dropped + vertex_dropped), row_id)
            return None
    quality.keep(example.split, [b.label for b in boxes] if boxes is not None else example.labels)
    pixel_boxes = tuple((b.label, *to_pixels(b.x_min, b.y_min, b.x_max, b.y_max, width, height)) for b in boxes or [])
    manifest = _manifest_row(example, image_uri, mime_type, width, height, pixel_boxes)
    line = None
    if example.split is not Split.UNASSIGNED:
        line = import_line(example, image_uri=image_uri, task=task, names=names, boxes=boxes)
    return TrainingRow(manifest, line)


def _manifest_row(
    example: Example, image_uri: str, mime_type: str, width: int, height: int, boxes: tuple[Box, ...]
) -> ManifestRow:
    return ManifestRow(
        data_row_id=example.data_row_id,
        global_key=example.global_key,
        image_uri=image_uri,
        mime_type=mime_type,
        width=width,
        height=height,
        split=example.split,
        boxes=boxes,
        labels=tuple(example.labels),
        labeled=example.labeled,
    )


def import_line_without(line: dict[str, Any], display_names: set[str]) -> dict[str, Any] | None:
    """A Vertex import line without the annotations of `display_names`; None when none is left."""
    if "boundingBoxAnnotations" in line:
        kept = [a for a in line["boundingBoxAnnotations"] if a["displayName"] not in display_names]
        return {**line, "boundingBoxAnnotations": kept} if kept else None
    if "classificationAnnotation" in line:
        return None if line["classificationAnnotation"]["displayName"] in display_names else line
    kept = [a for a in line.get("classificationAnnotations", []) if a["displayName"] not in display_names]
    return {**line, "classificationAnnotations": kept} if kept else None
