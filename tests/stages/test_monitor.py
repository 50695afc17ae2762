"""`monitor` watching a training of the scripted backend: it backs off, hands off once, fails and gives up.

Like the `train` tests: real run record and model run, scripted backend, recording chain (`tests/fakes.py`).
"""

from __future__ import annotations

import threading
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


def test_monitor_backs_off_without_sleeping_then_hands_off_exactly_once(etl_done) -> None:
    services, backend, chain, run_id = etl_done
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


def test_a_failed_training_fails_the_model_run_with_the_backend_error_and_link(etl_done) -> None:
    services, backend, chain, run_id = etl_done
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


def test_monitor_gives_up_after_the_maximum_wait_and_cancels_training(etl_done) -> None:
    services, backend, _chain, run_id = etl_done
    _train(services, run_id)
    services.runs.update(run_id, lambda r: setattr(r.watch, "since", r.watch.since - 10 * 86_400))
    answer = _monitor(services, run_id)
    assert answer.body["outcome"] == "failed" and "MONITOR_MAX_WAIT_S" in answer.body["error"]
    assert "cancel_training pipelines/42" in backend.calls


def test_monitor_never_cancels_a_training_within_its_budget(etl_done) -> None:
    services, backend, _chain, run_id = etl_done
    backend.deadline_s = 30 * 86_400  # a big budget: longer than MONITOR_MAX_WAIT_S (3 days)
    _train(services, run_id)
    services.runs.update(run_id, lambda r: setattr(r.watch, "since", r.watch.since - 10 * 86_400))
    answer = _monitor(services, run_id)
    assert answer.body["outcome"] == "waiting"
    assert not [c for c in backend.calls if c.startswith("cancel_training")]
    services.runs.update(run_id, lambda r: setattr(r.watch, "since", r.watch.since - 30 * 86_400))
    over = _monitor(services, run_id)
    assert over.body["outcome"] == "failed" and "training budget plus MONITOR_TRAINING_MARGIN_S" in over.body["error"]
