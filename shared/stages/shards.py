"""A stage's work in shards: fan out one call per shard, run each shard once, fan in exactly once.

A stage that fans out (ETL, inference) records its `ShardSet` in the run record and hands off one call
per unfinished shard, `{"run_id": ..., "shard": i}`, through the chain's queue, then gives its stage
back (pending) and returns: the shards run in parallel, as many at once as the queue allows. Each
shard call claims the shard's own state object (so a duplicate delivery does nothing), heartbeats it,
writes the shard's result, and then marks the shard done in the run record with one conditional
write. The write that finds every shard done makes the fan-in hand-off, a plain call of the stage
under one name per split, which the queue delivers once; the stage then merges the shards' results.

Failures: a shard that raises `StageFailed` cannot succeed (its message says why), so the run fails
at once, naming the shard and its rows. Any other error is answered 503, so the queue delivers the
shard again; after SHARD_ATTEMPTS such attempts the run fails, naming the shard and the error. A
re-run of the stage (or "Train model" clicked on the failed run) fans out again, to the unfinished
shards only.
"""

from __future__ import annotations

import contextlib
import logging
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from shared.chain.port import HandOffFailed
from shared.domain import run_record as rr
from shared.domain import shards as sh
from shared.domain.run_record import ClaimOutcome, RunRecord, RunStatus
from shared.domain.shards import ShardLost, ShardSet, ShardState
from shared.services import Services
from shared.shard_repository import ShardStates
from shared.stages.runner import StageAnswer, StageCall, StageContext, StageFailed, fail

log = logging.getLogger(__name__)
HEARTBEAT_S = 10.0


def shard_states(services: Services) -> ShardStates:
    return ShardStates(services.store, secrets=services.settings.secrets)


@dataclass
class ShardContext:
    services: Services
    run_id: str
    stage: str
    index: int
    shards: ShardSet
    owner: str
    record: RunRecord  # the run record as the shard found it when it started
    _last_beat: float = 0.0

    @property
    def rows(self) -> tuple[int, int]:
        return self.shards.rows_of(self.index)

    def heartbeat(self, *, every_s: float | None = None, **progress: Any) -> None:
        """Extends the shard's lease and records its progress; raises ShardLost once it was taken over.
        Beats at most every HEARTBEAT_S, and always thrice a lease: a live shard is never taken over."""
        if every_s is None:
            every_s = min(HEARTBEAT_S, self.services.settings.stage_lease_seconds / 3)
        if time.monotonic() - self._last_beat < every_s:
            return
        self._last_beat = time.monotonic()
        now = self.services.clock()

        def beat(state: ShardState) -> None:
            sh.check_shard_owner(state, self.owner)
            state.heartbeat_at = now
            state.progress.update(progress)

        shard_states(self.services).update(self.run_id, self.stage, self.index, beat)


ShardWork = Callable[[ShardContext], dict[str, Any]]  # returns the shard's result, which the fan-in reads


def fan_in_key(stage: str, record: RunRecord, shards: ShardSet) -> str:
    return f"{stage}:fan-in:r{record.restarts}:g{shards.generation}"


def fan_out(ctx: StageContext) -> ShardSet:
    """Hands off one call per unfinished shard of the stage's current split, named by this fan-out."""
    record, shards = ctx.update(lambda r: sh.next_dispatch(r, ctx.stage, ctx.now))
    for index in shards.unfinished():
        key = f"{ctx.stage}:shard:{index}:r{record.restarts}:g{shards.generation}:d{shards.dispatches}"
        ctx.services.chain.hand_off(ctx.stage, ctx.run_id, key=key, shard=index)
        ctx.heartbeat(shards_dispatched=index + 1)
    if shards.finished:  # every shard was done already (a re-run after the fan-in was lost)
        ctx.services.chain.hand_off(ctx.stage, ctx.run_id, key=fan_in_key(ctx.stage, record, shards))
    return shards


def _finish(services: Services, run_id: str, stage: str, index: int, generation: int) -> None:
    """Marks the shard done in the run record; when that completes the set, hands off the fan-in."""
    now = services.clock()
    record, finished = services.runs.update(run_id, lambda r: sh.complete_shard(r, stage, index, generation, now))
    shards = sh.shards_of(record, stage)
    if finished and shards is not None and shards.generation == generation:
        services.chain.hand_off(stage, run_id, key=fan_in_key(stage, record, shards))


