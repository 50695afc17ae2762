"""The chain port put together from a hand-off (now) and a scheduler (later)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol


class Scheduler(Protocol):
    def schedule(self, stage: str, run_id: str, *, delay_s: float, attempt: int) -> bool: ...


class ComposedChain:
    def __init__(self, hand_off: Callable[[str, str], None], scheduler: Scheduler) -> None:
        self._hand_off = hand_off
        self.scheduler = scheduler

    def hand_off(self, stage: str, run_id: str) -> None:
        self._hand_off(stage, run_id)

    def schedule(self, stage: str, run_id: str, *, delay_s: float, attempt: int) -> bool:
        return self.scheduler.schedule(stage, run_id, delay_s=delay_s, attempt=attempt)
