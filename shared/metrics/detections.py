"""What the metrics are computed from: per image, ground-truth boxes and scored predicted boxes (or labels)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np


def _boxes(value: object, count: int, what: str) -> np.ndarray:
    boxes = np.array(value, dtype=np.float64)
    if boxes.size == 0:
        boxes = boxes.reshape(0, 4)
    if boxes.ndim != 2 or boxes.shape[1] != 4:
        raise ValueError(f"{what} must have shape (N, 4) as x1, y1, x2, y2; got {boxes.shape}")
    if boxes.shape[0] != count:
        raise ValueError(f"{what}: {boxes.shape[0]} boxes but {count} labels")
    if not np.isfinite(boxes).all():
        raise ValueError(f"{what} contain NaN or infinite coordinates")
    if (boxes[:, 2] < boxes[:, 0]).any() or (boxes[:, 3] < boxes[:, 1]).any():
        raise ValueError(f"{what} must have x2 >= x1 and y2 >= y1")
    boxes.setflags(write=False)
    return boxes


# eq=False: the fields hold numpy arrays, whose == is elementwise, so a generated __eq__/__hash__ would be wrong.
@dataclass(frozen=True, eq=False)
class ImageDetections:
    """One image: its ground-truth boxes and the model's scored boxes, in pixels (x1, y1, x2, y2).

    Arrays are copied to float64 and made read-only, so a caller cannot change what was evaluated.
    """

    image_id: str
    gt_labels: tuple[str, ...]
    gt_boxes: np.ndarray  # (N, 4) float64 pixel x1, y1, x2, y2
    pred_labels: tuple[str, ...]
    pred_scores: np.ndarray  # (M,)
    pred_boxes: np.ndarray  # (M, 4)

    def __post_init__(self) -> None:
        gt_labels = tuple(self.gt_labels)
        pred_labels = tuple(self.pred_labels)
        scores = np.array(self.pred_scores, dtype=np.float64).reshape(-1)
        if scores.shape[0] != len(pred_labels):
            raise ValueError(f"{scores.shape[0]} prediction scores but {len(pred_labels)} prediction labels")
        if not np.isfinite(scores).all():
            raise ValueError("prediction scores must be finite")
        scores.setflags(write=False)
        object.__setattr__(self, "gt_labels", gt_labels)
        object.__setattr__(self, "pred_labels", pred_labels)
        object.__setattr__(self, "gt_boxes", _boxes(self.gt_boxes, len(gt_labels), "gt_boxes"))
        object.__setattr__(self, "pred_boxes", _boxes(self.pred_boxes, len(pred_labels), "pred_boxes"))
        object.__setattr__(self, "pred_scores", scores)

    @classmethod
    def from_lists(
        cls,
        image_id: str,
        *,
        gt_labels: Iterable[str] = (),
        gt_boxes: Sequence[Sequence[float]] = (),
        pred_labels: Iterable[str] = (),
        pred_scores: Sequence[float] = (),
        pred_boxes: Sequence[Sequence[float]] = (),
    ) -> ImageDetections:
        """Build from plain Python lists, e.g. ``gt_boxes=[[10, 20, 110, 220]]``; empty sides may be omitted."""
        return cls(
            image_id=image_id,
            gt_labels=tuple(gt_labels),
            gt_boxes=np.array(gt_boxes, dtype=np.float64).reshape(-1, 4),
            pred_labels=tuple(pred_labels),
            pred_scores=np.array(pred_scores, dtype=np.float64).reshape(-1),
            pred_boxes=np.array(pred_boxes, dtype=np.float64).reshape(-1, 4),
        )


@dataclass(frozen=True)
class ClassificationItem:
    """One image of a classification run: the labels a person gave it and the model's score per label.

    A label missing from ``scores`` counts as score 0.0.
    """

    image_id: str
    gt_labels: frozenset[str]
    scores: Mapping[str, float]

    def __post_init__(self) -> None:
        if isinstance(self.gt_labels, str):
            raise TypeError("gt_labels must be a set of labels, not a single string")
        object.__setattr__(self, "gt_labels", frozenset(self.gt_labels))
        for label, score in self.scores.items():
            if not np.isfinite(score):
                raise ValueError(f"score of {label!r} is not finite")
