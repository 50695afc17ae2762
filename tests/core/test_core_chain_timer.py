"""The local "call this stage later": real timer threads, named by (run, stage, attempt)."""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator, Mapping

import pytest

from shared.chain.port import HandOffFailed
from shared.chain.timer import TimerScheduler

WAIT = 10.0  # generous: only bounds a hang, never asserts speed


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
def schedulers() -> Iterator[list[TimerScheduler]]:
    made: list[TimerScheduler] = []
    yield made
    for scheduler in made:
        scheduler.cancel_all()


def make(schedulers: list[TimerScheduler], deliver: Deliveries) -> TimerScheduler:
    scheduler = TimerScheduler(deliver)
    schedulers.append(scheduler)
    return scheduler


def join_all(scheduler: TimerScheduler) -> None:
    for timer in list(scheduler.timers):
        timer.join(WAIT)


def test_timer_delivers_after_the_delay(schedulers: list[TimerScheduler]) -> None:
    deliver = Deliveries()
    scheduler = make(schedulers, deliver)
    assert scheduler.schedule("monitor", "run-1", delay_s=0.05, attempt=1) is True
    assert deliver.done.wait(WAIT)
    assert deliver.calls == [("monitor", "run-1")]
    assert deliver.bodies == [{"run_id": "run-1", "look": 1}]  # the look carries its number


def test_scheduling_does_not_block_the_caller(schedulers: list[TimerScheduler]) -> None:
    release = threading.Event()
    delivered = threading.Event()

    def slow(stage: str, body: Mapping[str, object]) -> None:
        release.wait(WAIT)
        delivered.set()

    scheduler = TimerScheduler(slow)
    schedulers.append(scheduler)
    assert scheduler.schedule("monitor", "run-1", delay_s=0, attempt=1)
    assert not delivered.is_set()  # schedule() returned while the delivery is still waiting
    release.set()
    assert delivered.wait(WAIT)


def test_same_call_scheduled_twice_is_delivered_once(schedulers: list[TimerScheduler]) -> None:
    deliver = Deliveries(count=2)
    scheduler = make(schedulers, deliver)
    assert scheduler.schedule("monitor", "run-1", delay_s=0.05, attempt=3) is True
    assert scheduler.schedule("monitor", "run-1", delay_s=0.0, attempt=3) is False
    assert scheduler.schedule("monitor", "run-2", delay_s=0.05, attempt=3) is True  # another run
    join_all(scheduler)
    assert deliver.done.is_set()
    assert sorted(deliver.calls) == [("monitor", "run-1"), ("monitor", "run-2")]
    assert scheduler.schedule("monitor", "run-1", delay_s=0.0, attempt=3) is False  # even after it fired


def test_next_attempt_is_delivered_again(schedulers: list[TimerScheduler]) -> None:
    deliver = Deliveries(count=2)
    scheduler = make(schedulers, deliver)
    assert scheduler.schedule("monitor", "run-1", delay_s=0.05, attempt=1)
    assert scheduler.schedule("monitor", "run-1", delay_s=0.05, attempt=2)
    assert deliver.done.wait(WAIT)
    assert deliver.calls == [("monitor", "run-1"), ("monitor", "run-1")]


def test_same_attempt_for_another_stage_is_another_call(schedulers: list[TimerScheduler]) -> None:
    deliver = Deliveries(count=2)
    scheduler = make(schedulers, deliver)
    assert scheduler.schedule("monitor", "run-1", delay_s=0, attempt=1)
    assert scheduler.schedule("inference", "run-1", delay_s=0, attempt=1)
    assert deliver.done.wait(WAIT)
    assert sorted(deliver.calls) == [("inference", "run-1"), ("monitor", "run-1")]


def test_a_failed_delivery_is_retried_with_backoff_then_given_up_and_logged_not_raised(
    schedulers: list[TimerScheduler], caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    tries: list[str] = []
    gave_up = threading.Event()
    uncaught: list[BaseException | None] = []
    monkeypatch.setattr(threading, "excepthook", lambda args: uncaught.append(args.exc_value))

    def unreachable(stage: str, body: Mapping[str, object]) -> None:
        tries.append(stage)
        if len(tries) == 3:
            gave_up.set()
        raise HandOffFailed(
            f"could not reach {stage} for run {body['run_id']} after 6 attempts (ConnectionError)", stage=stage
        )

    scheduler = TimerScheduler(unreachable, redeliveries=2, redelivery_delay_s=0.01)
    schedulers.append(scheduler)
    with caplog.at_level(logging.WARNING, logger="shared.chain.timer"):
        assert scheduler.schedule("monitor", "run-1", delay_s=0, attempt=1)
        assert gave_up.wait(WAIT)
        join_all(scheduler)
    assert uncaught == []
    assert tries == ["monitor"] * 3  # the first delivery and two redeliveries
    assert "delivering again" in caplog.text
    assert "failed for good after 2 redeliveries: could not reach monitor for run run-1" in caplog.text


def test_a_redelivery_that_succeeds_stops_retrying(schedulers: list[TimerScheduler]) -> None:
    calls: list[str] = []
    delivered = threading.Event()

    def flaky(stage: str, body: Mapping[str, object]) -> None:
        calls.append(stage)
        if len(calls) == 1:
            raise HandOffFailed("monitor answered HTTP 500", stage=stage)
        delivered.set()

    scheduler = TimerScheduler(flaky, redeliveries=5, redelivery_delay_s=0.01)
    schedulers.append(scheduler)
    scheduler.schedule("monitor", "run-1", delay_s=0, attempt=1)
    assert delivered.wait(WAIT)
    join_all(scheduler)
    assert calls == ["monitor", "monitor"]


def test_cancel_all_stops_pending_calls(schedulers: list[TimerScheduler]) -> None:
    deliver = Deliveries()
    scheduler = make(schedulers, deliver)
    scheduler.schedule("monitor", "run-1", delay_s=WAIT * 6, attempt=1)
    scheduler.cancel_all()
    join_all(scheduler)
    assert deliver.calls == []
