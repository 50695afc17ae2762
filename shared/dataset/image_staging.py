"""Copies data-row images into the run's folder of the bucket, where Vertex (or the local engine) reads them.

Images land at `runs/<run>/images/<shard>/<name>.<ext>`, in the folder of the ETL shard whose manifest
chunk lists the row, where the name is the data row id when it looks like a Labelbox id and an encoding
of it otherwise (`object_stem`), so no id can place an object outside its run's folder. Nothing parses
an id back out of a name: predictions join to rows through the staged image's URI, which the manifest
records (the folder only routes a prediction to its shard). Copies run with bounded concurrency and retries, stream
through a temporary file (never a whole image set in memory) and stop at a size limit. The header is
checked first (format, and the pixel count against decompression bombs), then the image is decoded in
full, so a truncated or corrupt file is refused here instead of being dropped by the engine or failed
by Vertex later: JPEGs at 1/8 scale (every coefficient is still read), other formats under a shared
budget of decoded bytes, which bounds memory however many copies run at once. The size used is the
decoded image's own; a size declared in the export that differs is reported, not used. Objects are
written atomically, so an object that exists is complete (and was decoded before it was written); one
with the source's size is not copied again, which makes a re-run after a crash resume instead of
starting over.

A failure is a `NotStaged` with one reason per kind of problem (`image not found`, `image download
failed (HTTP 404)`) and the file or URL, its query string cut (it may hold a signature), as its detail.
"""

from __future__ import annotations

import hashlib
import logging
import re
import tempfile
import threading
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import PurePosixPath
from urllib.parse import urlparse

from PIL import Image, UnidentifiedImageError

from shared.domain.data_quality import URL, without_query
from shared.domain.examples import Example
from shared.domain.run_paths import RunPaths
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
DECODE_FAILED = "image could not be decoded"
# Decoded pixels held at once by all copy threads together (4 bytes a pixel, JPEGs at 1/64 of that).
DECODE_BUDGET_BYTES = 256 * 2**20
_READABLE_ID = re.compile(r"[A-Za-z0-9_-]{1,128}")
_HTTP_STATUS = re.compile(r"\bHTTP (\d{3})\b")
_EXCEPTION = re.compile(r"\b([A-Z][A-Za-z]*(?:Error|Exception|Timeout))\b")
_DETAIL_CHARS = 200


def object_stem(data_row_id: str) -> str:
    """The object name (less its extension) of a data row's image.

    An id made of `[A-Za-z0-9_-]`, at most 128 characters (what Labelbox ids, cuids, look like), is its
    own name. Any other id (a slash, a dot, a space, a letter outside ASCII) becomes `~` and the SHA-256
    of its UTF-8 bytes: it cannot leave `runs/<run>/images/`, and two ids never share a name (a readable
    name never starts with `~`; two ids with the same SHA-256 are not a practical concern).
    """
    if _READABLE_ID.fullmatch(data_row_id):
        return data_row_id
    return "~" + hashlib.sha256(data_row_id.encode("utf-8", "surrogatepass")).hexdigest()


def download_problem(message: str) -> tuple[str, str]:
    """(reason, detail) of a platform's download error: one reason per kind, the file or URL as detail."""
    text = without_query(" ".join(message.split()))
    url = URL.search(text)
    detail = url.group(0) if url else text
    if "leaves the model run folder" in text:
        return "image path leaves the model run folder", detail[:_DETAIL_CHARS]
    if "not an http(s) url" in text.lower():
        return "image URL is not http(s)", detail[:_DETAIL_CHARS]
    status = _HTTP_STATUS.search(text)
    if status:
        return f"image download failed (HTTP {status.group(1)})", detail[:_DETAIL_CHARS]
    if "not found" in text:
        return "image not found", (text.split("not found:", 1)[-1].strip() if not url else detail)[:_DETAIL_CHARS]
    error = _EXCEPTION.search(text)
    reason = f"image download failed ({error.group(1)})" if error else "image download failed"
    return reason, text[:_DETAIL_CHARS]


@dataclass(frozen=True)
class StagedImage:
    key: str
    uri: str
    width: int  # the image's own size, decoded: the export's media attributes can be wrong
    height: int
    mime_type: str
    copied: bool  # False when an earlier run had already staged it
    declared_size: tuple[int, int] | None = None  # the export's (width, height), when it differs


@dataclass(frozen=True)
class NotStaged:
    reason: str
    detail: str | None = None


