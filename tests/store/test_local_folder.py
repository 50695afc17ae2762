"""What only the local folder store can get wrong: its lock and temporary files, and keys as paths."""

from __future__ import annotations

from pathlib import Path

import pytest

from shared.store.local_folder import LocalFolderStore
from shared.store.port import NO_OBJECT


@pytest.fixture
def folder(tmp_path: Path) -> LocalFolderStore:
    return LocalFolderStore(tmp_path / "bucket", bucket="local-bucket")


def test_lock_files_and_a_crashed_writers_temp_file_never_show_as_objects(folder: LocalFolderStore) -> None:
    folder.write("runs/r1/run.json", b"{}", if_generation=NO_OBJECT)
    # What a writer killed between mkstemp and os.replace leaves behind.
    (folder.root / "runs/r1/.run.json.k2j3h4.tmp").write_bytes(b"{half")

    assert (folder.root / "runs/r1/run.json.lock~").exists()
    assert list(folder.list("runs/")) == ["runs/r1/run.json"]
    assert folder.read("runs/r1/run.json") == b"{}"


def test_an_object_whose_name_ends_in_tmp_is_still_listed(folder: LocalFolderStore) -> None:
    folder.write("exports/rows.tmp", b"user data")

    assert list(folder.list("exports/")) == ["exports/rows.tmp"]


def test_the_bucket_is_a_plain_folder_holding_the_objects(folder: LocalFolderStore) -> None:
    folder.write("runs/r1/etl/import.jsonl", b'{"a": 1}\n')

    assert (folder.root / "runs/r1/etl/import.jsonl").read_bytes() == b'{"a": 1}\n'
    assert folder.uri("runs/r1/etl/import.jsonl") == "gs://local-bucket/runs/r1/etl/import.jsonl"


def test_a_key_cannot_reach_outside_the_bucket_folder(folder: LocalFolderStore, tmp_path: Path) -> None:
    (tmp_path / "secret.txt").write_text("outside")

    for key in ("../secret.txt", "runs/../../secret.txt", str(tmp_path / "secret.txt")):
        with pytest.raises(ValueError):
            folder.read(key)
    with pytest.raises(ValueError):
        folder.write("../secret.txt", b"overwritten")
    assert (tmp_path / "secret.txt").read_text() == "outside"


def test_a_failed_upload_leaves_neither_the_object_nor_a_temp_file(folder: LocalFolderStore, tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        folder.upload_file("runs/r1/model.tflite", str(tmp_path / "missing.tflite"))

    assert not folder.exists("runs/r1/model.tflite")
    assert list((folder.root / "runs/r1").iterdir()) == []
