"""`train` and `monitor` against a scripted training backend: duplicates start nothing twice.

The stages run for real on a real run record (a folder store) and a real file-backed model run; only the
training backend (our own port) is scripted, and the chain records what it was asked to do.
"""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from shared.bootstrap import build_services
from shared.config import load_settings
from shared.domain import run_record as rr
from shared.platform.local_model_run import LocalModelRuns
from shared.services import Services
from shared.stages.monitor import run_monitor
from shared.stages.runner import StageCall, run_stage
from shared.stages.train import run_train, train_already_done
from shared.store.local_folder import LocalFolderStore
from shared.training.port import DatasetRequest, JobRef, JobState, JobStatus, TrainingRequest
from tests.core.conftest import DemoRun


class ScriptedBackend:
    """Starts are idempotent by job key, as the real backends are: the same key gives the same job."""

    name = "scripted"

    def __init__(self) -> None:
        self.calls: list[str] = []
        self.training_state = JobState.RUNNING
        self.import_state = JobState.SUCCEEDED
        self.error: str | None = None
        self.deadline_s: float | None = None
        self.trainings: dict[str, str] = {}  # job key -> pipeline

    def start_dataset_import(self, request: DatasetRequest) -> JobRef:
        self.calls.append("start_dataset_import")
        return JobRef("datasets/1/operations/7")

    def dataset_status(self, ref: str) -> JobStatus:
        self.calls.append(f"dataset_status {ref}")
        return JobStatus(self.import_state, result="datasets/1" if self.import_state is JobState.SUCCEEDED else None)

    def start_training(self, request: TrainingRequest) -> JobRef:
        self.calls.append(f"start_training {request.dataset}")
        ref = self.trainings.setdefault(request.job_key, f"pipelines/{41 + len(self.trainings) + 1}")
        return JobRef(ref, link=f"https://console.example/{ref}")

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

    def training_deadline_s(self, task) -> float | None:
        return self.deadline_s


