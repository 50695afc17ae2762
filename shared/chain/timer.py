"""The local mode's "call this stage later": a timer thread in the process that asked.

Like Cloud Tasks with named tasks, the (run, stage, attempt) triple names a call, so scheduling the
same one twice delivers it once. The timer never blocks the request that scheduled it.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

from shared.chain.port import HandOffFailed

log = logging.getLogger(__name__)


class TimerScheduler:
    def __init__(self, deliver: Callable[[str, str], None]) -> None:
        self._deliver = deliver
        self._named: set[tuple[str, str, int]] = set()
        self._lock = threading.Lock()
        self.timers: list[threading.Timer] = []

    def schedule(self, stage: str, run_id: str, *, delay_s: float, attempt: int) -> bool:
        name = (run_id, stage, attempt)
        with self._lock:
            if name in self._named:
                return False
            self._named.add(name)
            timer = threading.Timer(max(0.0, delay_s), self._fire, args=(stage, run_id))
            timer.daemon = True
            self.timers = [t for t in self.timers if t.is_alive()] + [timer]
        timer.start()
        return True

    def _fire(self, stage: str, run_id: str) -> None:
        try:
            self._deliver(stage, run_id)
        except HandOffFailed as exc:
            log.error("scheduled call failed: %s", exc)

    def cancel_all(self) -> None:
        with self._lock:
            for timer in self.timers:
                timer.cancel()
