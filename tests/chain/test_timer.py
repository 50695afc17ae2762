"""The local "call this stage later": a schedule in a folder that outlives the process that wrote it."""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator, Mapping
from pathlib import Path

import pytest

from shared.chain.port import HandOffFailed
from shared.chain.timer import TimerScheduler

WAIT = 10.0  # generous: only bounds a hang, never asserts speed
REPO = Path(__file__).resolve().parents[2]


class Deliveries:
    def __init__(self, count: int = 1) -> None:
        self.calls: list[tuple[str, str]] = []
        self.bodies: list[dict[str, object]] = []
        self.remaining = count
        self.done = threading.Event()
        self.lock = threading.Lock()

    def __call__(self, stage: str, body: Mapping[str, object]) -> None:
        with self.lock:
            self.calls.append((stage, str(body["run_id"])))
            self.bodies.append(dict(body))
            self.remaining -= 1
            if self.remaining <= 0:
                self.done.set()


@pytest.fixture
def make(tmp_path: Path) -> Iterator:
    made: list[TimerScheduler] = []

    def build(deliver, **options) -> TimerScheduler:
        options.setdefault("sweep_s", 0.05)
        scheduler = TimerScheduler(deliver, tmp_path / "schedule", **options)
        made.append(scheduler)
        return scheduler

    yield build
    for scheduler in made:
        scheduler.stop()


def test_a_call_is_delivered_after_its_delay_with_its_look_number(make) -> None:
    deliver = Deliveries()
    scheduler = make(deliver)
    assert scheduler.schedule("monitor", "run-1", delay_s=0.05, attempt=1) is True
    assert deliver.done.wait(WAIT)
    assert deliver.calls == [("monitor", "run-1")]
    assert deliver.bodies == [{"run_id": "run-1", "look": 1}]


def test_scheduling_does_not_block_the_caller(make) -> None:
    release = threading.Event()
    delivered = threading.Event()

    def slow(stage: str, body: Mapping[str, object]) -> None:
        release.wait(WAIT)
        delivered.set()

    scheduler = make(slow)
    assert scheduler.schedule("monitor", "run-1", delay_s=0, attempt=1)
    assert not delivered.is_set()  # schedule() returned while the delivery is still waiting
    release.set()
    assert delivered.wait(WAIT)


def test_the_same_call_scheduled_twice_is_delivered_once_even_after_it_fired(make) -> None:
    deliver = Deliveries(count=2)
    scheduler = make(deliver)
    assert scheduler.schedule("monitor", "run-1", delay_s=0.05, attempt=3) is True
    assert scheduler.schedule("monitor", "run-1", delay_s=0.0, attempt=3) is False
    assert scheduler.schedule("monitor", "run-2", delay_s=0.05, attempt=3) is True  # another run
    assert deliver.done.wait(WAIT)
    assert sorted(deliver.calls) == [("monitor", "run-1"), ("monitor", "run-2")]
    assert scheduler.schedule("monitor", "run-1", delay_s=0.0, attempt=3) is False


def test_another_attempt_or_stage_is_another_call(make) -> None:
    deliver = Deliveries(count=3)
    scheduler = make(deliver)
    assert scheduler.schedule("monitor", "run-1", delay_s=0, attempt=1)
    assert scheduler.schedule("monitor", "run-1", delay_s=0, attempt=2)
    assert scheduler.schedule("inference", "run-1", delay_s=0, attempt=1)
    assert deliver.done.wait(WAIT)
    assert sorted(deliver.calls) == [("inference", "run-1"), ("monitor", "run-1"), ("monitor", "run-1")]


def test_a_failed_delivery_is_retried_with_backoff_then_given_up_and_logged_not_raised(
    make, caplog: pytest.LogCaptureFixture
) -> None:
    tries: list[str] = []
    gave_up = threading.Event()

    def unreachable(stage: str, body: Mapping[str, object]) -> None:
        tries.append(stage)
        if len(tries) == 3:
            gave_up.set()
        raise HandOffFailed(f"could not reach {stage} for run {body['run_id']} (ConnectionError)", stage=stage)

    told: list[tuple[str, dict[str, object], str]] = []
    scheduler = make(unreachable, redeliveries=2, first_retry_s=0.01, on_give_up=lambda *call: told.append(call))
    with caplog.at_level(logging.WARNING, logger="shared.chain.timer"):
        assert scheduler.schedule("monitor", "run-1", delay_s=0, attempt=1)
        assert gave_up.wait(WAIT)
        scheduler.stop()
    assert tries == ["monitor"] * 3  # the first delivery and two redeliveries
    assert "delivering again" in caplog.text
    assert "gave up a call of monitor after 3 deliveries: could not reach monitor for run run-1" in caplog.text
    assert scheduler.pending() == []
    ((stage, body, why),) = told  # the chain is told, so it can fail the run with a message
    assert (stage, body) == ("monitor", {"run_id": "run-1", "look": 1})
    assert why.endswith("gave up after 3 deliveries")


def test_a_refused_call_is_given_up_at_once(make) -> None:
    tries: list[str] = []
    told = threading.Event()

    def refused(stage: str, body: Mapping[str, object]) -> None:
        tries.append(stage)
        raise HandOffFailed("etl answered run run-1 with HTTP 400: bad", stage=stage, final=True)

    scheduler = make(refused, redeliveries=5, first_retry_s=0.01, on_give_up=lambda *call: told.set())
    scheduler.schedule_call("etl", {"run_id": "run-1"}, key="handoff:etl", delay_s=0)
    assert told.wait(WAIT)
    assert tries == ["etl"]


