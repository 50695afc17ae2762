"""The Labelbox adapter, driving the real labelbox SDK 7.17 against the fake Labelbox on loopback."""

from __future__ import annotations

import json
import logging
import random
import time
import traceback
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from shared.demo import create_demo_model_run, export_row
from shared.domain.examples import Split
from shared.platform.labelbox_adapter import LabelboxPlatform
from shared.platform.port import (
    MAX_STATUS_MESSAGE,
    ExportState,
    ExportStatus,
    ModelRunInfo,
    ModelRunNotFound,
    ModelRunStatus,
    PlatformError,
)
from shared.secret import Secret
from tests.platform.fake_labelbox import (
    FAKE_SIGNATURE,
    FakeLabelbox,
    running_fake_labelbox,
    running_fake_labelbox_for_folder,
)

MODEL_RUN_ID = "9da6c7e2-bc0d-0679-1e2e-a6a4e28475c8"
MODEL_ID = "clf9spzxq029m071nehy60a6v"
# the data row of the SDK's own prediction-import sample (tests/fixtures), so its rows are accepted
FIXTURE_DATA_ROW = "ckrazctum0z8a0ybc0b0o0g0v"
SPLITS = ("training", "validation", "test", None)
FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"


def make_rows(count: int = 7) -> list[dict[str, Any]]:
    rng = random.Random(3)
    rows = []
    for index in range(count):
        data_row_id = FIXTURE_DATA_ROW if index == 0 else f"cdatarow{index:017d}"
        rows.append(
            export_row(
                data_row_id=data_row_id,
                global_key=f"street-{index}.jpg",
                row_data=f"https://storage.example.com/street-{index}.jpg?Expires=1&Signature=abc",
                width=640,
                height=480,
                model_id=MODEL_ID,
                model_run_id=MODEL_RUN_ID,
                objects=[{"class": "car", "left": 10 + index, "top": 20, "width": 30, "height": 40}],
                split=SPLITS[index % len(SPLITS)],
                rng=rng,
            )
        )
    return rows


ROWS = make_rows()


@pytest.fixture
def fake(request: pytest.FixtureRequest) -> Iterator[FakeLabelbox]:
    behaviour = getattr(request, "param", {})
    with running_fake_labelbox(ROWS, model_run_id=MODEL_RUN_ID, model_id=MODEL_ID, **behaviour) as running:
        yield running


def platform_for(fake: FakeLabelbox, **options: Any) -> LabelboxPlatform:
    return LabelboxPlatform(
        Secret(fake.api_key), endpoint=fake.endpoint, rest_endpoint=fake.rest_endpoint, import_poll_s=0.01, **options
    )


def run_of(row: dict[str, Any]) -> dict[str, Any]:
    return row["experiments"][MODEL_ID]["runs"][MODEL_RUN_ID]


def test_get_model_run_returns_its_ids_and_is_fetched_once(fake: FakeLabelbox) -> None:
    platform = platform_for(fake)

    info = platform.get_model_run(MODEL_RUN_ID)
    platform.update_config(MODEL_RUN_ID, {"model_type": "bounding_box"})

    assert info == ModelRunInfo(id=MODEL_RUN_ID, model_id=MODEL_ID, name="fake model run")
    assert fake.operation_names() == ["GetModelRunPyApi", "updateModelRunConfigPyApi"]
    assert fake.operations[0].variables == {"param_0": MODEL_RUN_ID}


def test_unknown_model_run_is_model_run_not_found(fake: FakeLabelbox) -> None:
    platform = platform_for(fake)
    for call in (platform.get_model_run, platform.start_export, lambda run: list(platform.export_rows(run))):
        with pytest.raises(ModelRunNotFound, match="no model run 00000000-dead") as raised:
            call("00000000-dead")
        assert "check the id and the key's organization" in str(raised.value)
    assert fake.named("exportDataRowsInModelRunPyApi") == []


