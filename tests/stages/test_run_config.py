"""The model run's config sets the run's own settings: read once at ETL, frozen into the run record,
used by train, monitor and inference; a bad one fails the run at ETL before anything starts."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from shared.services import Services
from shared.stages.model_run import on_train_model
from shared.training.port import JobState
from tests.demo_run import DemoRun
from tests.fakes import RecordingChain, RecordingModelRuns, ScriptedBackend
from tests.stages.test_inference import Flow
from tests.stages.world import call, create_run, services_for

CONFIG = {
    "train": {"steps": 40, "learning_rate": 0.01, "confidence_threshold": 0.5, "max_predictions": 20},
    "experiment": {"owner": "ana", "sweep": 3},  # the user's own keys
}


class Run:
    def __init__(self, tmp: Path, demo: DemoRun, config: dict[str, Any] | None, **env: str) -> None:
        root = demo.root  # the test's own copy of the demo model run
        self.folder = demo.folder
        if config is not None:
            self.write_config(config)
        self.platform, self.backend, self.chain = RecordingModelRuns(root), ScriptedBackend(), RecordingChain()
        self.services: Services = services_for(tmp, self.platform, backend=self.backend, chain=self.chain, **env)
        self.run_id, self.bucket = demo.model_run_id, tmp / "bucket"
        create_run(self.services, self.run_id, model_id=demo.model_id)

    def write_config(self, config: dict[str, Any]) -> None:
        (self.folder / "config.json").write_text(json.dumps(config))

    def config(self) -> dict[str, Any]:
        return json.loads((self.folder / "config.json").read_text())

    def record(self) -> dict[str, Any]:
        return json.loads((self.bucket / "runs" / self.run_id / "run.json").read_text())

    def to_inference(self) -> None:
        assert call(self.services, "etl", self.run_id).body["outcome"] == "succeeded"
        assert call(self.services, "train", self.run_id).body["outcome"] == "training_started"
        assert call(self.services, "monitor", self.run_id).body["outcome"] == "waiting"  # a look while it trains
        self.backend.training_state = JobState.SUCCEEDED
        assert call(self.services, "monitor", self.run_id).body["outcome"] == "handed_off"
        assert call(self.services, "inference", self.run_id).status == 202  # the batch job started


def test_the_config_sets_the_runs_settings_for_every_stage_and_they_are_shown(tmp_path: Path, demo: DemoRun) -> None:
    run = Run(tmp_path, demo, CONFIG)
    run.to_inference()
    settings = run.record()["settings"]
    assert settings["training"] == {"steps": 40, "train_seconds": 90.0, "learning_rate": 0.01}
    assert (settings["confidence_threshold"], settings["max_predictions"]) == (0.5, 20)
    assert settings["from_config"] == ["confidence_threshold", "learning_rate", "max_predictions", "steps"]
    (training,) = run.backend.training_requests
    assert training.settings == {"steps": 40, "train_seconds": 90.0, "learning_rate": 0.01}
    assert run.backend.deadline_settings[-1] == training.settings  # monitor's limit follows the run's budget
    (prediction,) = run.backend.prediction_requests
    assert (prediction.confidence_threshold, prediction.max_predictions) == (0.01, 20)  # scans low for the curves
    preparing = next(s for s in run.platform.statuses(run.run_id) if s["status"] == "PREPARING_DATA")
    assert preparing["metadata"]["setting: steps"] == "40 (from config)"
    assert preparing["metadata"]["setting: train_seconds"] == "90.0"


def test_without_a_config_the_deployments_settings_are_frozen(tmp_path: Path, demo: DemoRun) -> None:
    run = Run(tmp_path, demo, None, LOCAL_ENGINE_TRAIN_SECONDS="12", PREDICT_MAX_PREDICTIONS="7")
    run.to_inference()
    settings = run.record()["settings"]
    assert settings["training"] == {"steps": None, "train_seconds": 12.0} and settings["from_config"] == []
    assert run.backend.prediction_requests[0].max_predictions == 7


def test_a_config_edited_during_the_run_changes_nothing_and_the_results_keep_the_users_keys(
    tmp_path: Path, demo: DemoRun
) -> None:
    run = Run(tmp_path, demo, CONFIG)
    assert call(run.services, "etl", run.run_id).body["outcome"] == "succeeded"
    edited = {"train": {"steps": 5000, "confidence_threshold": 0.9}, "experiment": {"owner": "bo"}}
    run.write_config(edited)  # the user edits the config while the run trains
    assert call(run.services, "train", run.run_id).body["outcome"] == "training_started"
    assert run.backend.training_requests[0].settings["steps"] == 40
    run.backend.training_state = JobState.SUCCEEDED
    assert call(run.services, "monitor", run.run_id).body["outcome"] == "handed_off"
    assert call(run.services, "inference", run.run_id).status == 202
    assert run.backend.prediction_requests[0].max_predictions == 20
    record = run.record()
    assert record["settings"]["confidence_threshold"] == 0.5
    assert next(e for e in record["events"] if e["event"] == "settings")["detail"]["from_config"] == [
        "confidence_threshold",
        "learning_rate",
        "max_predictions",
        "steps",
    ]


@pytest.mark.parametrize(
    ("train", "message"),
    [
        ({"steps": "many"}, "train.steps must be an integer, not 'many'"),
        ({"epochs": 3}, "unknown key train.epochs; the keys are backbone, batch_size, confidence_threshold"),
        ({"budget_milli_node_hours": 30000}, "train.budget_milli_node_hours is not a setting of the local backend"),
        ({"confidence_threshold": 2}, "train.confidence_threshold must be between 0 and 1, not 2"),
    ],
)
def test_a_bad_config_fails_the_run_at_etl_and_nothing_starts(
    tmp_path: Path, demo: DemoRun, train: dict[str, Any], message: str
) -> None:
    run = Run(tmp_path, demo, {"train": train, "experiment": 1})
    answer = call(run.services, "etl", run.run_id)
    assert answer.status == 200 and answer.body["outcome"] == "failed"
    assert message in answer.body["error"]
    assert "fix the model run's config and click Train model again" in answer.body["error"]
    record = run.record()
    assert record["status"] == "failed" and record["settings"] == {}
    assert "export_task" not in record["artifacts"]  # no export was started
    assert not (run.bucket / "runs" / run.run_id / "images").exists()  # no image staged
    assert run.chain.handoffs == [] and run.backend.calls == []  # no job
    statuses = run.platform.statuses(run.run_id)
    assert statuses[-1]["status"] == "FAILED" and message in statuses[-1]["error_message"]
    assert run.config() == {"train": train, "experiment": 1}  # the config is left as the user wrote it


def test_a_fixed_config_and_train_model_clicked_again_resumes_with_the_fixed_settings(
    tmp_path: Path, demo: DemoRun
) -> None:
    run = Run(tmp_path, demo, {"train": {"steps": "many"}})
    assert call(run.services, "etl", run.run_id).body["outcome"] == "failed"
    run.write_config({"train": {"steps": 30}})
    click = json.dumps({"modelRunId": run.run_id, "modelType": "local_detector"}).encode()
    resumed = on_train_model(run.services, click)  # Labelbox's "Train model", signature checked
    assert resumed.status == 202 and resumed.body["message"] == "run resumed from etl"
    assert call(run.services, "etl", run.run_id).body["outcome"] == "succeeded"
    assert run.record()["settings"]["training"]["steps"] == 30


def test_the_finished_run_writes_its_results_under_chain_beside_the_users_keys_and_shows_its_settings(
    tmp_path: Path, demo: DemoRun
) -> None:
    run = Run(tmp_path, demo, CONFIG)
    run.to_inference()
    run.write_config({**CONFIG, "experiment": {"owner": "bo"}})  # edited while the batch job ran
    flow = Flow(run.services, run.platform, run.backend, run.chain, run.run_id)
    flow.job_finished(flow.manifest("validation", "test"))
    done = call(run.services, "inference", run.run_id)
    assert done.status == 200 and done.body["outcome"] == "complete", done.body
    config = run.config()
    assert config["train"] == CONFIG["train"] and config["experiment"] == {"owner": "bo"}  # the user's, as edited
    assert config["chain"]["settings"]["training"]["steps"] == 40
    assert 0 <= config["chain"]["metrics"]["map50"] <= 1
    final = run.platform.statuses(run.run_id)[-1]
    assert final["status"] == "COMPLETE" and final["metadata"]["setting: max_predictions"] == "20 (from config)"
    report = (run.bucket / "runs" / run.run_id / "report.html").read_text()
    assert "Setting: learning rate" in report and "0.01 (from config)" in report
