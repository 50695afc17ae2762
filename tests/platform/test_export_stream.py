"""The bounded-memory export reader on the fake Labelbox: files cut anywhere, expired URLs, bad files, big ones."""

from __future__ import annotations

import copy
import json
import tempfile
import time
import tracemalloc
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from shared.platform import export_stream
from shared.platform.labelbox_adapter import LabelboxPlatform
from shared.platform.port import PlatformError
from shared.secret import Secret
from tests.platform.fake_labelbox import FakeLabelbox, running_fake_labelbox
from tests.platform.test_labelbox_adapter import MODEL_ID, MODEL_RUN_ID, make_rows

# two-, three- and four-byte characters, so cuts land inside them
TEXT = "Größe · 東京の通り · 🚗🚕 · "


def unicode_rows(count: int = 12) -> list[dict[str, Any]]:
    rows = copy.deepcopy(make_rows(count))
    for index, row in enumerate(rows):
        row["data_row"]["global_key"] = f"straße-{index}-東京-🚗.jpg"
        row["note"] = TEXT * (1 + index % 5)
    return rows


ROWS = unicode_rows()


@pytest.fixture
def fake(request: pytest.FixtureRequest) -> Iterator[FakeLabelbox]:
    behaviour = getattr(request, "param", {})
    with running_fake_labelbox(ROWS, model_run_id=MODEL_RUN_ID, model_id=MODEL_ID, **behaviour) as running:
        yield running


def platform_for(fake: FakeLabelbox, **options: Any) -> LabelboxPlatform:
    return LabelboxPlatform(Secret(fake.api_key), endpoint=fake.endpoint, rest_endpoint=fake.rest_endpoint, **options)


def expected(fake: FakeLabelbox) -> list[dict[str, Any]]:
    """The rows as the fake serialized them (export params applied), parsed straight from its bytes."""
    return [json.loads(line) for line in fake.exports[-1].result.decode("utf-8").splitlines()]


def sdk_rows(fake: FakeLabelbox, task_id: str) -> list[dict[str, Any]]:
    from labelbox import Client, ExportTask

    client = Client(api_key=fake.api_key, endpoint=fake.endpoint, rest_endpoint=fake.rest_endpoint)
    return [out.json for out in ExportTask.get_task(client, task_id).get_buffered_stream()]


def boundaries(fake: FakeLabelbox) -> tuple[int, int]:
    """How many file boundaries fall mid-line, and how many inside a multi-byte character."""
    chunks = fake.exports[-1].chunks
    mid_line = sum(1 for c in chunks[:-1] if not c.endswith(b"\n"))
    mid_char = sum(1 for c in chunks[1:] if c[0] & 0xC0 == 0x80)
    return mid_line, mid_char


CUTS = (997, 1, 2, 3, 331, 64, 1500)


@pytest.mark.parametrize("fake", [{"export_file_bytes": CUTS, "export_split_chars": False}], indirect=True)
@pytest.mark.parametrize("block_bytes", [7, export_stream.BLOCK_BYTES])
def test_rows_are_identical_to_the_sdks_buffered_stream(fake: FakeLabelbox, block_bytes: int) -> None:
    platform = platform_for(fake, export_block_bytes=block_bytes)
    task_id = platform.start_export(MODEL_RUN_ID)
    before = len(fake.operations)

    rows = list(platform.read_export(MODEL_RUN_ID, task_id))
    middle = len(fake.operations)
    theirs = sdk_rows(fake, task_id)

    mid_line, _ = boundaries(fake)
    assert len(fake.exports[-1].chunks) > 10 and mid_line > 5  # the fixture really cuts lines
    assert rows == theirs == expected(fake)
    assert rows[3]["note"] == TEXT * 4 and rows[3]["data_row"]["global_key"] == "straße-3-東京-🚗.jpg"

    def export_queries(ops: list[Any]) -> list[tuple[str, str, dict[str, Any]]]:
        return [(op.name, op.query, op.variables) for op in ops if op.name.startswith("GetExport")]

    ours = export_queries(fake.operations[before:middle])
    assert ours == export_queries(fake.operations[middle:])  # the SDK's queries, character for character
    offsets = [variables["offset"] for name, _, variables in ours if name == "GetExportFileFromOffsetPyApi"]
    assert offsets == [str(sum(len(c) for c in fake.exports[-1].chunks[:i])) for i in range(len(offsets))]


@pytest.mark.parametrize("fake", [{"export_file_bytes": CUTS}], indirect=True)
def test_a_character_cut_between_two_files_arrives_whole(fake: FakeLabelbox) -> None:
    rows = list(platform_for(fake).export_rows(MODEL_RUN_ID))  # the SDK decoded each file alone: U+FFFD

    _, mid_char = boundaries(fake)
    assert mid_char > 0
    assert rows == expected(fake)
    assert all("\ufffd" not in json.dumps(r, ensure_ascii=False) for r in rows)


def big_export(target_bytes: int) -> tuple[bytes, int]:
    """A big RESULT stream, cheaply: one ~1.2 KB row (multi-byte text included) repeated."""
    line = json.dumps(ROWS[2], separators=(",", ":"), ensure_ascii=False).encode() + b"\n"
    count = target_bytes // len(line)
    return line * count, count