def test_a_model_run_deleted_after_its_lookup_is_model_run_not_found(fake: FakeLabelbox) -> None:
    platform = platform_for(fake)
    platform.get_model_run(MODEL_RUN_ID)
    fake.model_run_id = "another-run"  # Labelbox now answers RESOURCE_NOT_FOUND for ours; the SDK gets null data

    with pytest.raises(ModelRunNotFound, match=f"no model run {MODEL_RUN_ID}"):
        platform.update_config(MODEL_RUN_ID, {"model_type": "bounding_box"})
    with pytest.raises(ModelRunNotFound, match=f"no model run {MODEL_RUN_ID}"):
        platform.start_export(MODEL_RUN_ID)


@pytest.mark.parametrize("fake", [{"export_chunk_rows": 2}], indirect=True)
def test_export_streams_every_row_in_order_with_its_split(fake: FakeLabelbox) -> None:
    platform = platform_for(fake)
    rows = platform.export_rows(MODEL_RUN_ID)
    assert fake.operations == []  # nothing is asked of Labelbox before the first row is wanted

    exported = list(rows)

    assert [r["data_row"]["id"] for r in exported] == [r["data_row"]["id"] for r in ROWS]
    assert [run_of(r).get("split") for r in exported] == [SPLITS[i % 4] for i in range(len(ROWS))]
    assert [run_of(r)["labels"] for r in exported] == [run_of(r)["labels"] for r in ROWS]
    (mutation,) = fake.named("exportDataRowsInModelRunPyApi")
    assert mutation.path == "/graphql"
    assert mutation.variables["input"]["filters"] == {"modelRunId": MODEL_RUN_ID}
    assert mutation.variables["input"]["streamable"] is True
    params = mutation.variables["input"]["params"]
    assert params["includeModelRunDetails"] is True
    assert params["includeDataRowDetails"] is True
    assert params["includePredictions"] is False
    offsets = [op.variables["offset"] for op in fake.named("GetExportFileFromOffsetPyApi")]
    assert len(offsets) == 4  # 7 rows in chunks of 2
    assert offsets[0] == "0" and [int(o) for o in offsets] == sorted(int(o) for o in offsets)
    assert all("Bearer " + fake.api_key == op.headers["Authorization"] for op in fake.operations)
    assert platform.export_errors == {}


@pytest.mark.parametrize("fake", [{"splits_on_run": False, "max_page_size": 3}], indirect=True)
def test_splits_come_from_model_run_data_rows_when_rows_lack_them(fake: FakeLabelbox) -> None:
    platform = platform_for(fake)

    exported = list(platform.export_rows(MODEL_RUN_ID))
    splits = platform.data_row_splits(MODEL_RUN_ID)

    assert all("split" not in run_of(r) for r in exported)
    assert splits == {r["data_row"]["id"]: Split.parse(SPLITS[i % 4]) for i, r in enumerate(ROWS)}
    assert splits[ROWS[3]["data_row"]["id"]] is Split.UNASSIGNED
    pages = fake.named("modelRunPyApi")
    assert [p.variables["from"] for p in pages] == [None, "3", "6"]
    assert all(p.variables["modelRunId"] == MODEL_RUN_ID for p in pages)


@pytest.mark.parametrize("fake", [{"export_failure": "Export exceeded the 1,000,000 data row limit"}], indirect=True)
def test_failed_export_raises_with_labelboxs_reason(fake: FakeLabelbox) -> None:
    with pytest.raises(PlatformError) as raised:
        list(platform_for(fake).export_rows(MODEL_RUN_ID))

    message = str(raised.value)
    assert "Export exceeded the 1,000,000 data row limit" in message
    assert MODEL_RUN_ID in message and "FAILED" in message
    assert fake.named("GetExportFileFromOffsetPyApi") == []


@pytest.mark.parametrize("fake", [{"export_in_progress_polls": 5}], indirect=True)
def test_export_still_running_at_the_timeout_raises(fake: FakeLabelbox) -> None:
    with pytest.raises(PlatformError, match="did not finish within 0 s"):
        list(platform_for(fake, export_timeout_s=0).export_rows(MODEL_RUN_ID))


