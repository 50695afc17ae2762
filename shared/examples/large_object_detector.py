"""A detector that learns and predicts only the objects that cover at least 5% of their image.

The README's worked example of "Add your own model type", and the module its end-to-end test loads:
`CHAIN_MODEL_TYPE_MODULES=shared.examples.large_object_detector`. ETL leaves the smaller boxes out of
the training set (and of the ground truth the run is scored against); inference leaves the smaller
predicted boxes out of what reaches Labelbox, its metrics and the rows to label next.
"""

from __future__ import annotations

from dataclasses import replace

from shared.domain.examples import Example, PixelBox
from shared.domain.model_types import Backend, ModelType, Task, register
from shared.domain.predictions import VertexPrediction

MIN_AREA = 0.05  # of the image's area


def _area_in_image(box: PixelBox, width: int, height: int) -> float:
    """The part of the box inside the image (ETL clips boxes to it), as a fraction of the image."""
    w = min(box.left + box.width, width) - max(box.left, 0.0)
    h = min(box.top + box.height, height) - max(box.top, 0.0)
    return max(w, 0.0) * max(h, 0.0) / (width * height)


def large_boxes(example: Example) -> Example:
    """The example with only its large boxes. ETL hands over the staged image's real size."""
    width, height = example.width, example.height
    if not width or not height:
        return example
    return replace(example, boxes=tuple(b for b in example.boxes if _area_in_image(b, width, height) >= MIN_AREA))


def large_predictions(prediction: VertexPrediction) -> VertexPrediction:
    """The prediction with only its large boxes (normalized: a box's area is its fraction of the image)."""
    kept = tuple(b for b in prediction.boxes if (b.x_max - b.x_min) * (b.y_max - b.y_min) >= MIN_AREA)
    return replace(prediction, boxes=kept)


LARGE_OBJECT_DETECTOR = register(
    ModelType(
        name="large_object_detector",
        task=Task.OBJECT_DETECTION,
        trainers={Backend.VERTEX: Backend.VERTEX_CUSTOM, Backend.LOCAL: Backend.LOCAL},
        description=f"The project's detector, on objects covering at least {MIN_AREA:.0%} of the image",
        training_example=large_boxes,
        prediction=large_predictions,
    )
)
