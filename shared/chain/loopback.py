"""The local chain: hand-offs are HTTP POSTs on loopback; later calls are a schedule kept in a folder,
delivered by whichever function process is alive when they fall due, with the same POST."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from shared.chain.http import HttpHandOff
from shared.chain.timer import TimerScheduler

LOOK_ANSWER_TIMEOUT_S = 120.0


class LoopbackChain:
    def __init__(
        self, stage_urls: Mapping[str, str], schedule_dir: Path, *, hand_off: HttpHandOff | None = None
    ) -> None:
        self._http = hand_off or HttpHandOff(stage_urls)
        # A scheduled call (a monitor look) is short, so its delivery waits for the answer: a look whose
        # process died mid-way is then a failed delivery, retried, instead of a look lost for good.
        self._looks = HttpHandOff(stage_urls, accept_timeout_s=LOOK_ANSWER_TIMEOUT_S)
        self.scheduler = TimerScheduler(self._looks.post, schedule_dir)

    def hand_off(self, stage: str, run_id: str, *, key: str) -> None:
        self._http.hand_off(stage, run_id, key=key)

    def schedule(self, stage: str, run_id: str, *, delay_s: float, attempt: int) -> bool:
        return self.scheduler.schedule(stage, run_id, delay_s=delay_s, attempt=attempt)
