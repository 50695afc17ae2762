"""The file-backed model run of the local mode: export, splits, status, config, prediction uploads."""

from __future__ import annotations

import json
import os
import types
from pathlib import Path
from typing import Any

import pytest

from shared.domain.examples import Split
from shared.platform.local_model_run import LocalModelRuns
from shared.platform.port import (
    ExportState,
    ExportStatus,
    ModelRunInfo,
    ModelRunNotFound,
    ModelRunStatus,
    PlatformError,
)
from tests.demo_run import DemoRun


def platform(demo: DemoRun) -> LocalModelRuns:
    return LocalModelRuns(demo.root)


# -- reading the model run -----------------------------------------------------------------------------------


def test_get_model_run(demo_template: DemoRun) -> None:
    info = platform(demo_template).get_model_run(demo_template.model_run_id)
    assert info == ModelRunInfo(
        id=demo_template.model_run_id, model_id=demo_template.model_id, name="demo shapes (seed 1)"
    )


def test_export_rows_are_streamed_one_row_at_a_time(demo_template: DemoRun) -> None:
    rows = platform(demo_template).export_rows(demo_template.model_run_id)
    assert isinstance(rows, types.GeneratorType)
    first = next(rows)
    assert first == demo_template.rows()[0]
    assert len([first, *rows]) == 20


def test_malformed_and_blank_lines(demo: DemoRun) -> None:
    path = demo.folder / "export.ndjson"
    lines = path.read_text().splitlines()
    lines.insert(1, "")
    lines.insert(2, '{"data_row": ')
    path.write_text("\n".join(lines) + "\n   \n")
    rows = list(platform(demo).export_rows(demo.model_run_id))
    assert len(rows) == 21
    assert rows[1] == {"_malformed": "line 3 is not valid JSON"}
    assert rows[0]["data_row"]["id"] == json.loads(lines[0])["data_row"]["id"]


def test_unknown_model_run_is_model_run_not_found(demo_template: DemoRun) -> None:
    runs = platform(demo_template)
    for model_run_id in ("no-such-run", "../" + demo_template.root.name, "."):
        with pytest.raises(ModelRunNotFound, match=f"model run {model_run_id} not found"):
            runs.get_model_run(model_run_id)
        with pytest.raises(ModelRunNotFound):
            list(runs.export_rows(model_run_id))
        with pytest.raises(ModelRunNotFound):
            runs.start_export(model_run_id)
        with pytest.raises(ModelRunNotFound):
            runs.export_status("local-export-" + model_run_id)
        with pytest.raises(ModelRunNotFound):
            runs.read_export(model_run_id, "local-export-" + model_run_id)


def test_an_export_is_complete_at_once_under_a_task_id_from_the_model_run(demo_template: DemoRun) -> None:
    runs = platform(demo_template)
    task_id = runs.start_export(demo_template.model_run_id)

    assert task_id == platform(demo_template).start_export(demo_template.model_run_id)  # another process agrees
    assert demo_template.model_run_id in task_id
    assert runs.export_status(task_id) == ExportStatus(ExportState.COMPLETE)
    rows = runs.read_export(demo_template.model_run_id, task_id)
    assert isinstance(rows, types.GeneratorType)
    assert list(rows) == demo_template.rows()


def test_reading_an_export_checks_the_task_before_the_first_row(demo: DemoRun) -> None:
    runs = platform(demo)
    task_id = runs.start_export(demo.model_run_id)
    with pytest.raises(PlatformError, match="is not an export task"):
        runs.export_status("cexport0123")
    with pytest.raises(PlatformError, match="is not an export task"):
        runs.read_export(demo.model_run_id, "cexport0123")
    (demo.root / "other").mkdir()
    (demo.root / "other" / "model_run.json").write_text("{}")
    with pytest.raises(PlatformError, match=f"is not an export of model run {demo.model_run_id}"):
        runs.read_export(demo.model_run_id, runs.start_export("other"))

    (demo.folder / "export.ndjson").unlink()
    assert runs.export_status(task_id) == ExportStatus(
        ExportState.FAILED, error="the model run folder has no export.ndjson"
    )
    with pytest.raises(PlatformError, match=r"has no export\.ndjson"):
        runs.read_export(demo.model_run_id, task_id)
    with pytest.raises(PlatformError, match=r"has no export\.ndjson"):
        list(runs.export_rows(demo.model_run_id))