@pytest.mark.slow
def test_memory_stays_bounded_and_nothing_is_written_to_the_temp_dir(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    stream, count = big_export(64 << 20)
    temp = tmp_path / "tmp"
    temp.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(temp))
    odd_files = (4 << 20) + 12_345  # files end mid-line and mid-character
    with running_fake_labelbox(
        [], model_run_id=MODEL_RUN_ID, model_id=MODEL_ID, export_result=stream, export_file_bytes=odd_files
    ) as fake:
        platform = platform_for(fake)
        task_id = platform.start_export(MODEL_RUN_ID)
        rows = platform.read_export(MODEL_RUN_ID, task_id)
        seen = notes = 0
        started = time.perf_counter()
        tracemalloc.start()
        try:
            for row in rows:
                seen += 1
                notes += row["note"] == ROWS[2]["note"]
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
        elapsed = time.perf_counter() - started

    assert seen == notes == count
    assert len(fake.exports[-1].chunks) >= 15
    assert peak < 4 << 20, f"peak {peak / 2**20:.1f} MiB while streaming {len(stream) / 2**20:.0f} MiB"
    assert list(temp.iterdir()) == []
    assert elapsed < 30


@pytest.mark.parametrize("fake", [{"export_chunk_rows": 3, "export_expire_urls_once": True}], indirect=True)
def test_an_expired_url_is_asked_for_again(fake: FakeLabelbox) -> None:
    rows = list(platform_for(fake).export_rows(MODEL_RUN_ID))

    assert rows == expected(fake)
    offsets = [op.variables["offset"] for op in fake.named("GetExportFileFromOffsetPyApi")]
    assert len(offsets) == 8 and offsets[0::2] == offsets[1::2]  # 4 files, each asked for twice
    result_gets = [d for d in fake.downloads if "/result-" in d]
    assert len(result_gets) == 8 and len(set(result_gets)) == 8  # every retry got a freshly signed URL


@pytest.mark.parametrize("fake", [{"export_chunk_rows": 5, "export_break_once_after": 1234}], indirect=True)
def test_a_download_that_breaks_off_resumes_where_it_stopped(fake: FakeLabelbox) -> None:
    rows = list(platform_for(fake, export_block_bytes=100).export_rows(MODEL_RUN_ID))

    assert rows == expected(fake)
    offsets = [op.variables["offset"] for op in fake.named("GetExportFileFromOffsetPyApi")]
    assert len(offsets) == 6 and offsets[0::2] == offsets[1::2]


@pytest.mark.parametrize("fake", [{"export_chunk_rows": 4, "export_short_file": 1}], indirect=True)
def test_a_file_shorter_than_its_offsets_is_refused(fake: FakeLabelbox) -> None:
    rows = platform_for(fake).export_rows(MODEL_RUN_ID)
    got: list[dict[str, Any]] = []
    with pytest.raises(PlatformError, match=r"holds \d+ bytes, but Labelbox gave its offsets as \d+-\d+") as raised:
        got.extend(rows)

    assert got == expected(fake)[:7]  # whole lines go on as they arrive; the short file's cut line never does
    message = str(raised.value)
    assert "/files/export/" in message and "fake-signature" not in message and "?" not in message


@pytest.mark.parametrize("block_bytes", [16, export_stream.BLOCK_BYTES])
def test_an_over_long_line_fails_naming_the_cap(fake: FakeLabelbox, block_bytes: int) -> None:
    platform = platform_for(fake, export_max_line_bytes=1000, export_block_bytes=block_bytes)
    with pytest.raises(PlatformError, match=r"line 1 of .* longer than the line cap of 1000 bytes"):
        list(platform.export_rows(MODEL_RUN_ID))


def test_the_stream_reader_alone_reads_both_streams(fake: FakeLabelbox) -> None:
    fake.export_errors = [{"message": "data row cdatarow3 could not be read · 東京"}]
    platform = platform_for(fake)
    task_id = platform.start_export(MODEL_RUN_ID)
    client = platform._client

    assert list(export_stream.read_stream(client, task_id)) == expected(fake)
    assert list(export_stream.read_stream(client, task_id, export_stream.ERRORS)) == fake.export_errors
    header = export_stream.stream_header(client, task_id)
    assert header == export_stream.StreamHeader(len(fake.exports[-1].result), len(ROWS))


def test_a_refused_connection_hides_the_signed_query(fake: FakeLabelbox) -> None:
    platform = platform_for(fake)
    task_id = platform.start_export(MODEL_RUN_ID)

    class Unreachable(requests.Session):
        """Sends file GETs to a closed port, so requests' own message carries the signed path and query."""

        def get(self, url: str | bytes, **kwargs: Any) -> requests.Response:  # type: ignore[override]
            return super().get(str(url).replace(fake.base_url, "http://127.0.0.1:9"), **kwargs)

    with Unreachable() as session, pytest.raises(PlatformError) as raised:
        list(export_stream.read_stream(platform._client, task_id, session=session))

    message = str(raised.value)
    assert "ConnectionError" in message and "broke off after 0 of" in message and "4 times" in message
    assert "fake-signature" not in message and "X-Goog" not in message
    assert f"{fake.base_url}/files/export/" in message and "port=9" in message


def test_an_abandoned_stream_closes_its_download(fake: FakeLabelbox) -> None:
    fake.export_file_bytes = 5000
    platform = platform_for(fake, export_block_bytes=256)
    task_id = platform.start_export(MODEL_RUN_ID)
    rows = platform.read_export(MODEL_RUN_ID, task_id)

    assert next(rows) == expected(fake)[0]
    rows.close()  # type: ignore[attr-defined]
    assert len(fake.named("GetExportFileFromOffsetPyApi")) == 1