@pytest.mark.parametrize("fake", [{"export_in_progress_polls": 3}], indirect=True)
def test_export_rows_looks_every_two_seconds_until_complete(
    fake: FakeLabelbox, monkeypatch: pytest.MonkeyPatch
) -> None:
    slept: list[float] = []
    monkeypatch.setattr("shared.platform.labelbox_adapter.time.sleep", slept.append)

    exported = list(platform_for(fake).export_rows(MODEL_RUN_ID))

    assert [r["data_row"]["id"] for r in exported] == [r["data_row"]["id"] for r in ROWS]
    assert slept == [2.0, 2.0]  # creation answered IN_PROGRESS, then two looks RUNNING, the third COMPLETE
    assert fake.operation_names()[:3] == ["GetModelRunPyApi", "exportDataRowsInModelRunPyApi", "GetUserPyApi"]
    assert fake.operation_names().count("GetUserPyApi") == 1
    assert fake.operation_names().count("GetUserCreatedTasksPyApi") == 5  # creation, 3 looks, read's check


@pytest.mark.parametrize("fake", [{"export_in_progress_polls": 1000}], indirect=True)
def test_start_export_and_export_status_never_wait(fake: FakeLabelbox) -> None:
    platform = platform_for(fake)
    started = time.monotonic()
    task_id = platform.start_export(MODEL_RUN_ID)
    before = len(fake.operations)
    status = platform.export_status(task_id)
    elapsed = time.monotonic() - started

    assert status == ExportStatus(ExportState.RUNNING)
    assert elapsed < 1.5
    assert [op.name for op in fake.operations[before:]] == ["GetUserCreatedTasksPyApi"]  # one round trip
    (lookup,) = fake.operations[before:]
    assert lookup.variables == {"param_0": task_id, "param_1": "cfakeuser000000000000000001"}
    assert "createdTasks(where: {id: $param_0} skip: 0 first: 100)" in lookup.query
    with pytest.raises(PlatformError, match=f"task {task_id}\\) is IN_PROGRESS, not COMPLETE"):
        platform.read_export(MODEL_RUN_ID, task_id)
    assert fake.named("GetExportFileFromOffsetPyApi") == []


@pytest.mark.parametrize("fake", [{"export_chunk_rows": 3}], indirect=True)
def test_an_export_started_elsewhere_is_found_by_its_task_id(fake: FakeLabelbox) -> None:
    task_id = platform_for(fake).start_export(MODEL_RUN_ID)
    later = platform_for(fake)  # another process: nothing cached
    before = len(fake.operations)

    status = later.export_status(task_id)
    rows = list(later.read_export(MODEL_RUN_ID, task_id))

    assert status == ExportStatus(ExportState.COMPLETE)
    assert [r["data_row"]["id"] for r in rows] == [r["data_row"]["id"] for r in ROWS]
    names = [op.name for op in fake.operations[before:]]
    assert names[:4] == [
        "GetUserPyApi",
        "GetUserCreatedTasksPyApi",
        "GetExportMetadataHeaderPyApi",  # ERRORS: none
        "GetUserCreatedTasksPyApi",  # read_export checks the task once more
    ]
    assert "exportDataRowsInModelRunPyApi" not in names and "GetModelRunPyApi" not in names
    assert names.count("GetExportFileFromOffsetPyApi") == 3


def test_an_unknown_export_task_is_a_platform_error(fake: FakeLabelbox) -> None:
    platform = platform_for(fake)
    with pytest.raises(PlatformError, match="no export task cexportnope created by this API key's user"):
        platform.export_status("cexportnope")
    with pytest.raises(PlatformError, match="no export task cexportnope"):
        platform.read_export(MODEL_RUN_ID, "cexportnope")


@pytest.mark.parametrize("fake", [{"export_failure": "Export exceeded the 1,000,000 data row limit"}], indirect=True)
def test_a_failed_exports_status_carries_labelboxs_reason(fake: FakeLabelbox) -> None:
    platform = platform_for(fake)
    task_id = platform.start_export(MODEL_RUN_ID)

    status = platform.export_status(task_id)

    assert status == ExportStatus(ExportState.FAILED, error="Export exceeded the 1,000,000 data row limit")
    with pytest.raises(PlatformError, match="is FAILED, not COMPLETE: Export exceeded the 1,000,000 data row limit"):
        platform.read_export(MODEL_RUN_ID, task_id)
    assert fake.named("GetExportMetadataHeaderPyApi") == fake.named("GetExportFileFromOffsetPyApi") == []


