"""An object store over every bucket a Vertex job may name: keys are whole `gs://bucket/name` URIs.

The chain's stores hold one bucket each, but a job on Vertex gets URIs from outside: an import file
whose images may lie in other buckets, a model dir and an output dir anywhere. So this store routes
each URI to a `GcsStore` of its bucket (one client for all), or to a local folder standing in for the
bucket where `folders` maps it (as the local chain's folder bucket does). `train()` and
`run_batch_prediction()` take it as they take any store: `key_from_uri(uri)` is the URI itself.

An import URI with a `*` reads as the matching objects one after another (a newline between chunks
that lack one), because the ETL writes its import JSONL in chunks and Vertex accepts the wildcard.
"""

from __future__ import annotations

import io
from collections.abc import Iterator, Mapping
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO, cast

from shared.store.port import WILDCARD, Generation, NotFound, ObjectStore, gs_uri, matching, split_gs_uri

if TYPE_CHECKING:
    import google.cloud.storage as storage


class UriStore:
    """`ObjectStore` whose keys are `gs://` URIs in any bucket; see the module docstring."""

    bucket = "*"  # no one bucket: every key names its own

    def __init__(self, folders: Mapping[str, Path] | None = None, *, client: storage.Client | None = None) -> None:
        """`folders`: bucket name -> local folder that stands in for it. `client`: the GCS client for
        the other buckets (default: made on first use, from the environment's credentials)."""
        self._folders = dict(folders or {})
        self._given_client = client
        self._stores: dict[str, ObjectStore] = {}

    @cached_property
    def _client(self) -> storage.Client:
        import google.cloud.storage as storage

        return self._given_client if self._given_client is not None else storage.Client()

    def _bucket(self, bucket: str) -> ObjectStore:
        store = self._stores.get(bucket)
        if store is None:
            if bucket in self._folders:
                from shared.store.local_folder import LocalFolderStore

                store = LocalFolderStore(self._folders[bucket], bucket)
            else:
                from shared.store.gcs import GcsStore

                store = GcsStore(bucket, client=self._client)
            self._stores[bucket] = store
        return store

    def _route(self, key: str) -> tuple[ObjectStore, str]:
        bucket, name = split_gs_uri(key)
        return self._bucket(bucket), name

    def uri(self, key: str) -> str:
        return key

    def key_from_uri(self, uri: str) -> str:
        split_gs_uri(uri)  # ValueError for anything but gs://bucket/name
        return uri

    def read(self, key: str) -> bytes:
        store, name = self._route(key)
        try:
            return store.read(name)
        except NotFound:
            raise NotFound(key) from None

    def read_versioned(self, key: str) -> tuple[bytes, Generation]:
        store, name = self._route(key)
        try:
            return store.read_versioned(name)
        except NotFound:
            raise NotFound(key) from None

    def write(
        self,
        key: str,
        data: bytes,
        *,
        content_type: str | None = None,
        if_generation: Generation | None = None,
    ) -> Generation:
        store, name = self._route(key)
        return store.write(name, data, content_type=content_type, if_generation=if_generation)

    def upload_file(self, key: str, path: str, *, content_type: str | None = None) -> None:
        store, name = self._route(key)
        store.upload_file(name, path, content_type=content_type)

    def matching(self, pattern: str) -> list[str]:
        """The URIs a one-`*` pattern names (`shared.store.port.matching`)."""
        return matching(self, pattern)

    def open_read(self, key: str, *, read_ahead: int | None = None) -> BinaryIO:
        if WILDCARD in key:
            uris = self.matching(key)
            if not uris:
                raise NotFound(key)
            return cast(BinaryIO, io.BufferedReader(_Chained(self, uris, read_ahead)))
        store, name = self._route(key)
        try:
            return store.open_read(name, read_ahead=read_ahead)
        except NotFound:
            raise NotFound(key) from None

    def size(self, key: str) -> int | None:
        store, name = self._route(key)
        return store.size(name)

    def exists(self, key: str) -> bool:
        if WILDCARD in key:
            return bool(self.matching(key))
        store, name = self._route(key)
        return store.exists(name)

    def list(self, prefix: str) -> Iterator[str]:
        """Keys under a `gs://bucket/...` prefix (a bucket's root is `gs://bucket/`)."""
        if not prefix.startswith("gs://"):
            raise ValueError(f"not a gs:// URI: {prefix!r}")
        bucket, _, name = prefix[len("gs://") :].partition("/")
        if not bucket:
            raise ValueError(f"a gs:// prefix needs a bucket: {prefix!r}")
        for key in self._bucket(bucket).list(name):
            yield gs_uri(bucket, key)

    def delete(self, key: str) -> None:
        store, name = self._route(key)
        store.delete(name)


class _Chained(io.RawIOBase):
    """The objects one after another as one stream, each opened when the one before it ends."""

    def __init__(self, store: UriStore, uris: list[str], read_ahead: int | None) -> None:
        self._store = store
        self._pending = list(uris)
        self._read_ahead = read_ahead
        self._current: BinaryIO | None = None
        self._last = b"\n"  # the last byte handed out: a chunk without a final newline gets one

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        view = memoryview(buffer).cast("B")
        while True:
            if self._current is None:
                if not self._pending:
                    return 0
                self._current = self._store.open_read(self._pending.pop(0), read_ahead=self._read_ahead)
            data = self._current.read(len(view))
            if data:
                view[: len(data)] = data
                self._last = data[-1:]
                return len(data)
            self._current.close()
            self._current = None
            if self._last != b"\n" and self._pending:
                view[:1] = b"\n"
                self._last = b"\n"
                return 1

    def close(self) -> None:
        if self._current is not None:
            self._current.close()
            self._current = None
        super().close()
