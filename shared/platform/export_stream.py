"""A bounded-memory reader of a COMPLETE Labelbox export task's streams (RESULT, ERRORS).

The SDK's only reader, `ExportTask.get_buffered_stream` (labelbox 7.17), downloads the whole stream
into a temporary file before it yields the first row; on Cloud Functions `/tmp` is memory, so a
1M-row export costs its whole size in RAM. This reader speaks the same protocol with the SDK's own
queries, through the SDK client's `execute` (same auth, same retries): `exportMetadataHeader` gives the
stream's size, `exportFileFromOffset` the signed URL of the file holding an offset. Each file is read
with `stream=True` in blocks; the bytes after a block's last newline wait for the next block (or the
next file), so UTF-8 is decoded only on whole lines. Memory is one block plus the longest line, and a
line over the cap fails loudly instead of growing without bound.

Failures this module detects are PlatformErrors whose text holds no signed-URL query string and no
row content (rows carry signed media URLs too). Errors `execute` raises pass through, for the adapter
to scrub of the API key.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Generator, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit, urlunsplit

import requests

from shared.platform.port import PlatformError

if TYPE_CHECKING:
    from labelbox import Client

logger = logging.getLogger(__name__)

RESULT = "RESULT"
ERRORS = "ERRORS"
BLOCK_BYTES = 1 << 16
MAX_LINE_BYTES = 32 << 20
FILE_TIMEOUT_S = (10.0, 60.0)  # to connect, and between two reads of the body
FILE_ATTEMPTS = 4  # per file: the first GET, then fresh URLs after an expiry or a body that broke off
EXPIRED = frozenset({400, 403})  # what a signed GCS URL answers once it has expired
MAX_ERROR_FILE_BYTES = 1 << 20

# The SDK's own queries, character for character (labelbox/schema/export_task.py).
HEADER_QUERY = (
    "query GetExportMetadataHeaderPyApi"
    "($where: WhereUniqueIdInput, $streamType: TaskStreamType!)"
    "{task(where: $where){exportMetadataHeader(streamType: $streamType){totalSize totalLines}}}"
)
FILE_QUERY = (
    "query GetExportFileFromOffsetPyApi"
    "($where: WhereUniqueIdInput, $streamType: TaskStreamType!, $offset: UInt64!)"
    "{task(where: $where){exportFileFromOffset(streamType: $streamType, offset: $offset)"
    "{offsets {start end} lines {start end} file}}}"
)


@dataclass(frozen=True)
class StreamHeader:
    total_size: int
    total_lines: int


@dataclass(frozen=True)
class ExportFile:
    """One file of a stream: bytes `start`..`end` (inclusive) at a signed URL."""

    start: int
    end: int
    url: str

    @property
    def size(self) -> int:
        return self.end - self.start + 1


def url_without_query(url: str) -> str:
    """A URL safe to log: signed URLs carry their credentials in the query string."""
    parts = urlsplit(url)
    safe = urlunsplit((parts.scheme, parts.netloc, parts.path, "", ""))
    return safe if len(safe) <= 300 else safe[:299] + "…"


def _scrub(text: str, url: str) -> str:
    """requests puts the path and query it sent into its messages (maybe re-quoted); the query is the signature."""
    parts = urlsplit(url)
    if parts.query:
        text = text.replace(parts.query, "…")
    if parts.path:
        text = re.sub(re.escape(parts.path) + r"\?[^\s'\")]*", parts.path + "?…", text)
    return text


def _task_field(answer: dict[str, Any] | None, task_id: str, field: str) -> Any:
    task = (answer or {}).get("task")
    if task is None:  # `execute` answers None when Labelbox says RESOURCE_NOT_FOUND
        raise PlatformError(f"Labelbox has no export task {task_id}")
    return task.get(field)


def stream_header(client: Client, task_id: str, stream_type: str = RESULT) -> StreamHeader | None:
    """The stream's size and line count; None when the task has no such stream (Labelbox's null header)."""
    variables = {"where": {"id": task_id}, "streamType": stream_type}
    answer = client.execute(HEADER_QUERY, variables, error_log_key="errors")
    header = _task_field(answer, task_id, "exportMetadataHeader")
    if not header:
        return None
    return StreamHeader(total_size=int(header["totalSize"]), total_lines=int(header.get("totalLines") or 0))


def file_at(client: Client, task_id: str, stream_type: str, offset: int) -> ExportFile:
    """The file holding byte `offset` of the stream, with a freshly signed URL."""
    variables = {"where": {"id": task_id}, "streamType": stream_type, "offset": str(offset)}
    answer = client.execute(FILE_QUERY, variables, error_log_key="errors")
    found = _task_field(answer, task_id, "exportFileFromOffset")
    if not found or not found.get("file"):
        raise PlatformError(f"Labelbox has no {stream_type} file at byte {offset} of export task {task_id}")
    start, end = int(found["offsets"]["start"]), int(found["offsets"]["end"])
    if not start <= offset <= end:
        raise PlatformError(
            f"Labelbox answered bytes {start}-{end} of export task {task_id} when asked for byte {offset} "
            f"of its {stream_type} stream; start a new export"
        )
    return ExportFile(start=start, end=end, url=found["file"])


def _file_blocks(
    client: Client, task_id: str, stream_type: str, offset: int, session: requests.Session, block_bytes: int
) -> Generator[bytes, None, int]:
    """Bytes `offset`.. of the file holding `offset`, checked against its offsets; returns the file's end.

    An expired URL (400/403) or a body that broke off gets a fresh URL for the same offset; after a
    break the bytes already handed on are skipped, so the caller sees each byte once.
    """
    sent = 0
    for attempt in range(1, FILE_ATTEMPTS + 1):
        piece = file_at(client, task_id, stream_type, offset)
        safe = url_without_query(piece.url)
        skip = offset - piece.start + sent
        received = 0
        try:
            with session.get(piece.url, stream=True, timeout=FILE_TIMEOUT_S) as response:
                status = response.status_code
                if status in EXPIRED and attempt < FILE_ATTEMPTS:
                    logger.info("export file %s answered HTTP %d (expired?); asking for a fresh URL", safe, status)
                    continue
                if status >= 400:
                    tries = f" with {attempt} freshly signed URLs" if status in EXPIRED else ""
                    reason = _scrub(response.reason or "", piece.url)
                    raise PlatformError(
                        f"downloading export file {safe} (bytes {piece.start}-{piece.end} of the {stream_type} "
                        f"stream of task {task_id}) failed{tries}: HTTP {status} {reason}"
                    )
                for block in response.iter_content(block_bytes):
                    received += len(block)
                    if received > piece.size:
                        break
                    if skip >= len(block):
                        skip -= len(block)
                        continue
                    if skip:
                        block, skip = block[skip:], 0
                    sent += len(block)
                    yield block
        except requests.RequestException as exc:
            detail = _scrub(f"{type(exc).__name__}: {exc}", piece.url)
            if attempt < FILE_ATTEMPTS:
                logger.warning("export file %s broke off after %d bytes (%s); retrying", safe, received, detail)
                continue
            raise PlatformError(
                f"downloading export file {safe} of task {task_id} broke off after {received} of {piece.size} "
                f"bytes, {attempt} times: {detail}"
            ) from None
        if received != piece.size:
            raise PlatformError(
                f"export file {safe} of task {task_id} holds {'more than ' if received > piece.size else ''}"
                f"{received} bytes, but Labelbox gave its offsets as {piece.start}-{piece.end} ({piece.size} bytes); "
                "the export is inconsistent, start a new one"
            )
        return piece.end
    raise AssertionError("unreachable: the last attempt returns or raises")


def _blocks(
    client: Client, task_id: str, stream_type: str, total_size: int, session: requests.Session, block_bytes: int
) -> Generator[bytes, None, None]:
    """The stream's bytes 0..total_size-1, file after file (`offset = end + 1`), in bounded blocks."""
    offset = 0
    while offset < total_size:
        end = yield from _file_blocks(client, task_id, stream_type, offset, session, block_bytes)
        offset = end + 1


