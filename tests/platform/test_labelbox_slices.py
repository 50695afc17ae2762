"""Rows of a Catalog slice added to the model run, through the real labelbox SDK 7.17 against the fake
Labelbox with a Catalog (`fake_catalog.py`): the exact operations, batches, polling and failures."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import pytest

from shared.platform.labelbox_adapter import LabelboxPlatform
from shared.platform.port import ModelRunNotFound, PlatformError, SliceNotFound
from tests.platform.fake_catalog import FakeCatalog, running_fake_catalog
from tests.platform.test_labelbox_adapter import MODEL_ID, MODEL_RUN_ID, ROWS, make_rows, platform_for, run_of

SLICE = "clslice0000000000000000001"
CATALOG = [{"data_row": r["data_row"], "media_attributes": r["media_attributes"]} for r in make_rows(12)[7:]]
SLICE_IDS = [r["data_row"]["id"] for r in CATALOG]  # 5 rows, none of them in the model run yet
IN_RUN = ROWS[1]["data_row"]["id"]  # a row already in the model run, labeled


@pytest.fixture
def fake(request: pytest.FixtureRequest) -> Iterator[FakeCatalog]:
    behaviour: dict[str, Any] = {"max_page_size": 2, **getattr(request, "param", {})}
    catalog = [*CATALOG, {"data_row": ROWS[1]["data_row"], "media_attributes": ROWS[1]["media_attributes"]}]
    slices = {SLICE: [*SLICE_IDS, IN_RUN], "clemptyslice00000000000001": []}
    with running_fake_catalog(
        ROWS, model_run_id=MODEL_RUN_ID, model_id=MODEL_ID, catalog=catalog, slices=slices, **behaviour
    ) as running:
        yield running


def test_the_slices_rows_are_listed_page_by_page_and_added_in_one_registration(fake: FakeCatalog) -> None:
    platform = platform_for(fake)
    seen: list[int] = []

    added = platform.add_rows_from_slice(MODEL_RUN_ID, SLICE, progress=seen.append)

    assert added == 6 and seen == [6]
    assert fake.operation_names() == [
        "GetModelRunPyApi",
        "getSavedQueryPyApi",
        *["getDataRowIdenfifiersBySavedQueryPyApi"] * 3,  # 6 ids in pages of 2 (the fake's cap; the SDK asks 100)
        "createMEAModelRunDataRowRegistrationTaskPyApi",
        "MEADataRowRegistrationTaskStatusPyApi",
    ]
    assert all(op.path == "/graphql" for op in fake.operations)
    assert fake.named("getSavedQueryPyApi")[0].variables == {"id": SLICE}
    pages = fake.named("getDataRowIdenfifiersBySavedQueryPyApi")
    assert [op.variables for op in pages] == [
        {"id": SLICE, "from": None, "first": 100},
        {"id": SLICE, "from": "2", "first": 100},
        {"id": SLICE, "from": "4", "first": 100},
    ]
    (upsert,) = fake.named("createMEAModelRunDataRowRegistrationTaskPyApi")
    assert upsert.variables == {"modelRunId": MODEL_RUN_ID, "dataRowIds": [*SLICE_IDS, IN_RUN], "globalKeys": None}
    (poll,) = fake.named("MEADataRowRegistrationTaskStatusPyApi")
    assert poll.variables == {"where": {"id": fake.registrations[0].task_id}}


def test_the_added_rows_come_with_the_next_export_unlabeled_and_the_labeled_row_stays_labeled(
    fake: FakeCatalog,
) -> None:
    platform = platform_for(fake)
    platform.add_rows_from_slice(MODEL_RUN_ID, SLICE)

    exported = {r["data_row"]["id"]: r for r in platform.export_rows(MODEL_RUN_ID)}

    assert len(exported) == len(ROWS) + len(SLICE_IDS)
    assert all(run_of(exported[i])["labels"] == [] and "split" not in run_of(exported[i]) for i in SLICE_IDS)
    assert run_of(exported[IN_RUN])["labels"] == run_of(ROWS[1])["labels"]
    assert exported[SLICE_IDS[0]]["data_row"]["row_data"] == CATALOG[0]["data_row"]["row_data"]


def test_a_large_slice_is_added_in_batches_with_progress_between_them(fake: FakeCatalog) -> None:
    platform = platform_for(fake)
    platform.slice_batch_rows = 4
    seen: list[int] = []

    assert platform.add_rows_from_slice(MODEL_RUN_ID, SLICE, progress=seen.append) == 6

    upserts = fake.named("createMEAModelRunDataRowRegistrationTaskPyApi")
    assert [op.variables["dataRowIds"] for op in upserts] == [SLICE_IDS[:4], [SLICE_IDS[4], IN_RUN]]
    assert seen == [4, 6]
    assert [t.statuses for t in fake.registrations] == [["COMPLETE"], ["COMPLETE"]]


def test_a_slice_that_does_not_exist_is_slice_not_found_and_nothing_is_added(fake: FakeCatalog) -> None:
    platform = platform_for(fake)
    with pytest.raises(SliceNotFound, match="Labelbox has no Catalog slice clnosuchslice visible to this API key"):
        platform.add_rows_from_slice(MODEL_RUN_ID, "clnosuchslice")
    assert fake.operation_names() == ["GetModelRunPyApi", "getSavedQueryPyApi"]

    fake._get_saved_query = lambda op: {"getSavedQuery": None}  # type: ignore[method-assign]  # a null answer
    with pytest.raises(SliceNotFound, match="no Catalog slice"):
        platform.add_rows_from_slice(MODEL_RUN_ID, SLICE)
    assert fake.named("createMEAModelRunDataRowRegistrationTaskPyApi") == []


def test_an_unknown_model_run_is_model_run_not_found_before_the_slice_is_looked_up(fake: FakeCatalog) -> None:
    with pytest.raises(ModelRunNotFound):
        platform_for(fake).add_rows_from_slice("00000000-dead", SLICE)
    assert fake.operation_names() == ["GetModelRunPyApi"]


def test_an_empty_slice_adds_nothing_and_sends_no_registration(fake: FakeCatalog) -> None:
    assert platform_for(fake).add_rows_from_slice(MODEL_RUN_ID, "clemptyslice00000000000001") == 0
    assert fake.named("createMEAModelRunDataRowRegistrationTaskPyApi") == []


@pytest.mark.parametrize("fake", [{"upsert_failure": "Data rows are not in your organization"}], indirect=True)
def test_a_failed_registration_is_a_platform_error_without_the_key(fake: FakeCatalog) -> None:
    with pytest.raises(PlatformError) as raised:
        platform_for(fake).add_rows_from_slice(MODEL_RUN_ID, SLICE)
    text = str(raised.value)
    assert not isinstance(raised.value, SliceNotFound)
    assert f"adding 6 data rows of Catalog slice {SLICE} to model run {MODEL_RUN_ID} failed" in text
    assert "Job failed" in text and fake.api_key not in text  # the SDK drops Labelbox's errorMessage
    assert len(fake.rows) == len(ROWS)


@pytest.mark.parametrize("fake", [{"upsert_running_polls": 1}], indirect=True)
def test_the_sdk_looks_at_the_registration_every_five_seconds_until_it_completes(fake: FakeCatalog) -> None:
    started = time.monotonic()
    assert platform_for(fake).add_rows_from_slice(MODEL_RUN_ID, SLICE) == 6
    assert time.monotonic() - started >= 4.5
    assert fake.registrations[0].statuses == ["IN_PROGRESS", "COMPLETE"]


@pytest.mark.parametrize("fake", [{"upsert_running_polls": 100}], indirect=True)
def test_a_registration_still_running_at_the_timeout_is_a_platform_error(fake: FakeCatalog) -> None:
    platform: LabelboxPlatform = platform_for(fake)
    platform.slice_upsert_timeout_s = 1  # under one look (5 s): gives up after the first
    with pytest.raises(PlatformError, match="TimeoutError: Unable to complete import within 1 seconds"):
        platform.add_rows_from_slice(MODEL_RUN_ID, SLICE)
    assert fake.registrations[0].statuses == ["IN_PROGRESS"]
