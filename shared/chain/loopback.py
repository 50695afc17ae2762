"""The local chain: every hand-off and every later call is a scheduled call in a folder (the local
queue, `timer.py`), delivered by whichever function process is alive as an HTTP POST on loopback.

So a hand-off outlives the process that made it, is retried until the stage takes it (as Cloud Tasks
retries a task), and is delivered once under its name, exactly as in the cloud.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from shared.chain.http import HttpDelivery
from shared.chain.port import stage_body
from shared.chain.timer import GiveUp, TimerScheduler

DEFAULT_ANSWER_TIMEOUT_S = 540.0


class LoopbackChain:
    def __init__(
        self,
        stage_urls: Mapping[str, str],
        schedule_dir: Path,
        *,
        answer_timeout_s: float = DEFAULT_ANSWER_TIMEOUT_S,
        max_concurrent: int = 8,
        redeliveries: int = 8,
        first_retry_s: float = 1.0,
        on_give_up: GiveUp | None = None,
    ) -> None:
        # A delivery waits for the stage's answer, up to the function timeout (as Cloud Tasks waits up to
        # its dispatch deadline): a stage whose process dies mid-way is then a failed delivery, retried,
        # instead of a call lost for good.
        self._http = HttpDelivery(stage_urls, answer_timeout_s=answer_timeout_s)
        self.scheduler = TimerScheduler(
            self._http.post,
            schedule_dir,
            max_concurrent=max_concurrent,
            redeliveries=redeliveries,
            first_retry_s=first_retry_s,
            on_give_up=on_give_up,
        )

    def hand_off(self, stage: str, run_id: str, *, key: str, shard: int | None = None) -> None:
        self.scheduler.schedule_call(stage, stage_body(run_id, shard=shard), key=f"handoff:{key}", delay_s=0.0)

    def schedule(self, stage: str, run_id: str, *, delay_s: float, attempt: int) -> bool:
        return self.scheduler.schedule(stage, run_id, delay_s=delay_s, attempt=attempt)