ROW_ERRORS = [{"message": f"data row cdatarow{i} could not be read"} for i in range(7)]


@pytest.mark.parametrize("fake", [{"export_errors": ROW_ERRORS}], indirect=True)
def test_a_complete_exports_status_counts_its_row_errors(fake: FakeLabelbox) -> None:
    platform = platform_for(fake)
    task_id = platform.start_export(MODEL_RUN_ID)

    status = platform.export_status(task_id)

    assert status.state is ExportState.COMPLETE and status.error is None
    assert status.row_errors == 7
    assert status.row_error_samples == tuple(f"data row cdatarow{i} could not be read" for i in range(5))
    (header,) = fake.named("GetExportMetadataHeaderPyApi")
    assert header.variables == {"where": {"id": task_id}, "streamType": "ERRORS"}
    assert [op.variables["streamType"] for op in fake.named("GetExportFileFromOffsetPyApi")] == ["ERRORS"]


@pytest.mark.parametrize(
    "fake", [{"export_errors": [{"message": "data row cdatarow3 could not be read"}, {"code": 7}]}], indirect=True
)
def test_export_row_errors_are_counted_and_logged(fake: FakeLabelbox, caplog: pytest.LogCaptureFixture) -> None:
    platform = platform_for(fake)
    with caplog.at_level(logging.WARNING, logger="shared.platform.labelbox_adapter"):
        exported = list(platform.export_rows(MODEL_RUN_ID))

    assert len(exported) == len(ROWS)
    found = platform.export_errors[MODEL_RUN_ID]
    assert found.count == 2
    assert found.samples[0] == "data row cdatarow3 could not be read"
    assert "2 row errors" in caplog.text


def test_update_status_goes_to_the_experimental_endpoint_with_a_cut_message(fake: FakeLabelbox) -> None:
    platform = platform_for(fake)
    long_error = "Training failed:\n" + "x" * 400

    platform.update_status(MODEL_RUN_ID, ModelRunStatus.PREPARING_DATA, metadata={"etl_rows": "7"})
    platform.update_status(MODEL_RUN_ID, ModelRunStatus.FAILED, metadata={"stage": "train"}, error_message=long_error)

    first, second = fake.named("setPipelineStatusPyApi")
    assert first.path == second.path == "/_gql"
    assert first.variables == {
        "modelRunId": MODEL_RUN_ID,
        "data": {"status": "PREPARING_DATA", "metadata": {"etl_rows": "7"}},
    }
    sent = second.variables["data"]
    assert sent["status"] == "FAILED"
    assert len(sent["errorMessage"]) == MAX_STATUS_MESSAGE
    assert sent["errorMessage"].startswith("Training failed: xxx") and sent["errorMessage"].endswith("…")
    assert fake.pipeline["metadata"] == {"etl_rows": "7", "stage": "train"}


def test_get_config_reads_the_model_runs_training_metadata_through_the_sdk(fake: FakeLabelbox) -> None:
    platform = platform_for(fake)
    assert platform.get_config(MODEL_RUN_ID) == {}  # a model run without a config
    fake.training_metadata = {"train": {"budget_milli_node_hours": 40000}, "notes": "sweep 3"}
    assert platform.get_config(MODEL_RUN_ID) == {"train": {"budget_milli_node_hours": 40000}, "notes": "sweep 3"}
    op = fake.named("ModelRunPyApi")[-1]
    assert op.variables == {"modelRunId": MODEL_RUN_ID}


def test_update_config_sends_the_config(fake: FakeLabelbox) -> None:
    config = {"model_type": "bounding_box", "budget_milli_node_hours": 20000, "labels": ["car"]}

    platform_for(fake).update_config(MODEL_RUN_ID, config)

    assert fake.configs == [config]
    (op,) = fake.named("updateModelRunConfigPyApi")
    assert op.path == "/graphql" and op.variables["modelRunId"] == MODEL_RUN_ID


