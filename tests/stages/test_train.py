"""`train` against a scripted training backend: duplicates start nothing twice, failed jobs start anew.

The stage runs for real on a real run record (a folder store) and a real file-backed model run; only the
training backend (our own port) is scripted, and the chain records what it was asked to do
(`tests/fakes.py`). The run starts where ETL left it (`etl_done`, in conftest.py).
"""

from __future__ import annotations

from typing import Any

from shared.domain import run_record as rr
from shared.platform.local_model_run import LocalModelRuns
from shared.services import Services
from shared.stages.runner import StageAnswer
from shared.training.port import JobState
from tests.stages.world import call


def _train(services: Services, run_id: str, **flags: Any) -> StageAnswer:
    return call(services, "train", run_id, **flags)


def _monitor(services: Services, run_id: str, look: int | None = None) -> StageAnswer:
    return call(services, "monitor", run_id, look=look)


def test_a_duplicate_train_call_starts_no_second_job(etl_done) -> None:
    services, backend, chain, run_id = etl_done
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


def test_a_lost_monitor_look_is_rescheduled_by_a_repeated_train_call(etl_done) -> None:
    services, backend, chain, run_id = etl_done
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


def test_dataset_import_still_running_is_watched_then_train_resumes(etl_done) -> None:
    services, backend, chain, run_id = etl_done
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


def test_a_re_run_of_train_after_its_job_failed_starts_a_new_job(etl_done) -> None:
    services, backend, _chain, run_id = etl_done
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


def test_a_forced_train_on_a_failed_job_starts_a_new_job_and_the_run_moves_on(etl_done) -> None:
    services, backend, chain, run_id = etl_done
    _train(services, run_id)
    backend.training_state = JobState.FAILED
    _monitor(services, run_id)
    forced = _train(services, run_id, force=True)  # the recorded job still reads FAILED
    assert forced.body["outcome"] == "training_started"
    backend.training_state = JobState.SUCCEEDED
    assert _monitor(services, run_id).body["outcome"] == "handed_off"
    assert chain.handoffs == [("inference", run_id)]


def test_a_training_start_whose_record_write_was_lost_finds_the_job_instead_of_starting_another(etl_done) -> None:
    services, backend, _chain, run_id = etl_done
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


def test_a_plain_re_run_of_train_whose_job_died_before_monitor_noticed_restarts_it(etl_done) -> None:
    services, backend, chain, run_id = etl_done
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


def test_a_start_the_backend_refuses_fails_the_run_with_what_to_change(etl_done) -> None:
    services, backend, _chain, run_id = etl_done
    backend.refuse_training = "NVIDIA_L4 attaches to g2-standard-* machines, not n1-standard-8; change the machine"
    answer = _train(services, run_id)
    assert answer.status == 200 and answer.body["outcome"] == "failed"  # a 200: the queue must not retry it
    record = services.runs.get(run_id)
    assert record.status is rr.RunStatus.FAILED
    assert "training refused: NVIDIA_L4 attaches to g2-standard-*" in record.error
    statuses = LocalModelRuns(services.platform.root).statuses(run_id)
    assert statuses[-1]["status"] == "FAILED" and "change the machine" in statuses[-1]["error_message"]
    assert backend.training_requests[0].backend == record.backend  # the run's backend travels with every start