class _DecodeBudget:
    """Bytes of decoded pixels the copy threads may hold at once; an image over the budget decodes alone."""

    def __init__(self, limit: int) -> None:
        self._limit = limit
        self._used = 0
        self._free = threading.Condition()

    @contextmanager
    def hold(self, size: int) -> Iterator[None]:
        size = max(1, min(size, self._limit))
        with self._free:
            while self._used + size > self._limit:
                self._free.wait()
            self._used += size
        try:
            yield
        finally:
            with self._free:
                self._used -= size
                self._free.notify_all()


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
        shard: int = 0,
        attempts: int = 3,
    ) -> None:
        self.store = store
        self.shard = shard
        self.platform = platform
        self.run_id = run_id
        self.model_run_id = model_run_id
        self.max_bytes = max_bytes
        self.max_pixels = max_pixels
        self.attempts = attempts
        self._pool = ThreadPoolExecutor(max_workers=concurrency, thread_name_prefix="stage-image")
        self._budget = _DecodeBudget(DECODE_BUDGET_BYTES)

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
        return RunPaths(self.run_id).image(object_stem(example.data_row_id), ext, self.shard)

    def _guess_ext(self, example: Example) -> str:
        if example.mime_type in _EXT_BY_MIME:
            return _EXT_BY_MIME[example.mime_type]
        suffix = PurePosixPath(urlparse(example.media_url).path).suffix.lower().lstrip(".")
        return {"jpeg": "jpg"}.get(suffix, suffix) if suffix else "jpg"

    def stage(self, example: Example) -> StagedImage | NotStaged:
        try:
            return self._reuse(example) or self._copy(example)
        except Exception as exc:  # one bad image must not stop the export
            log.warning("image for data row %r not staged: %s", example.data_row_id[:80], type(exc).__name__)
            detail = without_query(" ".join(str(exc).split()))[:_DETAIL_CHARS] or None
            return NotStaged(f"image could not be staged ({type(exc).__name__})", detail)

    def _staged(self, example: Example, key: str, real: tuple[int, int], mime: str, *, copied: bool) -> StagedImage:
        width, height = example.width, example.height
        differs = (width, height) if width and height and (width, height) != real else None
        return StagedImage(key, self.store.uri(key), real[0], real[1], mime, copied, declared_size=differs)

    def _reuse(self, example: Example) -> StagedImage | None:
        """The object an earlier run staged, when it is still the source's; its size read from its header."""
        ext = self._guess_ext(example)
        key = self.key_for(example, ext)
        size = self.store.size(key)
        if not size:
            return None
        expected = self.platform.media_size(example.media_url, model_run_id=self.model_run_id)
        if expected is not None and expected != size:
            return None
        try:
            with self.store.open_read(key) as stream, Image.open(stream) as img:  # the header only
                fmt, real = img.format, img.size
        except (UnidentifiedImageError, OSError, Image.DecompressionBombError):
            return None  # copied (and checked) again
        if fmt not in FORMATS or FORMATS[fmt][0] != ext:
            return None
        return self._staged(example, key, real, FORMATS[fmt][1], copied=False)

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
                checked = self._check_image(tmp.name)
                if isinstance(checked, NotStaged):
                    return checked
                fmt, real = checked
                ext, mime = FORMATS[fmt]
                key = self.key_for(example, ext)
                self.store.upload_file(key, tmp.name, content_type=mime)
                return self._staged(example, key, real, mime, copied=True)
        return NotStaged(*download_problem(last_error))

    def _check_image(self, path: str) -> tuple[str, tuple[int, int]] | NotStaged:
        """The format and size from the header (nothing decoded yet), then a full decode."""
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
        problem = self._decode(path, fmt, size)
        return problem or (fmt, size)

    def _decode(self, path: str, fmt: str, size: tuple[int, int]) -> NotStaged | None:
        """Decodes the whole image, or says why it cannot be: truncated, corrupt, a bad checksum."""
        width, height = size
        jpeg = fmt == "JPEG"
        with self._budget.hold(width * height * 4 // (64 if jpeg else 1)):
            try:
                with Image.open(path) as img:
                    if jpeg:  # DCT scaling: 1/64 of the pixels in memory, every coefficient still decoded
                        img.draft(img.mode, (max(1, width // 8), max(1, height // 8)))
                    img.load()
            except Exception as exc:  # Pillow raises OSError, SyntaxError, ValueError... for broken data
                return NotStaged(DECODE_FAILED, " ".join(str(exc).split())[:_DETAIL_CHARS] or type(exc).__name__)
        return None
