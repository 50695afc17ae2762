"""The chain port.

A stage call carries only `{"run_id": ...}` (a scheduled monitor look adds its number, `"look"`; a call
of one shard of a stage's work, its index, `"shard"`): no key, no URL, no configuration travels between
functions, so any stage, or any one shard of it, can be re-run by hand with one curl.
"""

from __future__ import annotations

from typing import Protocol


class HandOffFailed(RuntimeError):
    """A stage call was not taken: the stage could not be reached, failed, or refused it.

    `final`: the stage said the call itself is wrong (a 4xx), so repeating it cannot help; `busy`: another
    invocation holds the stage (409), which finishes the work itself, so giving up on it loses nothing."""

    def __init__(self, message: str, *, stage: str, final: bool = False, busy: bool = False) -> None:
        super().__init__(message)
        self.stage = stage
        self.final = final
        self.busy = busy


class Chain(Protocol):
    def hand_off(self, stage: str, run_id: str, *, key: str, shard: int | None = None) -> None:
        """Calls `stage` now with `{"run_id": run_id}` (and `"shard"`, when given), at least once, through
        a queue that retries until the stage answers 2xx; raises HandOffFailed when it cannot be queued.

        `key` names the hand-off (which stage handed off, which attempt, which shard): the queue keeps
        the names it has seen (Cloud Tasks for about a day, the local schedule likewise), so a repeat of
        the same key is delivered once."""
        ...

    def schedule(self, stage: str, run_id: str, *, delay_s: float, attempt: int) -> bool:
        """Calls `stage` after `delay_s` with `{"run_id": run_id, "look": attempt}`. The (run, stage,
        attempt) triple names the call: scheduling the same one twice delivers it once. Returns False
        when it was already scheduled."""
        ...


def stage_body(run_id: str, *, look: int | None = None, shard: int | None = None) -> dict[str, object]:
    body: dict[str, object] = {"run_id": run_id}
    if look is not None:
        body["look"] = look
    if shard is not None:
        body["shard"] = shard
    return body
