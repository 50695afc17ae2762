"""The inference stage in-process: batch prediction started once, then everything back into the model run.

A run of the 20-image demo goes through the real ETL, `train` and `monitor` in-process first, against the
scripted backend and the recording chain and platform of `tests/fakes.py`. The batch job's output is
written into the folder bucket by the test, as Vertex writes it (`predictions_00001.jsonl`,
`errors_00001.jsonl`; see `shared/formats/vertex_prediction.py` and `tests/fixtures/`).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from shared.dataset.manifest import ManifestRow, read_manifest
from shared.domain import run_record as rr
from shared.domain.model_types import Task
from shared.domain.run_paths import RunPaths
from shared.formats.labelbox_metrics import UNCERTAINTY_METRIC_NAMES
from shared.services import Services
from shared.stages import upload
from shared.stages.runner import StageAnswer
from shared.training.port import JobState
from tests.demo_run import DemoRun
from tests.fakes import RecordingChain, RecordingModelRuns, ScriptedBackend
from tests.stages.world import call, create_run, services_for

HELD_OUT = ("validation", "test")


@dataclass
class Flow:
    services: Services
    platform: RecordingModelRuns
    backend: ScriptedBackend
    chain: RecordingChain
    run_id: str

    def inference(self, **flags: Any) -> StageAnswer:
        return call(self.services, "inference", self.run_id, **flags)

    def record(self) -> rr.RunRecord:
        record = self.services.runs.get(self.run_id)
        assert record is not None
        return record

    def manifest(self, *splits: str) -> list[ManifestRow]:
        return [row for row in read_manifest(self.services.store, self.run_id) if row.split.value in splits]

    def instances(self) -> list[dict[str, Any]]:
        return [json.loads(line) for line in self.services.store.read(RunPaths(self.run_id).instances).splitlines()]

    def job_finished(self, predicted: Iterable[ManifestRow], failed: Iterable[ManifestRow] = ()) -> None:
        """The batch job succeeded and wrote its files; the monitor's look hands the run back to inference."""
        ref = self.record().jobs["batch_prediction"]
        output = self.services.store.key_from_uri(self.backend.output_dir(ref))
        store = self.services.store
        store.write(f"{output}/predictions_00001.jsonl", "".join(prediction_line(r) + "\n" for r in predicted).encode())
        store.write(f"{output}/errors_00001.jsonl", "".join(error_line(r) + "\n" for r in failed).encode())
        self.backend.prediction_state = JobState.SUCCEEDED
        look = call(self.services, "monitor", self.run_id)
        assert look.body["outcome"] == "handed_off" and self.chain.handoffs[-1] == ("inference", self.run_id)


def _instance(row: ManifestRow) -> dict[str, str]:
    return {"content": row.image_uri, "mimeType": row.mime_type}


def prediction_line(row: ManifestRow, confidence: float = 0.9) -> str:
    """A Vertex AutoML detection line that finds exactly the row's ground-truth boxes."""
    boxes = [[x / row.width, (x + w) / row.width, y / row.height, (y + h) / row.height] for _, x, y, w, h in row.boxes]
    prediction = {
        "ids": [str(1000 + i) for i in range(len(row.boxes))],
        "displayNames": [b[0] for b in row.boxes],
        "confidences": [confidence] * len(row.boxes),
        "bboxes": boxes,
    }
    return json.dumps({"instance": _instance(row), "prediction": prediction})


def error_line(row: ManifestRow) -> str:
    """What Vertex writes to `errors_*` for an instance it could not predict."""
    error = {"code": 3, "message": f"Image {row.image_uri} could not be decoded."}
    return json.dumps({"instance": _instance(row), "error": error})


def flow_up_to_inference(tmp_path: Path, demo: DemoRun, **env: str) -> Flow:
    """A demo run that ETL, train and monitor took up to inference (the model is trained)."""
    platform, backend, chain = RecordingModelRuns(demo.root), ScriptedBackend(), RecordingChain()
    services = services_for(tmp_path, platform, backend=backend, chain=chain, **env)
    run_id = demo.model_run_id
    create_run(services, run_id, model_id=demo.model_id)
    assert call(services, "etl", run_id).body["outcome"] == "succeeded"
    assert call(services, "train", run_id).body["outcome"] == "training_started"
    backend.training_state = JobState.SUCCEEDED
    assert call(services, "monitor", run_id).body["outcome"] == "handed_off"
    assert chain.handoffs == [("train", run_id), ("inference", run_id)]
    return Flow(services, platform, backend, chain, run_id)


