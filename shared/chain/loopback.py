"""The local chain: hand-offs are HTTP POSTs on loopback, later calls are timers that POST the same way."""

from __future__ import annotations

from collections.abc import Mapping

from shared.chain.http import HttpHandOff
from shared.chain.timer import TimerScheduler


class LoopbackChain:
    def __init__(self, stage_urls: Mapping[str, str], *, hand_off: HttpHandOff | None = None) -> None:
        self._http = hand_off or HttpHandOff(stage_urls)
        self.scheduler = TimerScheduler(self._http.post)

    def hand_off(self, stage: str, run_id: str, *, key: str) -> None:
        self._http.hand_off(stage, run_id, key=key)

    def schedule(self, stage: str, run_id: str, *, delay_s: float, attempt: int) -> bool:
        return self.scheduler.schedule(stage, run_id, delay_s=delay_s, attempt=attempt)