def prediction_rows() -> list[dict[str, Any]]:
    rows = json.loads((FIXTURES / "labelbox-python__ndjson_image_import.json").read_text())
    rows.append(
        {
            "uuid": "0e1f9c9a-0000-4000-8000-000000000001",
            "dataRow": {"globalKey": "not-in-this-run.jpg"},
            "name": "car",
            "bbox": {"top": 1.0, "left": 2.0, "height": 3.0, "width": 4.0},
            "confidence": 0.5,
        }
    )
    rows.append(
        {
            "dataRow": {"globalKey": "street-1.jpg"},
            "metricValue": [1, 0, 0, 1],
            "featureName": "car",
            "metricName": "50pct_iou",
            "aggregation": "CONFUSION_MATRIX",
        }
    )
    return rows


@pytest.mark.parametrize("fake", [{"import_running_polls": 2}], indirect=True)
def test_upload_predictions_uploads_the_ndjson_and_returns_per_row_errors(fake: FakeLabelbox) -> None:
    rows = prediction_rows()

    result = platform_for(fake).upload_predictions(MODEL_RUN_ID, "vertex-predictions-1", rows)

    (upload,) = fake.named("createMEAPredictionImportByFilePyApi")
    assert upload.path == "/graphql"
    assert upload.variables["modelRunId"] == MODEL_RUN_ID and upload.variables["name"] == "vertex-predictions-1"
    ((part, targets),) = json.loads(upload.form["map"]).items()
    assert targets == ["variables.file"]
    assert [json.loads(line) for line in upload.files[part].decode().splitlines()] == rows
    polls = fake.named("getModelErrorAnalysisPredictionImportPyApi")
    assert len(polls) == 3  # RUNNING, RUNNING, FINISHED
    assert result.name == "vertex-predictions-1"
    assert result.accepted == len(rows) - 1
    assert result.errors == [
        {
            "dataRow": {"globalKey": "not-in-this-run.jpg"},
            "uuid": "0e1f9c9a-0000-4000-8000-000000000001",
            "errors": [fake.imports[0].errors[0]["errors"][0]],
        }
    ]
    assert "not part of this model run" in result.errors[0]["errors"][0]["message"]
    assert any(d.startswith(f"/files/imports/{fake.imports[0].id}/errors.ndjson") for d in fake.downloads)


@pytest.mark.parametrize("fake", [{"import_failure": True}], indirect=True)
def test_a_whole_import_failure_is_a_platform_error(fake: FakeLabelbox) -> None:
    with pytest.raises(PlatformError, match=r"rejected the whole prediction import 'preds'.*FAILED"):
        platform_for(fake).upload_predictions(MODEL_RUN_ID, "preds", prediction_rows())


def test_rows_labelbox_would_refuse_are_stopped_before_upload(fake: FakeLabelbox) -> None:
    platform = platform_for(fake)
    reserved = {"dataRow": {"id": FIXTURE_DATA_ROW}, "metricValue": 0.5, "metricName": "iou"}
    both_ids = {"uuid": "u", "dataRow": {"id": FIXTURE_DATA_ROW, "globalKey": "street-0.jpg"}, "name": "car"}

    with pytest.raises(PlatformError, match="reserves: iou"):
        platform.upload_predictions(MODEL_RUN_ID, "p", [reserved])
    with pytest.raises(PlatformError, match="only one of 'id' or 'globalKey'"):
        platform.upload_predictions(MODEL_RUN_ID, "p", [both_ids])
    assert fake.named("createMEAPredictionImportByFilePyApi") == []
    assert platform.upload_predictions(MODEL_RUN_ID, "empty", []).accepted == 0


SECRET_KEY = "lb-secret-KEY-5f0e7c1d9a8b"


