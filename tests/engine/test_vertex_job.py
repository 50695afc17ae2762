"""The Vertex job entry point in process: its store of gs:// URIs, and the errors a caller can fix.

The whole job, trained and predicted from the installed package on the GCS emulator, is
tests/deploy/test_engine_package.py.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from shared.engine import mobilenet, vertex_job
from shared.engine.uri_store import UriStore
from shared.store.local_folder import LocalFolderStore
from shared.store.port import NotFound
from tests.engine.engine_data import BUCKET, TinyData, tiny_data


@pytest.fixture
def data(tmp_path: Path) -> TinyData:
    return tiny_data(tmp_path / "bucket", count=4)


def test_a_wildcard_reads_the_chunks_of_one_folder_in_order_as_one_stream(tmp_path: Path) -> None:
    folder = LocalFolderStore(tmp_path / "b", "b")
    folder.write("etl/import-00001.jsonl", b"three\n")
    folder.write("etl/import-00000.jsonl", b"one\ntwo")  # no final newline: the next chunk must not join it
    folder.write("etl/import-00002.txt", b"not a chunk\n")
    folder.write("etl/import-old/import-x.jsonl", b"below the folder\n")
    store = UriStore({"b": tmp_path / "b"})
    pattern = "gs://b/etl/import-*.jsonl"
    assert store.matching(pattern) == ["gs://b/etl/import-00000.jsonl", "gs://b/etl/import-00001.jsonl"]
    with store.open_read(pattern) as stream:
        assert list(stream) == [b"one\n", b"two\n", b"three\n"]
    assert store.exists(pattern) and not store.exists("gs://b/etl/none-*.jsonl")
    with pytest.raises(NotFound):
        store.open_read("gs://b/etl/none-*.jsonl")


def test_keys_are_the_uris_of_any_bucket(tmp_path: Path) -> None:
    store = UriStore({"one": tmp_path / "one", "two": tmp_path / "two"})
    store.write("gs://one/a/x.bin", b"1")
    store.write(store.key_from_uri("gs://two/a/y.bin"), b"2")
    assert store.read("gs://two/a/y.bin") == b"2" and (tmp_path / "one" / "a" / "x.bin").read_bytes() == b"1"
    assert list(store.list("gs://one/")) == ["gs://one/a/x.bin"]
    with pytest.raises(ValueError, match="not a gs:// URI"):
        store.key_from_uri("/local/path")
    with pytest.raises(NotFound):
        store.read("gs://one/absent")


def _main(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, list[str]]:
    code = vertex_job.main(list(args))
    return code, capsys.readouterr().err.strip().splitlines()


def test_training_without_a_model_dir_says_where_one_comes_from(
    data: TinyData, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv(vertex_job.MODEL_DIR_ENV, raising=False)
    code, err = _main(capsys, "train", "--import-uri", data.detection_import(), "--task", "object_detection")
    assert code == 1 and len(err) == 1 and "--model-dir" in err[0] and "AIP_MODEL_DIR" in err[0]
    monkeypatch.setenv(vertex_job.MODEL_DIR_ENV, "/not/gs")
    code, err = _main(capsys, "train", "--import-uri", data.detection_import(), "--task", "object_detection")
    assert code == 1 and err == ["error: AIP_MODEL_DIR must be a gs://bucket/folder URI, not '/not/gs'"]


def test_a_bad_task_is_one_line_and_exit_code_2(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        vertex_job.main(["train", "--import-uri", "gs://b/i.jsonl", "--task", "detection"])
    assert exited.value.code == 2
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert line.startswith("error: ") and "--task: invalid choice: 'detection'" in line


def test_the_pretrained_backbone_without_its_weights_fails_before_training(
    data: TinyData, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    def missing() -> Path:
        raise ValueError("not installed")

    monkeypatch.setattr(mobilenet, "weights_file", missing)
    code, err = _main(
        capsys,
        *("train", "--import-uri", data.detection_import(), "--task", "object_detection", "--device", "cpu"),
        *("--backbone", "mobilenet_v2", "--model-dir", f"gs://{BUCKET}/job/model", "--bucket-folder"),
        f"{BUCKET}={data.bucket_dir}",
    )
    assert code == 1 and len(err) == 1 and "--with-mobilenet-weights" in err[0] and "--backbone scratch" in err[0]
    assert not list(data.store.list("job/"))
