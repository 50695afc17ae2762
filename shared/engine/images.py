"""Images from the object store, letterboxed into the model's square input.

The picture keeps its aspect ratio: it is scaled so its longer side fills the input and placed at the
top-left corner, and the rest is grey padding (zero after `normalize`, the same grey as the
augmentation's frame). So a 2048x1365 photo keeps its objects' shapes, and a box maps between the
picture and the input by one scale per axis (`Decoded.to_input` / `to_picture`), exactly, because the
resize maps the whole picture onto the whole resized area. Decoded training images are cached up to a
byte budget, so a small dataset is decoded once and a large one still runs in bounded memory.
"""

from __future__ import annotations

import io
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image

from shared.engine.augment import MEAN
from shared.store.port import ObjectStore

Image.MAX_IMAGE_PIXELS = 100_000_000  # the ETL's limit; larger files are refused, not decoded


PAD_GREY = round(255 * MEAN)  # padding that is zero once normalized

Box = tuple[float, float, float, float]  # normalized x_min, y_min, x_max, y_max


@dataclass(frozen=True)
class Decoded:
    pixels: torch.Tensor  # uint8 [3, size, size]: the picture at the top-left, grey padding after it
    width: int  # the original image's size, for pixel-space metrics
    height: int
    content: tuple[int, int]  # the picture's resized width and height inside the input

    @property
    def input_size(self) -> int:
        return int(self.pixels.shape[-1])

    def _scale(self) -> tuple[float, float]:
        size = self.input_size
        return self.content[0] / size, self.content[1] / size

    def to_input(self, box: Box) -> Box:
        """A box normalized to the picture -> normalized to the (padded) input."""
        sx, sy = self._scale()
        return (box[0] * sx, box[1] * sy, box[2] * sx, box[3] * sy)

    def to_picture(self, box: Box) -> Box:
        """A box normalized to the input -> normalized to the picture, clipped to it (the padding holds
        nothing)."""
        sx, sy = self._scale()
        x0, y0, x1, y1 = (min(max(v, 0.0), 1.0) for v in (box[0] / sx, box[1] / sy, box[2] / sx, box[3] / sy))
        return (x0, y0, x1, y1)


def letterbox_size(width: int, height: int, size: int) -> tuple[int, int]:
    """The picture's size inside a `size` square: longer side `size`, aspect kept, at least 1 pixel."""
    scale = size / max(width, height)
    return max(1, min(size, round(width * scale))), max(1, min(size, round(height * scale)))


def decode_image(data: bytes, size: int) -> Decoded:
    """ValueError for anything PIL cannot read as an image."""
    try:
        with Image.open(io.BytesIO(data)) as img:
            width, height = img.size
            content = letterbox_size(width, height, size)
            img.draft("RGB", content)  # JPEG: decode at a reduced scale when the file is large
            rgb = img.convert("RGB").resize(content, Image.Resampling.BILINEAR)
    except (OSError, SyntaxError, Image.DecompressionBombError) as exc:
        raise ValueError(f"not a readable image: {exc}") from None
    square = np.full((size, size, 3), PAD_GREY, dtype=np.uint8)
    square[: content[1], : content[0]] = np.asarray(rgb, dtype=np.uint8)
    return Decoded(torch.from_numpy(square).permute(2, 0, 1).contiguous(), width, height, content)


def load_image(store: ObjectStore, uri: str, size: int) -> Decoded:
    """Reads a gs:// URI through the store; ValueError (with the reason) when it cannot be used."""
    try:
        key = store.key_from_uri(uri)
        data = store.read(key)
    except KeyError:
        raise ValueError(f"{uri} does not exist") from None
    return decode_image(data, size)


class ImageCache:
    """Decoded images by URI, kept while under `max_bytes`; beyond that, decoded on every use."""

    def __init__(self, store: ObjectStore, size: int, max_bytes: int) -> None:
        self.store = store
        self.size = size
        self.max_bytes = max_bytes
        self._kept: dict[str, Decoded] = {}
        self._bytes = 0

    def get(self, uri: str) -> Decoded:
        hit = self._kept.get(uri)
        if hit is not None:
            return hit
        decoded = load_image(self.store, uri, self.size)
        cost = decoded.pixels.numel()
        if self._bytes + cost <= self.max_bytes:
            self._kept[uri] = decoded
            self._bytes += cost
        return decoded
