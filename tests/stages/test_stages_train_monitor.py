"""`train` and `monitor` against a scripted training backend: duplicates start nothing twice.

The stages run for real on a real run record (a folder store) and a real file-backed model run; only the
training backend (our own port) is scripted, and the chain records what it was asked to do.
"""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from shared import run_record as rr
from shared.bootstrap import Services
from shared.config import load_settings
from shared.platform.local_model_run import LocalModelRuns
from shared.stages.monitor import run_monitor
from shared.stages.runner import run_stage
from shared.stages.train import run_train, train_already_done
from shared.store.local_folder import LocalFolderStore
from shared.training.port import JobRef, JobState, JobStatus
from tests.core.conftest import DemoRun


class ScriptedBackend:
    name = "scripted"

    def __init__(self) -> None:
        self.calls: list[str] = []
        self.training_state = JobState.RUNNING
        self.import_state = JobState.SUCCEEDED
        self.error: str | None = None

    def start_dataset_import(self, run_id, task, import_uri, labels) -> JobRef:
        self.calls.append("start_dataset_import")
        return JobRef("datasets/1/operations/7")

    def dataset_status(self, ref: str) -> JobStatus:
        self.calls.append(f"dataset_status {ref}")
        return JobStatus(self.import_state, result="datasets/1" if self.import_state is JobState.SUCCEEDED else None)

    def start_training(self, request) -> JobRef:
        self.calls.append(f"start_training {request.dataset}")
        return JobRef("pipelines/42", link="https://console.example/pipelines/42")

    def training_status(self, ref: str) -> JobStatus:
        self.calls.append(f"training_status {ref}")
        result = "models/9" if self.training_state is JobState.SUCCEEDED else None
        return JobStatus(
            self.training_state,
            error=self.error,
            result=result,
            progress={"step": 3},
            link="https://console.example/pipelines/42",
        )

    def cancel_training(self, ref: str) -> None:
        self.calls.append(f"cancel_training {ref}")


class RecordingChain:
    def __init__(self) -> None:
        self.handoffs: list[tuple[str, str]] = []
        self.schedules: list[tuple[str, str, int]] = []
        self._named: set[tuple[str, str, int]] = set()
        self._lock = threading.Lock()

    def hand_off(self, stage: str, run_id: str) -> None:
        with self._lock:
            self.handoffs.append((stage, run_id))

    def schedule(self, stage: str, run_id: str, *, delay_s: float, attempt: int) -> bool:
        with self._lock:
            self.schedules.append((stage, run_id, attempt))
            if (stage, run_id, attempt) in self._named:
                return False
            self._named.add((stage, run_id, attempt))
            return True


@pytest.fixture
def world(tmp_path: Path, demo: DemoRun) -> tuple[Services, ScriptedBackend, RecordingChain, str]:
    settings = load_settings(
        {
            "CHAIN_MODE": "local",
            "LOCAL_DATA_DIR": str(tmp_path),
            "WEBHOOK_SECRET": "a-webhook-secret-for-the-stage-tests",
            **{f"{s}_URL": f"http://127.0.0.1:9/{s}" for s in ("ETL", "TRAIN", "MONITOR", "INFERENCE")},
        }
    )
    backend, chain = ScriptedBackend(), RecordingChain()
    services = Services(
        settings,
        store=LocalFolderStore(tmp_path / "bucket"),
        platform=LocalModelRuns(demo.root),
        backend=backend,
        chain=chain,
    )
    record = rr.new_run(
        run_id=demo.model_run_id,
        model_run_id=demo.model_run_id,
        model_type="local_detector",
        task="object_detection",
        backend="local",
        model_id=demo.model_id,
        now=services.clock(),
    )
    record.artifacts["import_jsonl"] = "gs://local-bucket/runs/x/etl/vertex_import-*.jsonl"
    record.stages["etl"].state = rr.StageState.SUCCEEDED
    assert services.runs.create(record)
    return services, backend, chain, demo.model_run_id


def _train(services: Services, run_id: str):
    return run_stage(services, run_id, "train", run_train, on_done=train_already_done)


