"""The local mode's "call this stage later": a timer thread in the process that asked.

Like Cloud Tasks with named tasks, the (run, stage, attempt) triple names a call, so scheduling the
same one twice delivers it once; and like a Cloud Tasks queue, a delivery that fails is retried later
with backoff, so one bad moment of the target never leaves a run waiting for a look that never comes.
The timer never blocks the request that scheduled it.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Mapping

from shared.chain.port import HandOffFailed, stage_body

log = logging.getLogger(__name__)


class TimerScheduler:
    def __init__(
        self,
        deliver: Callable[[str, Mapping[str, object]], None],
        *,
        redeliveries: int = 5,
        redelivery_delay_s: float = 10.0,
    ) -> None:
        """`deliver(stage, body)` makes the call; the body is `{"run_id": ..., "look": attempt}`."""
        self._deliver = deliver
        self._redeliveries = redeliveries
        self._redelivery_delay_s = redelivery_delay_s
        self._named: set[tuple[str, str, int]] = set()
        self._lock = threading.Lock()
        self.timers: list[threading.Timer] = []

    def schedule(self, stage: str, run_id: str, *, delay_s: float, attempt: int) -> bool:
        name = (run_id, stage, attempt)
        with self._lock:
            if name in self._named:
                return False
            self._named.add(name)
        self._start(stage, stage_body(run_id, look=attempt), delay_s, failures=0)
        return True

    def _start(self, stage: str, body: Mapping[str, object], delay_s: float, *, failures: int) -> None:
        timer = threading.Timer(max(0.0, delay_s), self._fire, args=(stage, body, failures))
        timer.daemon = True
        with self._lock:
            self.timers = [t for t in self.timers if t.is_alive()] + [timer]
        timer.start()

    def _fire(self, stage: str, body: Mapping[str, object], failures: int) -> None:
        try:
            self._deliver(stage, body)
        except HandOffFailed as exc:
            if failures >= self._redeliveries:
                log.error("scheduled call failed for good after %d redeliveries: %s", failures, exc)
                return
            delay = self._redelivery_delay_s * 2**failures
            log.warning("scheduled call failed (%s); delivering again in %.0f s", exc, delay)
            self._start(stage, body, delay, failures=failures + 1)

    def cancel_all(self) -> None:
        with self._lock:
            for timer in self.timers:
                timer.cancel()
