"""What only the GCS adapter can get wrong: generations, metadata and streams as GCS sees them."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest
from google.api_core import exceptions as gexc

from shared.store.gcs import CHUNK_SIZE, GcsStore
from shared.store.port import NO_OBJECT, PreconditionFailed
from tests.store.gcs_emulator import GcsEmulator


@pytest.fixture
def gcs(gcs_emulator: GcsEmulator) -> GcsStore:
    return GcsStore(gcs_emulator.make_bucket(), client=gcs_emulator.client())


def test_generations_are_the_ones_gcs_reports(gcs: GcsStore, gcs_emulator: GcsEmulator) -> None:
    written = gcs.write("runs/r1/run.json", b"{}", content_type="application/json")

    blob = gcs_emulator.client().bucket(gcs.bucket).get_blob("runs/r1/run.json")

    assert isinstance(written, int)
    assert blob.generation == written
    assert blob.content_type == "application/json"
    assert gcs.read_versioned("runs/r1/run.json") == (b"{}", written)


def test_a_read_after_another_writer_pairs_the_new_bytes_with_the_new_generation(
    gcs: GcsStore, gcs_emulator: GcsEmulator
) -> None:
    gcs.write("runs/r1/run.json", b"v1")
    other = gcs_emulator.client().bucket(gcs.bucket).blob("runs/r1/run.json")
    other.upload_from_string(b"v2 from another invocation")

    data, generation = gcs.read_versioned("runs/r1/run.json")

    assert (data, generation) == (b"v2 from another invocation", other.generation)
    gcs.write("runs/r1/run.json", b"v3", if_generation=generation)


def test_a_string_generation_is_accepted(gcs: GcsStore) -> None:
    """Generations may travel through JSON or a URL as text."""
    generation = gcs.write("runs/r1/run.json", b"v1")

    gcs.write("runs/r1/run.json", b"v2", if_generation=str(generation))
    with pytest.raises(PreconditionFailed):
        gcs.write("runs/r1/run.json", b"v3", if_generation=str(generation))


def test_a_lost_conditional_write_says_which_object_and_hides_the_http_error(gcs: GcsStore) -> None:
    gcs.write("runs/r1/run.json", b"v1")

    with pytest.raises(PreconditionFailed, match=re.escape("runs/r1/run.json")) as caught:
        gcs.write("runs/r1/run.json", b"v2", if_generation=NO_OBJECT)

    assert not isinstance(caught.value, gexc.GoogleAPICallError)


def test_an_uploaded_file_keeps_its_content_type(gcs: GcsStore, gcs_emulator: GcsEmulator, tmp_path: Path) -> None:
    source = tmp_path / "import.jsonl"
    source.write_bytes(b'{"imageGcsUri": "gs://b/1.jpg"}\n')

    gcs.upload_file("runs/r1/etl/import.jsonl", str(source), content_type="application/jsonl")

    blob = gcs_emulator.client().bucket(gcs.bucket).get_blob("runs/r1/etl/import.jsonl")
    assert blob.content_type == "application/jsonl"
    assert blob.size == source.stat().st_size


def test_a_stream_never_mixes_two_versions_of_an_object(gcs: GcsStore) -> None:
    """The stream is pinned to the version that existed when it was opened."""
    old = b"A" * (CHUNK_SIZE + 1024)
    gcs.write("runs/r1/big.bin", old)
    stream = gcs.open_read("runs/r1/big.bin")
    head = stream.read(1)  # fetches the first chunk only
    gcs.write("runs/r1/big.bin", b"B" * (CHUNK_SIZE + 1024))

    try:
        rest = stream.read()
    except gexc.NotFound:  # the old version is gone: failing is right, mixing would not be
        return
    finally:
        stream.close()
    assert head + rest == old


def test_without_a_client_it_reaches_the_emulator_named_by_the_environment(
    gcs_emulator: GcsEmulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    bucket = gcs_emulator.make_bucket()
    for name, value in gcs_emulator.env.items():
        monkeypatch.setenv(name, value)

    store = GcsStore(bucket, project="test-project")
    store.write("hello.txt", b"hi")

    assert GcsStore(bucket, client=gcs_emulator.client()).read("hello.txt") == b"hi"


def test_random_bytes_survive_a_resumable_upload(gcs: GcsStore, tmp_path: Path) -> None:
    content = os.urandom(2 * CHUNK_SIZE + 7)  # three chunks
    source = tmp_path / "weights.bin"
    source.write_bytes(content)

    gcs.upload_file("runs/r1/weights.bin", str(source))

    assert gcs.read("runs/r1/weights.bin") == content