def run_shard(services: Services, call: StageCall, stage: str, work: ShardWork) -> StageAnswer:
    """Runs shard `call.shard` of `stage` for the run, once; see the module docstring."""
    index = call.shard
    assert index is not None
    base: dict[str, Any] = {"run_id": call.run_id, "stage": stage, "shard": index}
    record = services.runs.get(call.run_id)
    if record is None:
        return StageAnswer(404, {**base, "error": f"no run record for run_id {call.run_id!r}"})
    if record.status is not RunStatus.RUNNING:  # final for this call: a queue must not deliver it again
        return StageAnswer(200, {**base, "outcome": "run_finished", "status": record.status.value})
    shards = sh.shards_of(record, stage)
    if shards is None or index >= shards.count:
        known = f"the run has {shards.count} {stage} shards" if shards else f"{stage} has not been sharded"
        return StageAnswer(200, {**base, "outcome": "no_such_shard", "message": f"{known}; nothing to do"})

    owner, now, states = services.new_owner(), services.clock(), shard_states(services)

    def claim(state: ShardState) -> ClaimOutcome:
        alive = services.owner_alive(state.owner) if state.owner else None
        lease = services.settings.stage_lease_seconds
        return sh.claim_shard(state, owner, now, generation=shards.generation, lease_s=lease, owner_alive=alive)

    state, outcome = states.update(call.run_id, stage, index, claim)
    if outcome is ClaimOutcome.BUSY:
        return StageAnswer(409, {**base, "outcome": "busy", "message": f"{stage} shard {index} is already running"})
    try:
        if outcome is ClaimOutcome.DONE:  # a repeat: make sure its completion reached the run record
            _finish(services, call.run_id, stage, index, shards.generation)
            return StageAnswer(200, {**base, "outcome": "already_done"})
        ctx = ShardContext(services, call.run_id, stage, index, shards, owner, record)
        return _work(ctx, states, work, state.attempts)
    except HandOffFailed as exc:  # the shard is done; the fan-in could not be queued
        message = services.scrub(f"{exc}; once it is reachable, re-run {stage} with curl")
        fail(services, call.run_id, stage, message)
        return StageAnswer(502, {**base, "outcome": "failed", "error": message})


def _work(ctx: ShardContext, states: ShardStates, work: ShardWork, attempt: int) -> StageAnswer:
    services, stage, index = ctx.services, ctx.stage, ctx.index
    base: dict[str, Any] = {"run_id": ctx.run_id, "stage": stage, "shard": index}
    first, last = ctx.rows
    where = f"shard {index} (rows {first}-{last})"
    try:
        result = work(ctx)
        states.write_result(ctx.run_id, stage, index, {**result, "generation": ctx.shards.generation})
        states.update(ctx.run_id, stage, index, lambda s: sh.end_shard(s, ctx.owner, services.clock()))
    except ShardLost as exc:
        log.warning("%s %s of run %s: %s", stage, where, ctx.run_id, exc)
        return StageAnswer(409, {**base, "outcome": "lost_ownership"})
    except StageFailed as exc:  # cannot succeed: the run fails now
        message = services.scrub(f"{where}: {exc}")
        _end_failed(ctx, states, message)
        fail(services, ctx.run_id, stage, message, link=exc.link)
        return StageAnswer(200, {**base, "outcome": "failed", "error": message})
    except Exception as exc:
        detail = services.scrub(f"{type(exc).__name__}: {exc}")
        trace = services.scrub(traceback.format_exc())
        log.error("%s %s of run %s crashed: %s\n%s", stage, where, ctx.run_id, detail, trace)
        _end_failed(ctx, states, detail)
        limit = services.settings.shard_attempts
        if attempt >= limit:
            message = (
                f"{where} failed {attempt} times (SHARD_ATTEMPTS={limit}), last with {detail}; "
                f"re-run {stage} to retry it"
            )
            fail(services, ctx.run_id, stage, message)
            return StageAnswer(200, {**base, "outcome": "failed", "error": message})
        return StageAnswer(503, {**base, "outcome": "retry", "attempt": attempt, "error": f"internal error: {detail}"})
    _finish(services, ctx.run_id, stage, index, ctx.shards.generation)
    return StageAnswer(200, {**base, "outcome": "succeeded", **{k: v for k, v in result.items() if _shown(v)}})


def _shown(value: object) -> bool:
    return isinstance(value, int | float | str) and not isinstance(value, bool)


def _end_failed(ctx: ShardContext, states: ShardStates, error: str) -> None:
    now = ctx.services.clock()
    with contextlib.suppress(ShardLost):  # taken over meanwhile: the new owner's attempt counts
        states.update(ctx.run_id, ctx.stage, ctx.index, lambda s: sh.end_shard(s, ctx.owner, now, error=error))


def wait_for_shards(ctx: StageContext, shards: ShardSet) -> StageAnswer:
    """Gives the stage back (pending) while its shards run: the fan-in call claims it again."""
    ctx.update(lambda r: rr.release(r, ctx.stage, ctx.owner, ctx.now, waiting_for="shards"))
    unfinished = len(shards.unfinished())
    return StageAnswer(
        202,
        {
            "run_id": ctx.run_id,
            "stage": ctx.stage,
            "outcome": "waiting",
            "for": "shards",
            "shards": shards.count,
            "unfinished": unfinished,
        },
    )