def test_a_duplicate_train_call_starts_no_second_job(world) -> None:
    services, backend, chain, run_id = world
    first = _train(services, run_id)
    assert first.status == 202 and first.body["job"] == "pipelines/42"
    assert backend.calls.count("start_training datasets/1") == 1
    assert chain.schedules == [("monitor", run_id, 1)]

    again = _train(services, run_id)
    assert again.status == 200 and again.body["outcome"] == "already_done"
    assert again.body["monitor_rescheduled"] is False  # the look scheduled first is still pending
    assert backend.calls.count("start_training datasets/1") == 1 and "start_dataset_import" in backend.calls
    assert backend.calls.count("start_dataset_import") == 1

    record = services.runs.get(run_id)
    assert record.jobs["training"] == "pipelines/42" and record.links["training"].startswith("https://")
    statuses = LocalModelRuns(services.platform.root).statuses(run_id)
    assert statuses[-1]["status"] == "TRAINING_MODEL" and statuses[-1]["metadata"]["training_link"]


def test_a_lost_monitor_look_is_rescheduled_by_a_repeated_train_call(world) -> None:
    services, backend, chain, run_id = world
    _train(services, run_id)
    services.runs.update(run_id, lambda r: setattr(r.watch, "next_look_at", 0.0))  # long overdue: lost
    again = _train(services, run_id)
    assert again.body["monitor_rescheduled"] is True
    assert chain.schedules[-1] == ("monitor", run_id, 2)
    assert backend.calls.count("start_training datasets/1") == 1


def test_monitor_backs_off_without_sleeping_then_hands_off_exactly_once(world) -> None:
    services, backend, chain, run_id = world
    _train(services, run_id)
    delays = []
    for _ in range(3):
        answer = run_stage(services, run_id, "monitor", run_monitor)
        assert answer.body["outcome"] == "waiting"
        delays.append(answer.body["next_look_in_s"])
    assert delays == sorted(delays) and delays[-1] <= services.settings.monitor_max_delay_s
    assert [s[2] for s in chain.schedules] == [1, 2, 3, 4]  # every look has its own name

    backend.training_state = JobState.SUCCEEDED
    results = []
    threads = [
        threading.Thread(target=lambda: results.append(run_stage(services, run_id, "monitor", run_monitor)))
        for _ in range(5)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    results.append(run_stage(services, run_id, "monitor", run_monitor))  # a late duplicate delivery
    assert chain.handoffs == [("inference", run_id)]
    record = services.runs.get(run_id)
    assert record.jobs["model"] == "models/9" and record.watch is None
    assert sum(r.body.get("outcome") == "handed_off" for r in results) == 1


def test_a_failed_training_fails_the_model_run_with_the_backend_error_and_link(world) -> None:
    services, backend, chain, run_id = world
    _train(services, run_id)
    backend.training_state, backend.error = JobState.FAILED, "Quota exceeded for aiplatform.googleapis.com " * 20
    answer = run_stage(services, run_id, "monitor", run_monitor)
    assert answer.body["outcome"] == "failed"
    record = services.runs.get(run_id)
    assert record.status is rr.RunStatus.FAILED and "Quota exceeded" in record.error
    last = LocalModelRuns(services.platform.root).statuses(run_id)[-1]
    assert last["status"] == "FAILED" and len(last["error_message"]) == 255
    assert chain.handoffs == []


def test_monitor_gives_up_after_the_maximum_wait_and_cancels_training(world) -> None:
    services, backend, _chain, run_id = world
    _train(services, run_id)
    services.runs.update(run_id, lambda r: setattr(r.watch, "since", r.watch.since - 10 * 86_400))
    answer = run_stage(services, run_id, "monitor", run_monitor)
    assert answer.body["outcome"] == "failed" and "MONITOR_MAX_WAIT_S" in answer.body["error"]
    assert "cancel_training pipelines/42" in backend.calls


def test_dataset_import_still_running_is_watched_then_train_resumes(world) -> None:
    services, backend, chain, run_id = world
    backend.import_state = JobState.RUNNING
    first = _train(services, run_id)
    assert first.status == 202 and first.body["for"] == "dataset_import"
    assert not any(c.startswith("start_training") for c in backend.calls)
    backend.import_state = JobState.SUCCEEDED
    handed = run_stage(services, run_id, "monitor", run_monitor)
    assert handed.body["outcome"] == "handed_off" and chain.handoffs == [("train", run_id)]
    resumed = _train(services, run_id)
    assert resumed.status == 202 and resumed.body["outcome"] == "training_started"
    assert backend.calls.count("start_dataset_import") == 1