def test_data_row_splits_from_splits_json(demo: DemoRun) -> None:
    runs = platform(demo)
    assert runs.data_row_splits(demo.model_run_id) == {}
    (demo.folder / "splits.json").write_text(
        json.dumps({"a": "TRAINING", "b": "VALIDATION", "c": "test", "d": "UNASSIGNED", "e": "bogus"})
    )
    assert runs.data_row_splits(demo.model_run_id) == {
        "a": Split.TRAINING,
        "b": Split.VALIDATION,
        "c": Split.TEST,
        "d": Split.UNASSIGNED,
        "e": Split.UNASSIGNED,
    }


# -- media ------------------------------------------------------------------------------------------------


def test_open_media_reads_a_relative_file_in_chunks(demo_template: DemoRun) -> None:
    runs = platform(demo_template)
    row_data = demo_template.rows()[0]["data_row"]["row_data"]
    data = b"".join(runs.open_media(row_data, model_run_id=demo_template.model_run_id))
    assert data == (demo_template.folder / row_data).read_bytes()
    assert runs.media_size(row_data, model_run_id=demo_template.model_run_id) == len(data)


def test_open_media_reads_a_file_url(demo_template: DemoRun) -> None:
    path = demo_template.folder / demo_template.rows()[0]["data_row"]["row_data"]
    data = b"".join(platform(demo_template).open_media(path.as_uri()))
    assert data == path.read_bytes()


@pytest.mark.parametrize("row_data", ["../../etc/passwd", "media/../../x.jpg", "/etc/passwd"])
def test_media_paths_may_not_leave_the_model_run_folder(demo_template: DemoRun, row_data: str) -> None:
    runs = platform(demo_template)
    with pytest.raises(PlatformError, match="leaves the model run folder"):
        list(runs.open_media(row_data, model_run_id=demo_template.model_run_id))
    with pytest.raises(PlatformError, match="leaves the model run folder"):
        runs.media_size(row_data, model_run_id=demo_template.model_run_id)


def test_missing_media_file(demo_template: DemoRun) -> None:
    runs = platform(demo_template)
    with pytest.raises(PlatformError, match=r"media file not found: media/missing\.jpg"):
        list(runs.open_media("media/missing.jpg", model_run_id=demo_template.model_run_id))
    assert runs.media_size("media/missing.jpg", model_run_id=demo_template.model_run_id) is None


def test_unreachable_http_media_is_a_platform_error(demo_template: DemoRun) -> None:
    with pytest.raises(PlatformError, match=r"media download failed \(ConnectionError\): http://127.0.0.1:9/a.jpg$"):
        list(platform(demo_template).open_media("http://127.0.0.1:9/a.jpg?token=secret"))


# -- writing status and config ---------------------------------------------------------------------------------


def test_update_status_appends_in_order_and_cuts_the_message(demo: DemoRun) -> None:
    runs = platform(demo)
    runs.update_status(demo.model_run_id, ModelRunStatus.EXPORTING_DATA)
    runs.update_status(demo.model_run_id, ModelRunStatus.PREPARING_DATA, metadata={"rows": 20, "run": "r"})  # type: ignore[dict-item]
    runs.update_status(demo.model_run_id, ModelRunStatus.FAILED, error_message="etl failed:\n" + "x" * 400)
    statuses = runs.statuses(demo.model_run_id)
    assert [s["status"] for s in statuses] == ["EXPORTING_DATA", "PREPARING_DATA", "FAILED"]
    assert statuses[1]["metadata"] == {"rows": "20", "run": "r"}
    message = statuses[2]["error_message"]
    assert len(message) == 255
    assert message.startswith("etl failed: xxx") and message.endswith("…")
    assert all(s["at"].endswith("Z") for s in statuses)
    lines = (demo.folder / "status.ndjson").read_text().splitlines()
    assert [json.loads(line) for line in lines] == statuses


