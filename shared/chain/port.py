"""The chain port.

A stage call carries only `{"run_id": ...}` (a scheduled monitor look adds its number, `"look"`): no
key, no URL, no configuration travels between functions, so any stage can be re-run by hand with one
curl.
"""

from __future__ import annotations

from typing import Protocol


class HandOffFailed(RuntimeError):
    """The next stage could not be reached after every retry."""

    def __init__(self, message: str, *, stage: str) -> None:
        super().__init__(message)
        self.stage = stage


class Chain(Protocol):
    def hand_off(self, stage: str, run_id: str, *, key: str) -> None:
        """Calls `stage` now with `{"run_id": run_id}`, at least once; raises HandOffFailed.

        `key` names the hand-off (which stage handed off, which attempt): where the transport can
        de-duplicate (Cloud Tasks task names), a repeat of the same key is delivered once."""
        ...

    def schedule(self, stage: str, run_id: str, *, delay_s: float, attempt: int) -> bool:
        """Calls `stage` after `delay_s` with `{"run_id": run_id, "look": attempt}`. The (run, stage,
        attempt) triple names the call: scheduling the same one twice delivers it once. Returns False
        when it was already scheduled."""
        ...


def stage_body(run_id: str, *, look: int | None = None) -> dict[str, object]:
    body: dict[str, object] = {"run_id": run_id}
    if look is not None:
        body["look"] = look
    return body
