"""The object store port.

Keys are bucket-relative paths (`runs/<id>/run.json`); `uri(key)` gives the `gs://bucket/key` form that
Vertex and the run record use. In local mode the bucket is a folder that stands in for `gs://<name>`,
so the same URIs work in both modes and the local engine reads exactly what Vertex would.

A `Generation` is an opaque token naming one version of an object. `write(..., if_generation=g)` succeeds
only if the object is still at version `g`; `if_generation=NO_OBJECT` only if it does not exist yet.
That is the primitive the run record's conditional updates stand on.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import BinaryIO, Protocol

Generation = int | str
NO_OBJECT: Generation = 0
WILDCARD = "*"  # in an import URI, as Vertex's import takes it: every chunk ETL wrote


class NotFound(KeyError):
    """The object does not exist."""


class PreconditionFailed(RuntimeError):
    """A conditional write lost: the object changed (or appeared) since it was read."""


class ObjectStore(Protocol):
    bucket: str

    def uri(self, key: str) -> str:
        """The `gs://bucket/key` URI of an object."""
        ...

    def key_from_uri(self, uri: str) -> str:
        """The key of a `gs://` URI in this bucket; ValueError for any other bucket or scheme."""
        ...

    def read(self, key: str) -> bytes:
        """The object's bytes; NotFound if absent."""
        ...

    def read_versioned(self, key: str) -> tuple[bytes, Generation]:
        """The object's bytes and generation; NotFound if absent."""
        ...

    def write(
        self,
        key: str,
        data: bytes,
        *,
        content_type: str | None = None,
        if_generation: Generation | None = None,
    ) -> Generation:
        """Writes the whole object atomically; with `if_generation`, only if still at that version."""
        ...

    def upload_file(self, key: str, path: str, *, content_type: str | None = None) -> None:
        """Copies a local file into the store (streamed, not read whole into memory)."""
        ...

    def open_read(self, key: str, *, read_ahead: int | None = None) -> BinaryIO:
        """A binary stream of the object, for reading large objects without loading them. `read_ahead`
        bounds what the stream buffers (a merge holds a hundred streams open at once)."""
        ...

    def size(self, key: str) -> int | None:
        """The object's size in bytes, or None if it does not exist."""
        ...

    def exists(self, key: str) -> bool: ...

    def list(self, prefix: str) -> Iterator[str]:
        """Keys under `prefix`, in lexical order."""
        ...

    def delete(self, key: str) -> None:
        """Removes the object; no error if it is absent."""
        ...


def split_gs_uri(uri: str) -> tuple[str, str]:
    """`gs://bucket/a/b` -> (`bucket`, `a/b`)."""
    if not uri.startswith("gs://"):
        raise ValueError(f"not a gs:// URI: {uri!r}")
    bucket, _, key = uri[5:].partition("/")
    if not bucket or not key:
        raise ValueError(f"gs:// URI needs a bucket and an object name: {uri!r}")
    return bucket, key


def gs_uri(bucket: str, key: str) -> str:
    return f"gs://{bucket}/{key}"


def key_in_bucket(bucket: str, uri: str) -> str:
    """The key of a `gs://` URI, refusing any other bucket."""
    other, key = split_gs_uri(uri)
    if other != bucket:
        raise ValueError(f"{uri!r} is not in bucket {bucket!r}")
    return key


def matching(store: ObjectStore, pattern: str) -> list[str]:
    """The keys of `store` a one-`*` pattern names, in the store's listing order; the `*` matches within
    one folder, as Vertex's import reads the ETL's chunks (`.../import-*.jsonl`)."""
    head, _, tail = pattern.partition(WILDCARD)
    if WILDCARD in tail:
        raise ValueError(f"{pattern} has more than one {WILDCARD}")
    return [
        key
        for key in store.list(head)
        if len(key) >= len(head) + len(tail) and key.endswith(tail) and "/" not in key[len(head) : len(key) - len(tail)]
    ]
