"""Copies data-row images into the run's folder of the bucket, where Vertex (or the local engine) reads them.

Images land at `runs/<run>/images/<dataRowId>.<ext>`: the object name is the join key from a
prediction back to its data row. Copies run with bounded concurrency and retries, stream through a
temporary file (never a whole image set in memory), stop at a size limit, and read only the image
header to check the format and guard against decompression bombs. Objects are written atomically, so
an object that exists is complete; one with the source's size is not copied again, which makes a
re-run after a crash resume instead of starting over.
"""

from __future__ import annotations

import logging
import mimetypes
import tempfile
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import PurePosixPath
from urllib.parse import urlparse

from PIL import Image, UnidentifiedImageError

from shared.examples import Example
from shared.platform.port import LabelingPlatform, PlatformError
from shared.store.port import ObjectStore

log = logging.getLogger(__name__)

# Vertex's training formats (object detection and classification), by Pillow format name.
FORMATS = {
    "JPEG": ("jpg", "image/jpeg"),
    "PNG": ("png", "image/png"),
    "GIF": ("gif", "image/gif"),
    "BMP": ("bmp", "image/bmp"),
    "ICO": ("ico", "image/vnd.microsoft.icon"),
}
_EXT_BY_MIME = {mime: ext for ext, mime in FORMATS.values()}


@dataclass(frozen=True)
class StagedImage:
    key: str
    uri: str
    width: int
    height: int
    mime_type: str
    copied: bool  # False when an earlier run had already staged it


@dataclass(frozen=True)
class NotStaged:
    reason: str


class ImageStager:
    def __init__(
        self,
        store: ObjectStore,
        platform: LabelingPlatform,
        *,
        run_id: str,
        model_run_id: str,
        max_bytes: int,
        max_pixels: int,
        concurrency: int,
        attempts: int = 3,
    ) -> None:
        self.store = store
        self.platform = platform
        self.run_id = run_id
        self.model_run_id = model_run_id
        self.max_bytes = max_bytes
        self.max_pixels = max_pixels
        self.attempts = attempts
        self._pool = ThreadPoolExecutor(max_workers=concurrency, thread_name_prefix="stage-image")

    def close(self) -> None:
        self._pool.shutdown(wait=True)

    def __enter__(self) -> ImageStager:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def stage_many(self, examples: Sequence[Example]) -> list[StagedImage | NotStaged]:
        """Stages a block of images concurrently; results come back in the order given."""
        return list(self._pool.map(self.stage, examples))

    def key_for(self, example: Example, ext: str) -> str:
        return f"runs/{self.run_id}/images/{example.data_row_id}.{ext}"

    def _guess_ext(self, example: Example) -> str:
        if example.mime_type in _EXT_BY_MIME:
            return _EXT_BY_MIME[example.mime_type]
        suffix = PurePosixPath(urlparse(example.media_url).path).suffix.lower().lstrip(".")
        return {"jpeg": "jpg"}.get(suffix, suffix) if suffix else "jpg"

    def stage(self, example: Example) -> StagedImage | NotStaged:
        try:
            return self._reuse(example) or self._copy(example)
        except Exception as exc:  # one bad image must not stop the export
            log.warning("image for data row %s not staged: %s", example.data_row_id, type(exc).__name__)
            return NotStaged(f"image could not be staged ({type(exc).__name__})")

    def _reuse(self, example: Example) -> StagedImage | None:
        ext = self._guess_ext(example)
        key = self.key_for(example, ext)
        size = self.store.size(key)
        if not size:
            return None
        expected = self.platform.media_size(example.media_url, model_run_id=self.model_run_id)
        if expected is not None and expected != size:
            return None
        width, height = example.width, example.height
        if not (width and height):
            with self.store.open_read(key) as stream, Image.open(stream) as img:
                width, height = img.size
        mime = example.mime_type or mimetypes.guess_type(f"x.{ext}")[0] or "image/jpeg"
        return StagedImage(key, self.store.uri(key), width, height, mime, copied=False)

    def _copy(self, example: Example) -> StagedImage | NotStaged:
        last_error = "no attempt"
        for attempt in range(self.attempts):
            with tempfile.NamedTemporaryFile(prefix="stage-", suffix=".img") as tmp:
                try:
                    size = 0
                    for chunk in self.platform.open_media(example.media_url, model_run_id=self.model_run_id):
                        size += len(chunk)
                        if size > self.max_bytes:
                            return NotStaged(f"image over {self.max_bytes / 2**20:.4g} MiB")  # 1000 B: "0.0009537 MiB"
                        tmp.write(chunk)
                    tmp.flush()
                except PlatformError as exc:
                    last_error = str(exc)
                    if attempt + 1 < self.attempts:  # no pause after the last attempt: nothing follows it
                        time.sleep(0.2 * 2**attempt)
                    continue
                if size == 0:
                    return NotStaged("image file is empty")
                checked = self._check_header(tmp.name)
                if isinstance(checked, NotStaged):
                    return checked
                fmt, (w, h) = checked
                ext, mime = FORMATS[fmt]
                key = self.key_for(example, ext)
                self.store.upload_file(key, tmp.name, content_type=mime)
                width = example.width or w
                height = example.height or h
                return StagedImage(key, self.store.uri(key), width, height, mime, copied=True)
        return NotStaged(f"image download failed: {last_error}"[:200])

    def _check_header(self, path: str) -> tuple[str, tuple[int, int]] | NotStaged:
        try:
            with Image.open(path) as img:  # reads the header only; nothing is decoded
                fmt, size = img.format, img.size
        except Image.DecompressionBombError:
            return NotStaged(f"image over {self.max_pixels} pixels (decompression bomb guard)")
        except (UnidentifiedImageError, OSError):
            return NotStaged("not a readable image")
        if fmt not in FORMATS:
            return NotStaged(f"image format {fmt} is not accepted by Vertex")
        if size[0] * size[1] > self.max_pixels:
            return NotStaged(f"image over {self.max_pixels} pixels (decompression bomb guard)")
        return fmt, size
