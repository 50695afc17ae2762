"""A Catalog slice on the local platform: a file of data rows next to the model runs, whose rows the
export lacks are appended to it unlabeled and without a split."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from shared.platform.local_model_run import LocalModelRuns
from shared.platform.port import ModelRunNotFound, PlatformError, SliceNotFound
from tests.demo_run import DemoRun
from tests.demo_slice import write_demo_slice

SLICE = "clslice0000000000000000001"


def run_of(row: dict, demo: DemoRun) -> dict:
    return row["experiments"][demo.model_id]["runs"][demo.model_run_id]


def test_the_slices_rows_join_the_export_unlabeled_once_with_their_media(demo: DemoRun) -> None:
    platform = LocalModelRuns(demo.root)
    ids = write_demo_slice(demo.root.parent / "slices", SLICE, images=3)
    before = demo.rows()
    seen: list[int] = []

    assert platform.add_rows_from_slice(demo.model_run_id, SLICE, progress=seen.append) == 3
    assert platform.add_rows_from_slice(demo.model_run_id, SLICE) == 3  # again: nothing more appended

    rows = list(platform.export_rows(demo.model_run_id))
    assert rows[: len(before)] == before and [r["data_row"]["id"] for r in rows[len(before) :]] == ids
    assert seen == [3]
    for row in rows[len(before) :]:
        run = run_of(row, demo)
        assert run["labels"] == [] and "split" not in run
        assert row["data_row"]["row_data"].startswith("file://")
        assert b"".join(platform.open_media(row["data_row"]["row_data"], model_run_id=demo.model_run_id))[:2] == (
            b"\xff\xd8"
        )
        assert row["media_attributes"]["mime_type"] == "image/jpeg"


def test_a_row_already_in_the_run_keeps_its_labels(demo: DemoRun) -> None:
    slices = demo.root.parent / "slices"
    slices.mkdir()
    first = demo.rows()[0]
    (slices / f"{SLICE}.ndjson").write_text(json.dumps({"data_row": first["data_row"]}) + "\n")
    assert LocalModelRuns(demo.root).add_rows_from_slice(demo.model_run_id, SLICE) == 1
    assert demo.rows()[0] == first and len(demo.rows()) == 20


def test_an_export_without_a_final_newline_is_not_joined_to_the_first_added_row(demo: DemoRun) -> None:
    path = demo.folder / "export.ndjson"
    path.write_text(path.read_text().rstrip("\n"))
    write_demo_slice(demo.root.parent / "slices", SLICE, images=1)
    LocalModelRuns(demo.root).add_rows_from_slice(demo.model_run_id, SLICE)
    assert len(demo.rows()) == 21


@pytest.mark.parametrize("slice_id", ["clnosuchslice", "../model_runs/x"])
def test_a_slice_without_its_file_is_slice_not_found_and_nothing_changes(demo: DemoRun, slice_id: str) -> None:
    before = (demo.folder / "export.ndjson").read_text()
    with pytest.raises(SliceNotFound, match=r"no Catalog slice .* does not exist"):
        LocalModelRuns(demo.root).add_rows_from_slice(demo.model_run_id, slice_id)
    assert (demo.folder / "export.ndjson").read_text() == before


def test_a_line_that_is_not_a_data_row_is_named(demo: DemoRun) -> None:
    slices = demo.root.parent / "slices"
    slices.mkdir()
    (slices / f"{SLICE}.ndjson").write_text('{"data_row": {"id": "x", "row_data": "a.jpg"}}\n{"id": "y"}\n')
    with pytest.raises(PlatformError, match=f"slice file {SLICE}.ndjson line 2 is not a data row"):
        LocalModelRuns(demo.root).add_rows_from_slice(demo.model_run_id, SLICE)
    assert len(demo.rows()) == 20


def test_an_unknown_model_run_is_model_run_not_found(tmp_path: Path) -> None:
    (tmp_path / "model_runs").mkdir()
    with pytest.raises(ModelRunNotFound):
        LocalModelRuns(tmp_path / "model_runs").add_rows_from_slice("nope", SLICE)