def _lines(blocks: Iterator[bytes], max_line_bytes: int, what: str) -> Generator[bytes, None, None]:
    """Whole lines (without the newline) out of blocks cut anywhere, across files too."""
    pending = bytearray()
    number = 0

    def too_long() -> PlatformError:
        return PlatformError(
            f"line {number + 1} of {what} is longer than the line cap of {max_line_bytes} bytes "
            "(export_max_line_bytes); a row this large would cost that much memory, so it is refused"
        )

    for block in blocks:
        cut = block.rfind(b"\n")
        if cut < 0:
            pending += block
            if len(pending) > max_line_bytes:
                raise too_long()
            continue
        lines = block[:cut].split(b"\n")
        if pending:
            pending += lines[0]
            lines[0] = bytes(pending)
        pending = bytearray(block[cut + 1 :])
        for line in lines:
            if len(line) > max_line_bytes:
                raise too_long()
            number += 1
            yield line
    if len(pending) > max_line_bytes:
        raise too_long()
    if pending:
        yield bytes(pending)


def read_stream(
    client: Client,
    task_id: str,
    stream_type: str = RESULT,
    *,
    session: requests.Session | None = None,
    header: StreamHeader | None = None,
    block_bytes: int = BLOCK_BYTES,
    max_line_bytes: int = MAX_LINE_BYTES,
) -> Generator[Any, None, None]:
    """Every JSON line of a COMPLETE task's stream, in order; nothing when the task has no such stream."""
    header = header or stream_header(client, task_id, stream_type)
    if header is None or header.total_size <= 0:
        return
    what = f"the {stream_type} stream of export task {task_id}"
    own = session is None
    http = requests.Session() if session is None else session
    rows = 0
    blocks = _blocks(client, task_id, stream_type, header.total_size, http, block_bytes)
    lines = _lines(blocks, max_line_bytes, what)
    try:
        for number, line in enumerate(lines, 1):
            if not line or line.isspace():
                continue
            try:
                row = json.loads(line.decode("utf-8"))
            except UnicodeDecodeError:
                raise PlatformError(f"line {number} of {what} is not UTF-8") from None
            except json.JSONDecodeError as exc:
                raise PlatformError(f"line {number} of {what} is not JSON ({exc.msg}, column {exc.colno})") from None
            rows += 1
            yield row
    finally:  # an abandoned iterator closes its download now, not whenever it is collected
        lines.close()
        blocks.close()
        if own:
            http.close()
    if header.total_lines and rows != header.total_lines:
        logger.warning("%s had %d rows, its header said %d lines", what, rows, header.total_lines)


def read_error_file(url: str, *, session: requests.Session, max_bytes: int = MAX_ERROR_FILE_BYTES) -> list[Any]:
    """The entries of a failed task's error file (NDJSON, as the SDK reads it), at most `max_bytes` of it."""
    safe = url_without_query(url)
    content = bytearray()
    try:
        with session.get(url, stream=True, timeout=FILE_TIMEOUT_S) as response:
            if response.status_code >= 400:
                raise PlatformError(f"HTTP {response.status_code} from {safe}")
            for block in response.iter_content(BLOCK_BYTES):
                content += block[: max_bytes - len(content)]
                if len(content) >= max_bytes:
                    break
    except requests.RequestException as exc:
        raise PlatformError(f"{safe}: {_scrub(f'{type(exc).__name__}: {exc}', url)}") from None
    entries: list[Any] = []
    for line in content.decode("utf-8", errors="replace").splitlines():
        if line.strip():
            try:
                entries.append(json.loads(line))
            except json.JSONDecodeError:
                entries.append(line.strip())
    return entries
