"""What a model said about one image, in the chain's own terms: boxes or labels with their confidence.

Pure values, no I/O and no vendor format: `shared.formats.vertex_prediction` reads Vertex AI's
batch-prediction lines into them, a model type's `prediction` conversion (`shared.domain.model_types`)
may change them, and the evaluation turns them into Labelbox predictions, metrics and uncertainty.
Labels here are the model's own names (the Vertex display names of the import), not Labelbox features.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class PredictedBox:
    """One detected object, normalized to [0, 1] of the image size."""

    label: str
    confidence: float
    x_min: float
    x_max: float
    y_min: float
    y_max: float


@dataclass(frozen=True)
class PredictedLabel:
    """One classification answer with its confidence."""

    label: str
    confidence: float


@dataclass(frozen=True)
class VertexPrediction:
    """What the model said about one image: boxes (detection) or labels (classification).

    `content_uri` is the staged image the prediction is of: the key that joins it to its data row."""

    content_uri: str
    mime_type: str | None
    boxes: tuple[PredictedBox, ...] = ()
    labels: tuple[PredictedLabel, ...] = ()
