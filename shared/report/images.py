"""Sample images as small data URIs: the report must open offline and stay a few megabytes at most."""

from __future__ import annotations

import base64
import io
from dataclasses import dataclass

from PIL import Image

MAX_SIDE = 512
JPEG_QUALITY = 80


@dataclass(frozen=True)
class EmbeddedImage:
    data_uri: str
    width: int
    height: int


def embed_image(data: bytes) -> EmbeddedImage | None:
    """The image re-encoded as a JPEG at most MAX_SIDE pixels on its long side; None if unreadable.

    Always re-encoded, whatever the declared MIME type (Vertex output even says "text/plain"): one
    format every browser shows, and a size bound regardless of the source.
    """
    try:
        with Image.open(io.BytesIO(data)) as source:
            source.seek(0)
            image = _flatten(source)
    except (OSError, ValueError, Image.DecompressionBombError):
        return None
    image.thumbnail((MAX_SIDE, MAX_SIDE), Image.Resampling.LANCZOS)
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=JPEG_QUALITY, optimize=True)
    encoded = base64.b64encode(buffer.getvalue()).decode("ascii")
    return EmbeddedImage(f"data:image/jpeg;base64,{encoded}", image.width, image.height)


def _flatten(image: Image.Image) -> Image.Image:
    """RGB on white: JPEG has no alpha, and transparent pixels would otherwise turn black."""
    if image.mode in ("RGBA", "LA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        background = Image.new("RGB", rgba.size, (255, 255, 255))
        background.paste(rgba, mask=rgba.getchannel("A"))
        return background
    return image.convert("RGB")
