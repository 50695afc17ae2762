"""Images from the object store, decoded to fixed-size uint8 tensors.

Every image is resized to the model's square input, aspect ratio ignored: boxes are normalized, so a
box maps back to the original image exactly by the same normalized coordinates. Decoded training
images are cached up to a byte budget, so a small dataset is decoded once and a large one still runs
in bounded memory.
"""

from __future__ import annotations

import io
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image

from shared.store.port import ObjectStore

Image.MAX_IMAGE_PIXELS = 100_000_000  # the ETL's limit; larger files are refused, not decoded


@dataclass(frozen=True)
class Decoded:
    pixels: torch.Tensor  # uint8 [3, size, size]
    width: int  # the original image's size, for pixel-space metrics
    height: int


def decode_image(data: bytes, size: int) -> Decoded:
    """ValueError for anything PIL cannot read as an image."""
    try:
        with Image.open(io.BytesIO(data)) as img:
            width, height = img.size
            img.draft("RGB", (size, size))  # JPEG: decode at a reduced scale when the file is large
            rgb = img.convert("RGB").resize((size, size), Image.Resampling.BILINEAR)
    except (OSError, SyntaxError, Image.DecompressionBombError) as exc:
        raise ValueError(f"not a readable image: {exc}") from None
    array = np.asarray(rgb, dtype=np.uint8)
    return Decoded(torch.from_numpy(array.copy()).permute(2, 0, 1).contiguous(), width, height)


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
