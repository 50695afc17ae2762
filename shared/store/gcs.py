"""A Google Cloud Storage bucket as the object store.

Generations are GCS object generations, so `write(..., if_generation=g)` is an `ifGenerationMatch`
precondition checked by GCS itself: two Cloud Function invocations can never both win. Every call keeps
the client's default retry policy; a precondition makes retrying a write safe. One consequence: when a
write's first attempt landed but its response was lost, the retry reports PreconditionFailed, and the
caller re-reads a record that already holds its change.

Reads take the generation from the same response as the data (the `x-goog-generation` header); if the
client has to resume a broken download it pins that generation, so bytes and generation always belong
to the same version.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from functools import cached_property
from typing import BinaryIO, cast

import google.cloud.storage as storage
from google.api_core import exceptions as gexc

from shared.store.port import Generation, NotFound, PreconditionFailed, gs_uri, key_in_bucket

# Resumable uploads and streamed reads move this much per request: bounded memory in a small
# Cloud Function instead of the client's 100 MiB (upload) and 40 MiB (read) defaults.
CHUNK_SIZE = 8 * 1024 * 1024
_DEFAULT_CONTENT_TYPE = "application/octet-stream"


def _checked(key: str) -> str:
    """Refuses names that the local folder store would read as another object (or as no object)."""
    if "\\" in key or any(part in ("", ".", "..") for part in key.split("/")):
        raise ValueError(f"invalid object key {key!r}")
    return key


class GcsStore:
    def __init__(self, bucket: str, *, client: storage.Client | None = None, project: str | None = None) -> None:
        self.bucket = bucket
        self._given_client = client
        self._project = project

    @cached_property
    def _client(self) -> storage.Client:
        """Made on first use: building the store looks up no credentials (a function boots without them)."""
        return self._given_client if self._given_client is not None else storage.Client(project=self._project)

    @cached_property
    def _bucket(self) -> storage.Bucket:
        return self._client.bucket(self.bucket)

    def _blob(self, key: str, generation: int | None = None) -> storage.Blob:
        return self._bucket.blob(_checked(key), generation=generation)

    def uri(self, key: str) -> str:
        return gs_uri(self.bucket, key)

    def key_from_uri(self, uri: str) -> str:
        return key_in_bucket(self.bucket, uri)

    def read(self, key: str) -> bytes:
        return self.read_versioned(key)[0]

    def read_versioned(self, key: str) -> tuple[bytes, Generation]:
        blob = self._blob(key)
        try:
            data = blob.download_as_bytes()
        except gexc.NotFound:
            raise NotFound(key) from None
        if blob.generation is None:
            raise RuntimeError(f"{self.uri(key)}: the download response carried no x-goog-generation header")
        return data, blob.generation

    def write(
        self,
        key: str,
        data: bytes,
        *,
        content_type: str | None = None,
        if_generation: Generation | None = None,
    ) -> Generation:
        blob = self._blob(key)
        try:
            blob.upload_from_string(
                data,
                content_type=content_type or _DEFAULT_CONTENT_TYPE,
                if_generation_match=None if if_generation is None else int(if_generation),
            )
        except gexc.PreconditionFailed:
            raise PreconditionFailed(f"{key}: expected generation {if_generation!r}, the object has changed") from None
        return cast(int, blob.generation)

    def upload_file(self, key: str, path: str, *, content_type: str | None = None) -> None:
        blob = self._blob(key)
        blob.chunk_size = CHUNK_SIZE  # files over 8 MiB go resumable, one chunk in memory at a time
        blob.upload_from_filename(path, content_type=content_type or _DEFAULT_CONTENT_TYPE)

    def open_read(self, key: str, *, read_ahead: int | None = None) -> BinaryIO:
        """Streams the version that exists now: a later overwrite makes the stream fail, never mix versions."""
        meta = self._bucket.get_blob(_checked(key))
        if meta is None:
            raise NotFound(key)
        # A fresh handle without the media link, so every chunk request names the generation.
        blob = self._blob(key, generation=meta.generation)
        return cast(BinaryIO, blob.open("rb", chunk_size=read_ahead or CHUNK_SIZE))

    def size(self, key: str) -> int | None:
        blob = self._bucket.get_blob(_checked(key))
        return None if blob is None else blob.size

    def exists(self, key: str) -> bool:
        return self._blob(key).exists()

    def list(self, prefix: str) -> Iterator[str]:
        """Pages through the listing as it is consumed, so a million keys never sit in memory."""
        for blob in self._client.list_blobs(self._bucket, prefix=prefix or None, fields="items(name),nextPageToken"):
            yield blob.name

    def delete(self, key: str) -> None:
        with contextlib.suppress(gexc.NotFound):
            self._blob(key).delete()
