"""A folder standing in for a bucket.

Conditional writes hold an exclusive `flock` on a sidecar lock file while they compare and replace,
and replace by writing a temporary file and `os.replace`-ing it, so readers never see half an object
and two processes can never both win. The generation is the SHA-256 of the content: filesystem
timestamps are too coarse to order two writes in the same tick.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import shutil
import stat
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO

from shared.atomic_file import write_atomically
from shared.store.port import NO_OBJECT, Generation, NotFound, PreconditionFailed, gs_uri, key_in_bucket

_LOCK_SUFFIX = ".lock~"
_TMP_SUFFIX = ".tmp"
# A folder is a key prefix, not an object; a key below a file names nothing.
_NO_OBJECT_ERRORS = (FileNotFoundError, IsADirectoryError, NotADirectoryError)


def _is_bookkeeping(name: str) -> bool:
    """A lock file, or the temporary file of a write in progress (or of a crashed one): not an object."""
    return name.endswith(_LOCK_SUFFIX) or (name.startswith(".") and name.endswith(_TMP_SUFFIX))


def _generation(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


class LocalFolderStore:
    def __init__(self, root: Path, bucket: str = "local-bucket") -> None:
        self.root = Path(root).resolve()
        self.bucket = bucket
        self.root.mkdir(parents=True, exist_ok=True)

    def path(self, key: str) -> Path:
        """The file behind a key; refuses keys that would escape the bucket folder."""
        if not key or key.startswith("/") or "\\" in key:
            raise ValueError(f"invalid object key {key!r}")
        path = (self.root / key).resolve()
        if self.root not in path.parents:
            raise ValueError(f"invalid object key {key!r}")
        return path

    def uri(self, key: str) -> str:
        return gs_uri(self.bucket, key)

    def key_from_uri(self, uri: str) -> str:
        return key_in_bucket(self.bucket, uri)

    def read(self, key: str) -> bytes:
        try:
            return self.path(key).read_bytes()
        except _NO_OBJECT_ERRORS:
            raise NotFound(key) from None

    def read_versioned(self, key: str) -> tuple[bytes, Generation]:
        data = self.read(key)
        return data, _generation(data)

    @contextmanager
    def _locked(self, path: Path) -> Iterator[None]:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path.with_name(path.name + _LOCK_SUFFIX), "a+b") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)

    def _replace(self, path: Path, write: Callable[[BinaryIO], object]) -> None:
        write_atomically(path, write)

    def write(
        self,
        key: str,
        data: bytes,
        *,
        content_type: str | None = None,
        if_generation: Generation | None = None,
    ) -> Generation:
        path = self.path(key)
        if if_generation is None:
            path.parent.mkdir(parents=True, exist_ok=True)
            self._replace(path, lambda out: out.write(data))
            return _generation(data)
        with self._locked(path):
            try:
                current: Generation = _generation(path.read_bytes())
            except FileNotFoundError:
                current = NO_OBJECT
            if current != if_generation:
                raise PreconditionFailed(f"{key}: expected generation {if_generation!r}, found {current!r}")
            self._replace(path, lambda out: out.write(data))
        return _generation(data)

    def upload_file(self, key: str, path: str, *, content_type: str | None = None) -> None:
        target = self.path(key)
        target.parent.mkdir(parents=True, exist_ok=True)

        def copy(out: BinaryIO) -> None:
            with open(path, "rb") as src:
                shutil.copyfileobj(src, out, 1 << 20)

        self._replace(target, copy)

    def open_read(self, key: str, *, read_ahead: int | None = None) -> BinaryIO:
        try:
            return open(self.path(key), "rb", buffering=read_ahead or -1)
        except _NO_OBJECT_ERRORS:
            raise NotFound(key) from None

    def size(self, key: str) -> int | None:
        try:
            info = self.path(key).stat()
        except _NO_OBJECT_ERRORS:
            return None
        return info.st_size if stat.S_ISREG(info.st_mode) else None

    def exists(self, key: str) -> bool:
        return self.path(key).is_file()

    def list(self, prefix: str) -> Iterator[str]:
        keys = []
        base = self.root / prefix.rpartition("/")[0] if "/" in prefix else self.root
        for dirpath, _dirs, files in os.walk(base):
            for name in files:
                if _is_bookkeeping(name):
                    continue
                key = os.path.relpath(os.path.join(dirpath, name), self.root).replace(os.sep, "/")
                if key.startswith(prefix):
                    keys.append(key)
        yield from sorted(keys)

    def delete(self, key: str) -> None:
        self.path(key).unlink(missing_ok=True)