class RecordingChain:
    def __init__(self) -> None:
        self.handoffs: list[tuple[str, str]] = []
        self.keys: list[str] = []
        self.schedules: list[tuple[str, str, int]] = []
        self._named: set[tuple[str, str, int]] = set()
        self._lock = threading.Lock()

    def hand_off(self, stage: str, run_id: str, *, key: str) -> None:
        with self._lock:
            self.handoffs.append((stage, run_id))
            self.keys.append(key)

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
    services = build_services(
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


def _train(services: Services, run_id: str, **flags):
    return run_stage(services, StageCall(run_id, **flags), "train", run_train, on_done=train_already_done)


def _monitor(services: Services, run_id: str, look: int | None = None):
    return run_stage(services, StageCall(run_id, look=look), "monitor", run_monitor)


def test_a_duplicate_train_call_starts_no_second_job(world) -> None:
    services, backend, chain, run_id = world
    first = _train(services, run_id)
    assert first.status == 202 and first.body["job"] == "pipelines/42"
    assert backend.calls.count("start_training datasets/1") == 1
    assert chain.schedules == [("monitor", run_id, 1)]

    again = _train(services, run_id)
    assert again.status == 200 and again.body["outcome"] == "already_done"
    # a re-run asks for a look now: whether or not the first look still comes, one chain of looks goes on
    assert again.body["monitor_rescheduled"] is True and chain.schedules[-1] == ("monitor", run_id, 2)
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
    polls = backend.calls.count("training_status pipelines/42")
    stale = _monitor(services, run_id, look=1)  # the lost look turns up after all
    assert stale.body["outcome"] == "stale_look"
    assert backend.calls.count("training_status pipelines/42") == polls  # it did not even look at the job
    current = _monitor(services, run_id, look=2)
    assert current.body["outcome"] == "waiting" and chain.schedules[-1] == ("monitor", run_id, 3)


def test_monitor_backs_off_without_sleeping_then_hands_off_exactly_once(world) -> None:
    services, backend, chain, run_id = world
    _train(services, run_id)
    delays = []
    for _ in range(3):
        answer = _monitor(services, run_id)
        assert answer.body["outcome"] == "waiting"
        delays.append(answer.body["next_look_in_s"])
    assert delays == sorted(delays) and delays[-1] <= services.settings.monitor.max_delay_s
    assert [s[2] for s in chain.schedules] == [1, 2, 3, 4]  # every look has its own name

    backend.training_state = JobState.SUCCEEDED
    results = []
    threads = [threading.Thread(target=lambda: results.append(_monitor(services, run_id))) for _ in range(5)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    results.append(_monitor(services, run_id))  # a late duplicate delivery
    assert chain.handoffs == [("inference", run_id)]
    record = services.runs.get(run_id)
    assert record.jobs["model"] == "models/9" and record.watch is None
    assert sum(r.body.get("outcome") == "handed_off" for r in results) == 1


def test_a_failed_training_fails_the_model_run_with_the_backend_error_and_link(world) -> None:
    services, backend, chain, run_id = world
    _train(services, run_id)
    backend.training_state, backend.error = JobState.FAILED, "Quota exceeded for aiplatform.googleapis.com " * 20
    answer = _monitor(services, run_id)
    assert answer.body["outcome"] == "failed" and answer.body["failed_stage"] == "train"
    record = services.runs.get(run_id)
    assert record.status is rr.RunStatus.FAILED and "Quota exceeded" in record.error
    assert record.error.startswith("train failed: training failed")
    assert record.stages["train"].state is rr.StageState.FAILED  # the stage to re-run is the one that started it
    assert record.stages["monitor"].state is rr.StageState.PENDING and record.stages["monitor"].owner is None
    last = LocalModelRuns(services.platform.root).statuses(run_id)[-1]
    assert last["status"] == "FAILED" and len(last["error_message"]) == 255
    assert chain.handoffs == []


def test_monitor_gives_up_after_the_maximum_wait_and_cancels_training(world) -> None:
    services, backend, _chain, run_id = world
    _train(services, run_id)
    services.runs.update(run_id, lambda r: setattr(r.watch, "since", r.watch.since - 10 * 86_400))
    answer = _monitor(services, run_id)
    assert answer.body["outcome"] == "failed" and "MONITOR_MAX_WAIT_S" in answer.body["error"]
    assert "cancel_training pipelines/42" in backend.calls


def test_dataset_import_still_running_is_watched_then_train_resumes(world) -> None:
    services, backend, chain, run_id = world
    backend.import_state = JobState.RUNNING
    first = _train(services, run_id)
    assert first.status == 202 and first.body["for"] == "dataset_import"
    assert not any(c.startswith("start_training") for c in backend.calls)
    backend.import_state = JobState.SUCCEEDED
    handed = _monitor(services, run_id)
    assert handed.body["outcome"] == "handed_off" and chain.handoffs == [("train", run_id)]
    resumed = _train(services, run_id)
    assert resumed.status == 202 and resumed.body["outcome"] == "training_started"
    assert backend.calls.count("start_dataset_import") == 1


def test_a_re_run_of_train_after_its_job_failed_starts_a_new_job(world) -> None:
    services, backend, _chain, run_id = world
    _train(services, run_id)
    backend.training_state, backend.error = JobState.FAILED, "The replica workerpool0-0 exited with a non-zero status"
    _monitor(services, run_id)

    rerun = _train(services, run_id)  # a plain re-run: no force needed
    assert rerun.status == 202 and rerun.body["outcome"] == "training_started"
    assert rerun.body["job"] == "pipelines/43"  # a new launch, a new job
    record = services.runs.get(run_id)
    assert record.status is rr.RunStatus.RUNNING and record.jobs["training"] == "pipelines/43"
    assert [j["ref"] for j in record.failed_jobs] == ["pipelines/42"]
    assert record.watch is not None and record.watch.ref == "pipelines/43"


def test_a_forced_train_on_a_failed_job_starts_a_new_job_and_the_run_moves_on(world) -> None:
    services, backend, chain, run_id = world
    _train(services, run_id)
    backend.training_state = JobState.FAILED
    _monitor(services, run_id)
    forced = _train(services, run_id, force=True)  # the recorded job still reads FAILED
    assert forced.body["outcome"] == "training_started"
    backend.training_state = JobState.SUCCEEDED
    assert _monitor(services, run_id).body["outcome"] == "handed_off"
    assert chain.handoffs == [("inference", run_id)]


def test_a_training_start_whose_record_write_was_lost_finds_the_job_instead_of_starting_another(world) -> None:
    services, backend, _chain, run_id = world
    real_update = services.runs.update
    lost = {"once": True}

    def losing_update(run, mutate):
        def lossy(r):
            had = "training" in r.jobs
            result = mutate(r)
            if lost["once"] and not had and "training" in r.jobs:  # the write that records the job is lost
                lost["once"] = False
                raise ConnectionError("the record write timed out")
            return result

        return real_update(run, lossy)

    services.runs.update = losing_update  # type: ignore[method-assign]
    crashed = _train(services, run_id)
    assert crashed.status == 500
    services.runs.update = real_update  # type: ignore[method-assign]
    # the crash was recorded as a failure of train; a re-run resumes it
    assert "training" not in services.runs.get(run_id).jobs and services.runs.get(run_id).job_keys["training"]
    again = _train(services, run_id)
    assert again.body["outcome"] == "training_started" and again.body["job"] == "pipelines/42"
    assert backend.calls.count("start_training datasets/1") == 2  # asked twice, with the same launch key...
    assert len(backend.trainings) == 1  # ...so one job: never a second training


def test_monitor_never_cancels_a_training_within_its_budget(world) -> None:
    services, backend, _chain, run_id = world
    backend.deadline_s = 30 * 86_400  # a big budget: longer than MONITOR_MAX_WAIT_S (3 days)
    _train(services, run_id)
    services.runs.update(run_id, lambda r: setattr(r.watch, "since", r.watch.since - 10 * 86_400))
    answer = _monitor(services, run_id)
    assert answer.body["outcome"] == "waiting"
    assert not [c for c in backend.calls if c.startswith("cancel_training")]
    services.runs.update(run_id, lambda r: setattr(r.watch, "since", r.watch.since - 30 * 86_400))
    over = _monitor(services, run_id)
    assert over.body["outcome"] == "failed" and "training budget plus MONITOR_TRAINING_MARGIN_S" in over.body["error"]


def test_a_plain_re_run_of_train_whose_job_died_before_monitor_noticed_restarts_it(world) -> None:
    services, backend, chain, run_id = world
    _train(services, run_id)  # train succeeded: the job runs, monitor will look later
    backend.training_state = JobState.FAILED  # the engine process was killed
    rerun = _train(services, run_id)  # no force: the answer is not "already_done"
    assert rerun.status == 202 and rerun.body["outcome"] == "training_started"
    assert rerun.body["job"] == "pipelines/43"
    record = services.runs.get(run_id)
    assert record.watch is not None and record.watch.ref == "pipelines/43"
    assert [j["ref"] for j in record.failed_jobs] == ["pipelines/42"]
    backend.training_state = JobState.SUCCEEDED
    assert _monitor(services, run_id, look=record.watch.look).body["outcome"] == "handed_off"
    assert chain.handoffs == [("inference", run_id)]