@pytest.fixture
def flow(tmp_path: Path, demo: DemoRun) -> Callable[..., Flow]:
    """`flow(**env)`: `flow_up_to_inference` with those settings."""
    return lambda **env: flow_up_to_inference(tmp_path, demo, **env)


def test_the_first_call_writes_the_held_out_instances_and_starts_the_batch_job_once(flow: Callable[..., Flow]) -> None:
    f = flow()
    schedules = len(f.chain.schedules)
    answer = f.inference()
    assert answer.status == 202 and answer.body["outcome"] == "waiting" and answer.body["for"] == "batch_prediction"
    assert answer.body["job"] == "batchPredictionJobs/1"
    held_out, to_rank = f.manifest(*HELD_OUT), f.manifest("unassigned")
    predicted = f.manifest(*HELD_OUT, "unassigned")  # in manifest order
    assert held_out and to_rank and f.instances() == [_instance(row) for row in predicted]  # no training row

    (request,) = f.backend.prediction_requests
    store, paths, settings = f.services.store, RunPaths(f.run_id), f.services.settings
    assert request.run_id == f.run_id and request.task is Task.OBJECT_DETECTION and request.model == "models/9"
    assert request.instances_uri == store.uri(paths.instances)
    assert request.output_uri_prefix == store.uri(paths.prediction_output)
    assert request.confidence_threshold == 0.01  # low: the PR curves and mAP see every box
    assert request.max_predictions == settings.predict.max_predictions
    assert request.display_name == f"lb-predict-{f.run_id}" and request.labels["lb_model_run"] == f.run_id
    assert request.job_key

    record = f.record()
    assert record.jobs["batch_prediction"] == "batchPredictionJobs/1"
    assert record.artifacts["instances"] == store.uri(paths.instances)
    assert record.data_quality["held_out_rows"] == len(held_out)
    assert record.data_quality["rows_to_rank"] == len(to_rank)
    assert record.watch is not None and (record.watch.kind, record.watch.ref) == (
        "batch_prediction",
        "batchPredictionJobs/1",
    )
    assert record.stages["inference"].state is rr.StageState.PENDING  # released while the job runs
    assert f.chain.schedules[schedules:] == [("monitor", f.run_id, record.watch.look)]
    assert f.platform.statuses(f.run_id)[-1]["metadata"]["batch_prediction_job"] == "batchPredictionJobs/1"

    again = f.inference()  # a duplicate delivery
    assert again.status == 202 and again.body["job"] == "batchPredictionJobs/1"
    assert len(f.backend.prediction_requests) == 1 and len(f.backend.predictions) == 1  # started nothing
    assert f.record().watch == record.watch  # the same watch, the same look


def test_predict_on_training_adds_the_training_rows_to_the_instances(flow: Callable[..., Flow]) -> None:
    f = flow(PREDICT_ON_TRAINING="true")
    f.inference()
    rows = f.manifest("training", *HELD_OUT, "unassigned")
    assert {"training", "validation", "test", "unassigned"} == {row.split.value for row in rows}
    assert f.instances() == [_instance(row) for row in rows]


def test_without_predict_unlabeled_only_the_held_out_rows_are_predicted(flow: Callable[..., Flow]) -> None:
    f = flow(PREDICT_UNLABELED="false")
    f.inference()
    assert f.instances() == [_instance(row) for row in f.manifest(*HELD_OUT)]
    assert f.record().data_quality["rows_to_rank"] == 0


