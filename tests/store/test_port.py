"""The object store contract, checked the same way on the local folder and on a GCS emulator.

The chain runs on either store without knowing which; any difference between them would show up as a
local run that passes and a cloud run that does not.
"""

from __future__ import annotations

import hashlib
import os
import re
from pathlib import Path

import pytest

from shared.store.port import NO_OBJECT, NotFound, ObjectStore, PreconditionFailed

BINARY = bytes(range(256)) * 4 + b"\x00\xff not utf-8: \xc3\x28"


def test_written_bytes_read_back_exactly(store: ObjectStore) -> None:
    generation = store.write("runs/r1/blob.bin", BINARY, content_type="application/octet-stream")

    assert store.read("runs/r1/blob.bin") == BINARY
    assert store.read_versioned("runs/r1/blob.bin") == (BINARY, generation)


def test_overwrite_replaces_the_whole_object(store: ObjectStore) -> None:
    store.write("a.json", b'{"long": "' + b"x" * 5000 + b'"}')
    store.write("a.json", b"{}")

    assert store.read("a.json") == b"{}"
    assert store.size("a.json") == 2


def test_a_missing_object_is_not_found_everywhere(store: ObjectStore) -> None:
    with pytest.raises(NotFound):
        store.read("runs/nope/run.json")
    with pytest.raises(NotFound):
        store.read_versioned("runs/nope/run.json")
    with pytest.raises(NotFound):
        store.open_read("runs/nope/run.json")
    assert store.size("runs/nope/run.json") is None
    assert not store.exists("runs/nope/run.json")
    store.delete("runs/nope/run.json")  # no error


def test_not_found_is_a_key_error_naming_the_key(store: ObjectStore) -> None:
    with pytest.raises(KeyError, match=re.escape("runs/nope/run.json")):
        store.read("runs/nope/run.json")


def test_a_folder_like_prefix_is_not_an_object(store: ObjectStore) -> None:
    store.write("runs/r1/run.json", b"{}")

    assert not store.exists("runs/r1")
    assert store.size("runs/r1") is None
    with pytest.raises(NotFound):
        store.read("runs/r1")


def test_a_key_below_an_object_is_not_an_object(store: ObjectStore) -> None:
    store.write("runs/r1", b"a file where a folder might be")

    assert not store.exists("runs/r1/run.json")
    assert store.size("runs/r1/run.json") is None
    with pytest.raises(NotFound):
        store.read("runs/r1/run.json")
    with pytest.raises(NotFound):
        store.open_read("runs/r1/run.json")


def test_size_exists_and_delete(store: ObjectStore) -> None:
    store.write("images/1.jpg", b"j" * 1234, content_type="image/jpeg")
    assert store.exists("images/1.jpg")
    assert store.size("images/1.jpg") == 1234

    store.delete("images/1.jpg")

    assert not store.exists("images/1.jpg")
    assert store.size("images/1.jpg") is None
    with pytest.raises(NotFound):
        store.read("images/1.jpg")
    store.delete("images/1.jpg")  # deleting twice is fine


def test_list_gives_the_keys_under_a_prefix_in_lexical_order(store: ObjectStore) -> None:
    keys = ["runs/b/run.json", "runs/a/run.json", "runs/a/etl/train.jsonl", "runsx/other", "images/1.jpg"]
    for key in keys:
        store.write(key, b"x")
    # Conditional writes leave the local store's lock files behind; they must never show up as keys.
    store.write("runs/c/run.json", b"{}", if_generation=NO_OBJECT)
    with pytest.raises(PreconditionFailed):
        store.write("runs/c/run.json", b"{}", if_generation=NO_OBJECT)

    assert list(store.list("runs/")) == [
        "runs/a/etl/train.jsonl",
        "runs/a/run.json",
        "runs/b/run.json",
        "runs/c/run.json",
    ]
    assert list(store.list("runs/a/")) == ["runs/a/etl/train.jsonl", "runs/a/run.json"]
    assert list(store.list("runs")) == [*list(store.list("runs/")), "runsx/other"]
    assert list(store.list("runs/a/run")) == ["runs/a/run.json"]
    assert list(store.list("")) == sorted([*keys, "runs/c/run.json"])
    assert list(store.list("nothing/")) == []


