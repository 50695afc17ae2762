"""A stage's work cut into shards: which shards a run has, which are done, and one shard's claim.

A stage that fans out (ETL over export rows, inference over manifest chunks) records a `ShardSet` in
the run record: how many shards, which split of the work they belong to (`generation`), and which are
done. Completing a shard is one conditional write of the run record, so exactly one completion sees
the set finished, and only that one hands the run on (fan-in). One shard's own state, its claim,
heartbeats and attempts, lives in an object of its own (`ShardState`), not in the run record: fifty
shards heartbeating one object would exceed what a bucket allows per object (about one write a
second). Pure data and transitions, no I/O, like the run record.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from shared.domain.run_record import ClaimOutcome, RunRecord, StageRecord, StageState, iso


@dataclass
class ShardSet:
    count: int
    generation: int  # the split these shards belong to: a new split (a forced re-run) is a new one
    restarts: int = 0  # the run's restarts when it was split: a restarted run splits anew
    splitting: bool = False  # a split under way (its files are being written): a re-run splits again
    rows: int = 0  # the rows cut into the shards
    first_rows: list[int] = field(default_factory=list)  # each shard's first row, in the user's numbering
    done: list[int] = field(default_factory=list)
    dispatches: int = 0  # fan-outs so far: each names its shard calls anew, so a re-run reaches them again
    finished: bool = False  # every shard is done
    last_progress_at: float | None = None  # the last fan-out or completion: a set silent long past its
    # lease has a shard nobody works on (its calls given up), and "Train model" clicked fans out again

    def unfinished(self) -> list[int]:
        done = set(self.done)
        return [i for i in range(self.count) if i not in done]

    def rows_of(self, index: int) -> tuple[int, int]:
        """The (first, last) row numbers of a shard, for messages a user can place in their data."""
        if index >= len(self.first_rows):
            return 0, max(0, self.rows - 1)
        end = self.first_rows[index + 1] if index + 1 < len(self.first_rows) else self.rows
        return self.first_rows[index], max(self.first_rows[index], end - 1)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ShardSet:
        return cls(**{k: v for k, v in data.items() if k in cls.__dataclass_fields__})


def shards_of(record: RunRecord, stage: str) -> ShardSet | None:
    data = record.shards.get(stage)
    return ShardSet.from_dict(data) if data else None


def set_shards(record: RunRecord, stage: str, shards: ShardSet) -> None:
    record.shards[stage] = asdict(shards)


def start_split(record: RunRecord, stage: str, now: float) -> ShardSet:
    """A new split of `stage`'s work begins: shards of any earlier split no longer count, and until
    `end_split` records the shards, a re-run splits again (the split's files may be half written)."""
    previous = shards_of(record, stage)
    generation = previous.generation + 1 if previous else 1
    shards = ShardSet(count=0, generation=generation, restarts=record.restarts, splitting=True)
    set_shards(record, stage, shards)
    record.log(now, stage, "splitting", generation=generation)
    return shards


def end_split(
    record: RunRecord, stage: str, generation: int, *, rows: int, first_rows: list[int], now: float
) -> ShardSet:
    """Records the shards of the split `generation` started; with no shard at all the set is done."""
    shards = shards_of(record, stage)
    if shards is None or shards.generation != generation:
        raise ValueError(f"{stage}: split {generation} is not the one under way")
    shards.count, shards.rows, shards.first_rows = len(first_rows), rows, list(first_rows)
    shards.splitting, shards.finished = False, not first_rows
    set_shards(record, stage, shards)
    record.log(now, stage, "sharded", shards=shards.count, rows=rows, generation=generation)
    return shards


def next_dispatch(record: RunRecord, stage: str, now: float) -> ShardSet:
    """Counts a fan-out of the unfinished shards (the first, or a re-run's)."""
    shards = shards_of(record, stage)
    assert shards is not None
    shards.dispatches += 1
    shards.last_progress_at = now
    set_shards(record, stage, shards)
    record.log(now, stage, "fan_out", shards=len(shards.unfinished()), dispatch=shards.dispatches)
    return shards


def stalled_shards(record: RunRecord, now: float, *, lease_s: float) -> str | None:
    """A stage waiting on shards none of which has moved for longer than a lease, or None."""
    for stage, data in record.shards.items():
        shards = ShardSet.from_dict(data)
        if shards.finished or record.stage(stage).state is not StageState.PENDING:
            continue
        if shards.last_progress_at is None or now - shards.last_progress_at > lease_s:
            return stage
    return None


def complete_shard(record: RunRecord, stage: str, index: int, generation: int, now: float) -> bool:
    """Marks shard `index` of `generation` done; True when every shard of the set is done. Any caller
    that sees True hands the run on under one name (the fan-in's), which the chain delivers once, so a
    completion whose hand-off was lost (a kill right after this write) is made good by its retry.
    A completion of an older split is ignored."""
    shards = shards_of(record, stage)
    if shards is None or shards.generation != generation or not 0 <= index < shards.count:
        return False
    if index not in shards.done:
        shards.done = sorted([*shards.done, index])
        shards.last_progress_at = now
        record.stage(stage).progress["shards_done"] = f"{len(shards.done)}/{shards.count}"
        record.log(now, stage, "shard_done", shard=index, done=len(shards.done), of=shards.count)
    if len(shards.done) == shards.count and not shards.finished:
        shards.finished = True
        record.log(now, stage, "shards_done", shards=shards.count)
    set_shards(record, stage, shards)
    return shards.finished


@dataclass
class ShardState(StageRecord):
    """One shard's claim, as a stage's (which invocation works on it, since when, how its attempts
    went), and the split (`generation`) the claim belongs to."""

    generation: int = 0

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "state": self.state.value}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ShardState:
        fields = {k: v for k, v in data.items() if k in cls.__dataclass_fields__}
        return cls(**{**fields, "state": StageState(fields.get("state", "pending"))})


def claim_shard(
    state: ShardState,
    owner: str,
    now: float,
    *,
    generation: int,
    lease_s: float,
    owner_alive: bool | None = None,
) -> ClaimOutcome:
    """Makes `owner` the one invocation working on the shard, as `claim` does for a stage.

    A live owner keeps the shard whatever its generation (it stops writing once it sees it lost);
    a shard done in this generation is DONE; one done in an older generation, or failed, is claimed."""
    if state.state is StageState.RUNNING and state.owner != owner:
        stale = owner_alive is False or state.heartbeat_at is None or now - state.heartbeat_at > lease_s
        if not stale:
            return ClaimOutcome.BUSY
    elif state.state is StageState.SUCCEEDED and state.generation == generation:
        return ClaimOutcome.DONE
    if state.generation != generation:
        state.attempts, state.progress, state.error = 0, {}, None
    state.generation = generation
    state.state = StageState.RUNNING
    state.attempts += 1
    state.owner = owner
    state.heartbeat_at = now
    state.started_at = iso(now)
    state.finished_at = None
    return ClaimOutcome.CLAIMED


class ShardLost(RuntimeError):
    """Another invocation took the shard over (its lease expired): this one must stop writing."""


def check_shard_owner(state: ShardState, owner: str) -> None:
    if state.state is not StageState.RUNNING or state.owner != owner:
        raise ShardLost("the shard is no longer owned by this invocation")


def end_shard(state: ShardState, owner: str, now: float, *, error: str | None = None) -> None:
    """Ends this owner's attempt: succeeded, or failed with `error` (the next claim retries it)."""
    check_shard_owner(state, owner)
    state.state = StageState.FAILED if error else StageState.SUCCEEDED
    state.owner = None
    state.finished_at = iso(now)
    state.error = error