def test_a_call_the_stage_kept_refusing_as_busy_is_dropped_without_failing_the_run(make) -> None:
    tries: list[str] = []
    done = threading.Event()

    def busy(stage: str, body: Mapping[str, object]) -> None:
        tries.append(stage)
        if len(tries) == 2:
            done.set()
        raise HandOffFailed("etl answered run run-1 with HTTP 409: busy", stage=stage, busy=True)

    told: list[object] = []
    scheduler = make(busy, redeliveries=1, first_retry_s=0.01, on_give_up=lambda *call: told.append(call))
    scheduler.schedule_call("etl", {"run_id": "run-1"}, key="handoff:etl", delay_s=0)
    assert done.wait(WAIT)
    scheduler.stop()
    assert tries == ["etl", "etl"] and told == []  # the invocation holding the stage does the work


def test_a_hand_off_is_named_by_its_key_and_carries_its_body(make) -> None:
    deliver = Deliveries(count=2)
    scheduler = make(deliver)
    assert scheduler.schedule_call("etl", {"run_id": "run-1", "shard": 0}, key="etl:shard:0", delay_s=0)
    assert not scheduler.schedule_call("etl", {"run_id": "run-1", "shard": 0}, key="etl:shard:0", delay_s=0)
    assert scheduler.schedule_call("etl", {"run_id": "run-1", "shard": 1}, key="etl:shard:1", delay_s=0)
    assert deliver.done.wait(WAIT)
    assert sorted(b["shard"] for b in deliver.bodies) == [0, 1]  # type: ignore[type-var]


def test_a_process_delivers_at_most_max_concurrent_calls_at_once(make) -> None:
    lock = threading.Lock()
    state = {"now": 0, "peak": 0, "done": 0}
    finished = threading.Event()

    def slow(stage: str, body: Mapping[str, object]) -> None:
        with lock:
            state["now"] += 1
            state["peak"] = max(state["peak"], state["now"])
        threading.Event().wait(0.05)
        with lock:
            state["now"] -= 1
            state["done"] += 1
            if state["done"] == 9:
                finished.set()

    scheduler = make(slow, max_concurrent=3)
    for shard in range(9):
        scheduler.schedule_call("etl", {"run_id": "run-1", "shard": shard}, key=f"etl:shard:{shard}", delay_s=0)
    assert finished.wait(WAIT)
    assert 1 <= state["peak"] <= 3


def test_a_redelivery_that_succeeds_stops_retrying(make) -> None:
    calls: list[str] = []
    delivered = threading.Event()

    def flaky(stage: str, body: Mapping[str, object]) -> None:
        calls.append(stage)
        if len(calls) == 1:
            raise HandOffFailed("monitor answered HTTP 500", stage=stage)
        delivered.set()

    scheduler = make(flaky, redeliveries=5, first_retry_s=0.01)
    scheduler.schedule("monitor", "run-1", delay_s=0, attempt=1)
    assert delivered.wait(WAIT)
    scheduler.stop()
    assert calls == ["monitor", "monitor"]


def test_a_call_outlives_the_scheduler_that_made_it_and_another_one_delivers_it(make) -> None:
    first = Deliveries()
    gone = make(first)
    gone.schedule("monitor", "run-1", delay_s=0.3, attempt=7)
    gone.stop()  # its process is gone before the call falls due
    assert first.calls == [] and len(gone.pending()) == 1
    second = Deliveries()
    make(second)  # the function restarted, or any other function process
    assert second.done.wait(WAIT)
    assert second.bodies == [{"run_id": "run-1", "look": 7}]


def test_a_call_scheduled_by_a_killed_process_is_delivered_by_a_living_one(make, tmp_path: Path) -> None:
    script = (
        "import sys, time; from shared.chain.timer import TimerScheduler; "
        "s = TimerScheduler(lambda stage, body: time.sleep(60), sys.argv[1]); "
        "s.schedule('monitor', 'run-k', delay_s=1.0, attempt=2); print('scheduled', flush=True); time.sleep(60)"
    )
    child = subprocess.Popen(
        [sys.executable, "-c", script, str(tmp_path / "schedule")],
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        stdout=subprocess.PIPE,
        start_new_session=True,
    )
    assert child.stdout is not None and child.stdout.readline().strip() == b"scheduled"
    os.killpg(child.pid, signal.SIGKILL)  # dies with the look only in its folder
    child.wait()
    deliver = Deliveries()
    make(deliver)
    assert deliver.done.wait(WAIT)
    assert deliver.calls == [("monitor", "run-k")]


def test_a_call_claimed_by_a_process_that_died_before_delivering_it_is_taken_back(make, tmp_path: Path) -> None:
    folder = tmp_path / "schedule"
    folder.mkdir()
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    pid = int(dead.stdout)
    entry = {"stage": "monitor", "body": {"run_id": "run-c", "look": 4}, "due_at": 0.0, "failures": 0}
    (folder / f"abc-monitor-4.{pid}.claimed").write_text(json.dumps(entry))
    deliver = Deliveries()
    make(deliver)
    assert deliver.done.wait(WAIT)
    assert deliver.calls == [("monitor", "run-c")]


def test_two_processes_sharing_the_folder_deliver_each_call_once(make) -> None:
    deliver = Deliveries(count=20)
    schedulers = [make(deliver) for _ in range(3)]
    for attempt in range(20):
        schedulers[attempt % 3].schedule("monitor", "run-1", delay_s=0.05, attempt=attempt)
    assert deliver.done.wait(WAIT)
    for scheduler in schedulers:
        scheduler.stop()
    assert sorted(int(b["look"]) for b in deliver.bodies) == list(range(20))  # each once, none twice