def test_a_big_file_uploads_streamed_and_reads_back_streamed(store: ObjectStore, tmp_path: Path) -> None:
    # Over 8 MiB: GCS takes it as a multi-chunk resumable upload instead of a single request.
    source = tmp_path / "model.tflite"
    content = os.urandom(9 * 1024 * 1024 + 123)
    source.write_bytes(content)

    store.upload_file("runs/r1/model/model.tflite", str(source), content_type="application/octet-stream")

    assert store.size("runs/r1/model/model.tflite") == len(content)
    digest = hashlib.sha256()
    with store.open_read("runs/r1/model/model.tflite") as stream:
        while chunk := stream.read(1024 * 1024):
            digest.update(chunk)
    assert digest.hexdigest() == hashlib.sha256(content).hexdigest()


def test_a_small_file_uploads_too(store: ObjectStore, tmp_path: Path) -> None:
    source = tmp_path / "labels.txt"
    source.write_bytes(b"cat\ndog\n")

    store.upload_file("runs/r1/labels.txt", str(source))

    assert store.read("runs/r1/labels.txt") == b"cat\ndog\n"


def test_uri_and_key_from_uri_round_trip(store: ObjectStore) -> None:
    uri = store.uri("runs/r1/etl/import.jsonl")

    assert uri == f"gs://{store.bucket}/runs/r1/etl/import.jsonl"
    assert store.key_from_uri(uri) == "runs/r1/etl/import.jsonl"


@pytest.mark.parametrize("uri", ["gs://another-bucket/runs/r1/run.json", "s3://x/y", "/tmp/y", "gs://"])
def test_key_from_uri_refuses_other_buckets_and_schemes(store: ObjectStore, uri: str) -> None:
    with pytest.raises(ValueError):
        store.key_from_uri(uri)


def test_key_from_uri_refuses_a_bucket_without_an_object(store: ObjectStore) -> None:
    with pytest.raises(ValueError):
        store.key_from_uri(f"gs://{store.bucket}")


@pytest.mark.parametrize("key", ["", "/etc/passwd", "../outside", "a\\b"])
def test_keys_that_escape_or_are_ambiguous_are_refused(store: ObjectStore, key: str) -> None:
    with pytest.raises(ValueError):
        store.write(key, b"x")


# -- conditional writes: what the run record's concurrency stands on ---------------------------------


def test_create_if_absent_wins_once_and_then_loses(store: ObjectStore) -> None:
    store.write("runs/r1/run.json", b"first", if_generation=NO_OBJECT)

    with pytest.raises(PreconditionFailed):
        store.write("runs/r1/run.json", b"second", if_generation=NO_OBJECT)

    assert store.read("runs/r1/run.json") == b"first"


def test_a_write_with_a_stale_generation_loses(store: ObjectStore) -> None:
    first = store.write("runs/r1/run.json", b"v1")
    store.write("runs/r1/run.json", b"v2", if_generation=first)

    with pytest.raises(PreconditionFailed):
        store.write("runs/r1/run.json", b"v3 from a stale read", if_generation=first)

    assert store.read("runs/r1/run.json") == b"v2"


def test_a_write_with_the_current_generation_wins_and_returns_the_new_one(store: ObjectStore) -> None:
    store.write("runs/r1/run.json", b"v1")
    _, current = store.read_versioned("runs/r1/run.json")

    new = store.write("runs/r1/run.json", b"v2", if_generation=current)

    assert new != current
    assert store.read_versioned("runs/r1/run.json") == (b"v2", new)
    with pytest.raises(PreconditionFailed):
        store.write("runs/r1/run.json", b"v3", if_generation=current)


def test_a_conditional_write_to_a_deleted_object_loses(store: ObjectStore) -> None:
    generation = store.write("runs/r1/run.json", b"v1")
    store.delete("runs/r1/run.json")

    with pytest.raises(PreconditionFailed):
        store.write("runs/r1/run.json", b"v2", if_generation=generation)

    assert not store.exists("runs/r1/run.json")


def test_create_if_absent_succeeds_again_after_a_delete(store: ObjectStore) -> None:
    store.write("locks/etl", b"a", if_generation=NO_OBJECT)
    store.delete("locks/etl")

    store.write("locks/etl", b"b", if_generation=NO_OBJECT)

    assert store.read("locks/etl") == b"b"
