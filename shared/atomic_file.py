"""Writing a local file so a reader (another process, or this one after a crash) never sees half of it.

The bytes go to a temporary file in the same folder, are flushed to disk, and the temporary file is
renamed over the target: a rename within one file system is atomic, so the target is the old file or
the new one, whole. Every local file the chain rewrites in place goes through here.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, BinaryIO

TMP_SUFFIX = ".tmp"


def write_atomically(path: Path, write: Callable[[BinaryIO], object]) -> None:
    """Calls `write` on a temporary file beside `path`, then puts it in `path`'s place."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=TMP_SUFFIX)
    try:
        with os.fdopen(fd, "wb") as out:
            write(out)
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_bytes_atomically(path: Path, data: bytes) -> None:
    write_atomically(path, lambda out: out.write(data))


def write_json_atomically(path: Path, data: Mapping[str, Any], *, indent: int | None = 1) -> None:
    write_bytes_atomically(path, json.dumps(data, indent=indent, sort_keys=True).encode())