def test_update_status_on_an_unknown_run_is_refused(demo_template: DemoRun) -> None:
    with pytest.raises(PlatformError):
        platform(demo_template).update_status("nope", ModelRunStatus.COMPLETE)


def test_update_config_replaces_the_file_atomically(demo: DemoRun, monkeypatch: pytest.MonkeyPatch) -> None:
    runs = platform(demo)
    runs.update_config(demo.model_run_id, {"model_type": "local_detector", "budget": 1})
    runs.update_config(demo.model_run_id, {"model_type": "local_detector", "budget": 2})
    assert json.loads((demo.folder / "config.json").read_text()) == {"model_type": "local_detector", "budget": 2}
    assert sorted(p.name for p in demo.folder.iterdir() if "config" in p.name) == ["config.json"]

    replaced: list[tuple[str, str]] = []
    real_replace = os.replace

    def spy(src: Any, dst: Any) -> None:
        replaced.append((Path(src).name, Path(dst).name))
        assert json.loads(Path(dst).read_text())["budget"] == 2  # the old file is whole until the swap
        real_replace(src, dst)

    monkeypatch.setattr(os, "replace", spy)
    runs.update_config(demo.model_run_id, {"budget": 3})
    ((temporary, target),) = replaced
    assert target == "config.json" and temporary.startswith(".config.json.") and temporary.endswith(".tmp")
    assert json.loads((demo.folder / "config.json").read_text()) == {"budget": 3}


# -- prediction uploads ----------------------------------------------------------------------------------------


def bbox_row(data_row: dict[str, str], **extra: Any) -> dict[str, Any]:
    return {
        "uuid": "u-" + json.dumps(extra, sort_keys=True),
        "dataRow": data_row,
        "name": "circle",
        "confidence": 0.8,
        "bbox": {"top": 1.0, "left": 2.0, "height": 10.0, "width": 12.0},
        **extra,
    }


