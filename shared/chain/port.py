"""The chain port.

A stage call carries only `{"run_id": ...}`: no key, no URL, no configuration travels between
functions, so any stage can be re-run by hand with one curl.
"""

from __future__ import annotations

from typing import Protocol


class HandOffFailed(RuntimeError):
    """The next stage could not be reached after every retry."""

    def __init__(self, message: str, *, stage: str) -> None:
        super().__init__(message)
        self.stage = stage


class Chain(Protocol):
    def hand_off(self, stage: str, run_id: str) -> None:
        """Calls `stage` now with `{"run_id": run_id}`; retries with backoff; raises HandOffFailed."""
        ...

    def schedule(self, stage: str, run_id: str, *, delay_s: float, attempt: int) -> bool:
        """Calls `stage` after `delay_s`. The (run, stage, attempt) triple names the call: scheduling the
        same one twice delivers it once. Returns False when it was already scheduled."""
        ...


def stage_body(run_id: str) -> dict[str, str]:
    return {"run_id": run_id}