def test_the_api_key_is_sent_but_never_shown(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    echo = {
        "setPipelineStatusPyApi": f"token {SECRET_KEY} may not update this pipeline",
        "GetExportFileFromOffsetPyApi": f"token {SECRET_KEY} may not read https://x.example/e.ndjson?sig=S3CR3T",
    }
    failure = f"token {SECRET_KEY} cannot write https://storage.example.com/out.ndjson?X-Goog-Signature=S3CR3T"
    with (
        running_fake_labelbox(
            ROWS, model_run_id=MODEL_RUN_ID, model_id=MODEL_ID, api_key=SECRET_KEY, fail_operations=echo
        ) as fake,
        running_fake_labelbox(
            ROWS, model_run_id=MODEL_RUN_ID, model_id=MODEL_ID, api_key=SECRET_KEY, export_failure=failure
        ) as failing,
    ):
        platform = LabelboxPlatform(Secret(SECRET_KEY), endpoint=fake.endpoint, rest_endpoint=fake.rest_endpoint)
        wrong = LabelboxPlatform(Secret("lb-wrong-KEY-0000"), endpoint=fake.endpoint, rest_endpoint=fake.rest_endpoint)
        failed = LabelboxPlatform(Secret(SECRET_KEY), endpoint=failing.endpoint, rest_endpoint=failing.rest_endpoint)
        with pytest.raises(PlatformError) as refused:
            platform.update_status(MODEL_RUN_ID, ModelRunStatus.TRAINING_MODEL)
        with pytest.raises(PlatformError) as unauthenticated:
            wrong.get_model_run(MODEL_RUN_ID)
        with pytest.raises(PlatformError) as unreadable:
            list(platform.export_rows(MODEL_RUN_ID))
        with pytest.raises(PlatformError) as export_failed:
            list(failed.export_rows(MODEL_RUN_ID))
        status = failed.export_status(failing.exports[0].task_id)

    assert fake.operations[0].headers["Authorization"] == f"Bearer {SECRET_KEY}"
    assert "may not update this pipeline" in str(refused.value)
    assert "AuthenticationError" in str(unauthenticated.value)
    assert "may not read https://x.example/e.ndjson" in str(unreadable.value)
    assert status.error == "token [redacted] cannot write https://storage.example.com/out.ndjson"
    assert status.error in str(export_failed.value)
    errors = (refused, unauthenticated, unreadable, export_failed)
    shown = [
        caplog.text,
        repr(platform),
        status.error,
        *(str(e.value) for e in errors),
        *("".join(traceback.format_exception(e.value)) for e in errors),
    ]
    assert all("S3CR3T" not in text for text in shown[2:])
    assert "may not update this pipeline" in caplog.text  # the SDK did log the server's text...
    assert all(SECRET_KEY not in text for text in shown)  # ...without the key
    assert all("lb-wrong-KEY-0000" not in text for text in shown)


def test_open_media_streams_the_bytes(fake: FakeLabelbox) -> None:
    content = random.Random(5).randbytes(300_000)
    url = fake.add_media("street-0.jpg", content)

    chunks = list(platform_for(fake, media_chunk_bytes=65_536).open_media(url))

    assert b"".join(chunks) == content
    assert len(chunks) > 1


def test_open_media_refusal_names_the_status_and_hides_the_signature(fake: FakeLabelbox) -> None:
    url = f"{fake.base_url}/media/missing.jpg?{FAKE_SIGNATURE}"

    with pytest.raises(PlatformError) as raised:
        platform_for(fake).open_media(url)

    message = str(raised.value)
    assert "404" in message and f"{fake.base_url}/media/missing.jpg" in message
    assert "fake-signature" not in message and "?" not in message
    with pytest.raises(PlatformError, match="not an http"):
        platform_for(fake).open_media("media/street-0.jpg")


def test_a_demo_model_run_folder_is_served_as_a_labelbox_model_run(tmp_path: Path) -> None:
    folder = create_demo_model_run(tmp_path, images=6, seed=2)
    local = [json.loads(line) for line in (folder / "export.ndjson").read_text().splitlines()]

    with running_fake_labelbox_for_folder(folder) as fake:
        platform = platform_for(fake)
        info = json.loads((folder / "model_run.json").read_text())
        exported = list(platform.export_rows(info["id"]))
        first = exported[0]["data_row"]["row_data"]
        image = b"".join(platform.open_media(first))
        media_url = fake.base_url + "/media/"

    assert platform.get_model_run(info["id"]).model_id == info["model_id"]
    assert [r["data_row"]["id"] for r in exported] == [r["data_row"]["id"] for r in local]
    assert first.startswith(media_url)
    assert image == (folder / local[0]["data_row"]["row_data"]).read_bytes()