def test_upload_validates_rows_and_stores_the_accepted_ones(demo: DemoRun) -> None:
    runs = platform(demo)
    known = demo.rows()[0]["data_row"]["id"]
    good = [
        bbox_row({"id": known}),
        bbox_row({"globalKey": "shape-00000.jpg"}),
        {"dataRow": {"id": known}, "name": "largest_shape", "answer": {"name": "circle", "confidence": 1}},
        {"dataRow": {"id": known}, "metricValue": 0.5, "metricName": "custom_iou", "aggregation": "ARITHMETIC_MEAN"},
        {"dataRow": {"id": known}, "metricValue": 0.5, "featureName": "circle"},
        bbox_row({"id": known}, confidence=0),
        bbox_row({"id": known}, confidence=None),
    ]
    bad = {
        "no data row": {**bbox_row({"id": known}), "dataRow": None},
        "both keys": bbox_row({"id": known, "globalKey": "shape-00000.jpg"}),
        "neither key": bbox_row({}),
        "unknown id": bbox_row({"id": "cunknown"}),
        "reserved iou": {"dataRow": {"id": known}, "metricValue": 0.5, "metricName": "iou"},
        "reserved F1": {"dataRow": {"id": known}, "metricValue": 0.5, "metricName": "F1"},
        "confidence high": bbox_row({"id": known}, confidence=1.01),
        "confidence low": bbox_row({"id": known}, confidence=-0.1),
        "confidence text": bbox_row({"id": known}, confidence="0.5"),
        "zero width": bbox_row({"id": known}, bbox={"top": 1, "left": 1, "height": 5, "width": 0}),
        "negative height": bbox_row({"id": known}, bbox={"top": 1, "left": 1, "height": -5, "width": 5}),
        "nan bbox": bbox_row({"id": known}, bbox={"top": float("nan"), "left": 1, "height": 5, "width": 5}),
        "bbox keys": bbox_row({"id": known}, bbox={"top": 1, "left": 1}),
        "no name": {"dataRow": {"id": known}, "bbox": {"top": 1, "left": 1, "height": 5, "width": 5}},
    }
    result = runs.upload_predictions(demo.model_run_id, "predictions v1/val", [*good, *bad.values()])
    assert result.name == "predictions v1/val"
    assert result.accepted == len(good)
    messages = {name: e["errors"][0]["message"] for name, e in zip(bad, result.errors, strict=True)}
    assert messages == {
        "no data row": "dataRow must have exactly one of id or globalKey",
        "both keys": "dataRow must have exactly one of id or globalKey",
        "neither key": "dataRow must have exactly one of id or globalKey",
        "unknown id": "data row cunknown is not in this model run",
        "reserved iou": "metricName 'iou' is reserved",
        "reserved F1": "metricName 'F1' is reserved",
        "confidence high": "confidence must be between 0 and 1",
        "confidence low": "confidence must be between 0 and 1",
        "confidence text": "confidence must be between 0 and 1",
        "zero width": "bbox must have a positive size",
        "negative height": "bbox must have a positive size",
        "nan bbox": "bbox must have a positive size",
        "bbox keys": "bbox needs numeric top, left, height and width",
        "no name": "one of name or schemaId is required",
    }
    for error, row in zip(result.errors, bad.values(), strict=True):
        assert error["status"] == "FAILURE"
        assert error["uuid"] == row.get("uuid")
        assert error["dataRow"] == row.get("dataRow")
        assert error["errors"][0]["name"] == "ValidationError"
    stored = demo.folder / "predictions" / "predictions_v1_val.ndjson"
    assert [json.loads(line) for line in stored.read_text().splitlines()] == good
    assert runs.uploaded(demo.model_run_id) == good
    assert sorted(p.name for p in stored.parent.iterdir()) == ["predictions_v1_val.ndjson"]


def test_upload_with_the_same_name_replaces_and_other_names_add(demo: DemoRun) -> None:
    runs = platform(demo)
    known = demo.rows()[0]["data_row"]["id"]
    runs.upload_predictions(demo.model_run_id, "val", [bbox_row({"id": known})])
    runs.upload_predictions(demo.model_run_id, "val", [bbox_row({"id": known})])
    assert len(runs.uploaded(demo.model_run_id)) == 1
    runs.upload_predictions(demo.model_run_id, "test", [bbox_row({"id": known}), bbox_row({"id": known})])
    assert len(runs.uploaded(demo.model_run_id)) == 3


def test_upload_name_cannot_escape_the_predictions_folder(demo: DemoRun) -> None:
    runs = platform(demo)
    runs.upload_predictions(demo.model_run_id, "../../escape", [])
    assert not (demo.root.parent / "escape.ndjson").exists()
    assert [p.name for p in (demo.folder / "predictions").iterdir()] == [".._.._escape.ndjson"]


def test_upload_to_an_unknown_model_run_is_refused(demo_template: DemoRun) -> None:
    with pytest.raises(PlatformError, match="model run other not found"):
        platform(demo_template).upload_predictions("other", "x", [])


def test_export_lines_that_do_not_parse_do_not_break_upload_validation(demo: DemoRun) -> None:
    known = demo.rows()[0]["data_row"]["id"]
    path = demo.folder / "export.ndjson"
    path.write_text(path.read_text() + 'not json\n[1]\n{"data_row": 3}\n')
    assert platform(demo).upload_predictions(demo.model_run_id, "x", [bbox_row({"id": known})]).accepted == 1