def test_the_second_call_uploads_in_recorded_chunks_writes_the_report_and_completes_the_run(
    flow: Callable[..., Flow], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(upload, "UPLOAD_ROWS_PER_CHUNK", 2)
    f = flow()
    f.inference()
    held_out, to_rank = f.manifest(*HELD_OUT), f.manifest("unassigned")
    f.job_finished(f.manifest(*HELD_OUT, "unassigned"))
    answer = f.inference()
    assert answer.status == 200 and answer.body["outcome"] == "complete", answer.body
    assert float(answer.body["map50"]) == pytest.approx(1.0)  # the predictions were the ground truth

    chunks = (len(held_out) + len(to_rank) + 1) // 2
    names = [f"lbchain-{f.run_id}-r0-s00000-{i:03d}" for i in range(chunks)]
    assert [name for name, _rows in f.platform.uploads] == names
    uploaded = f.platform.uploaded(f.run_id)
    assert sum(rows for _name, rows in f.platform.uploads) == len(uploaded)
    for row in held_out:  # every held-out row: its boxes, then its per-row metrics
        mine = [u for u in uploaded if u["dataRow"]["id"] == row.data_row_id]
        assert len([u for u in mine if "bbox" in u]) == len(row.boxes)
        assert any("metricValue" in u for u in mine)
        assert not any(u.get("metricName", "").startswith("al_") for u in mine)
    for row in to_rank:  # every row to rank: its boxes and its uncertainty, no diagnostics (nothing to score)
        mine = [u for u in uploaded if u["dataRow"]["id"] == row.data_row_id]
        assert len([u for u in mine if "bbox" in u]) == len(row.boxes)
        assert {u["metricName"] for u in mine if "metricValue" in u} == set(UNCERTAINTY_METRIC_NAMES)

    record = f.record()
    assert list(record.uploads["chunks"]) == names
    assert all(c["rejected"] == 0 for c in record.uploads["chunks"].values())
    assert record.uploads["accepted"] == len(uploaded)
    report_key = RunPaths(f.run_id).report
    assert record.artifacts["report"] == f.services.store.uri(report_key)
    assert f.services.store.read(report_key).startswith(b"<!DOCTYPE html>")
    assert record.status is rr.RunStatus.COMPLETE and record.stages["inference"].state is rr.StageState.SUCCEEDED
    assert record.metrics["summary"]["map50"] == pytest.approx(1.0)
    last = f.platform.statuses(f.run_id)[-1]
    assert last["status"] == "COMPLETE" and last["metadata"]["predictions_uploaded"] == str(len(uploaded))
    config = json.loads((f.platform.folder(f.run_id) / "config.json").read_text())["chain"]
    assert config["report"]
    listed = record.metrics["label_next"]
    assert listed["strategy"] == "entropy" and listed["rows_ranked"] == len(to_rank)
    assert sorted(r["data_row_id"] for r in listed["rows"]) == sorted(r.data_row_id for r in to_rank)
    assert config["label_next"]["rows"] == [r["data_row_id"] for r in listed["rows"]]
    assert last["metadata"]["label_next"] == f"{len(to_rank)} of {len(to_rank)} rows to rank, by entropy"

    forced = f.inference(force=True)  # a forced re-run: every chunk is recorded, so none goes again
    assert forced.status == 200 and forced.body["outcome"] == "complete"
    assert [name for name, _rows in f.platform.uploads] == names
    assert f.record().status is rr.RunStatus.COMPLETE


def test_a_failed_instance_is_counted_and_neither_uploaded_nor_scored(flow: Callable[..., Flow]) -> None:
    f = flow()
    f.inference()
    held_out = f.manifest(*HELD_OUT)
    failed, predicted = held_out[0], [*held_out[1:], *f.manifest("unassigned")]
    f.job_finished(predicted, failed=[failed])
    answer = f.inference()
    assert answer.status == 200 and answer.body["outcome"] == "complete", answer.body
    assert float(answer.body["map50"]) == pytest.approx(1.0)  # not scored as a miss

    record = f.record()
    assert record.data_quality["failed_predictions"] == {"vertex error 3: Image <image> could not be decoded.": 1}
    assert record.metrics["prediction_problems"] == {}  # nor counted as an image without a prediction
    uploaded = {u["dataRow"]["id"] for u in f.platform.uploaded(f.run_id)}
    assert uploaded == {row.data_row_id for row in predicted}
    metadata = f.platform.statuses(f.run_id)[-1]["metadata"]
    assert metadata["failed_predictions"] == "1"
    assert metadata["failed: vertex error 3: Image <image> could not be decoded."] == "1"
