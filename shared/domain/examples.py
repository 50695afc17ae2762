"""The chain's own vocabulary for training data: data rows, splits, boxes. No I/O, no vendor formats."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum


class Split(StrEnum):
    TRAINING = "training"
    VALIDATION = "validation"
    TEST = "test"
    UNASSIGNED = "unassigned"

    @classmethod
    def known(cls, value: object) -> Split | None:
        """The split a value names, in any case and under Labelbox's short spellings; None if it names none."""
        if isinstance(value, str):
            text = value.strip().lower()
            aliases = {"train": "training", "valid": "validation", "val": "validation"}
            text = aliases.get(text, text)
            for member in cls:
                if member.value == text:
                    return member
        return None

    @classmethod
    def parse(cls, value: object) -> Split:
        """Lenient: unknown is UNASSIGNED. ETL uses `known` instead, to tell the user about a typo."""
        return cls.known(value) or cls.UNASSIGNED


@dataclass(frozen=True)
class PixelBox:
    """A box in pixel coordinates of the original image, top-left origin (Labelbox's convention)."""

    label: str
    left: float
    top: float
    width: float
    height: float


@dataclass(frozen=True)
class NormalizedBox:
    """A box normalized to [0, 1] of the image size (Vertex's convention)."""

    label: str
    x_min: float
    y_min: float
    x_max: float
    y_max: float


def to_pixels(
    x_min: float, y_min: float, x_max: float, y_max: float, width: float, height: float
) -> tuple[float, float, float, float]:
    """Normalized corners (Vertex) -> (left, top, width, height) in pixels of a `width` x `height` image
    (Labelbox), unrounded: the one conversion every ground-truth and prediction box goes through."""
    return x_min * width, y_min * height, (x_max - x_min) * width, (y_max - y_min) * height


@dataclass(frozen=True)
class Example:
    """One data row ready for training: where its image is, its size, its split and its labels."""

    data_row_id: str
    media_url: str
    mime_type: str | None
    width: int | None
    height: int | None
    split: Split
    boxes: tuple[PixelBox, ...] = ()
    labels: tuple[str, ...] = ()  # classification answers
    global_key: str | None = None
    labeled: bool = True  # False: a row of the model run nobody labeled yet (predicted on, never trained)
