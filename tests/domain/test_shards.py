"""Shard sets and shard claims: which split counts, exactly one fan-in, and a restart that redoes all."""

from __future__ import annotations

import pytest

from shared.domain import run_record as rr
from shared.domain import shards as sh
from shared.domain.run_record import ClaimOutcome, RunRecord, StageState
from tests.domain.test_run_record import LEASE, T0, new


def split(record: RunRecord, first_rows: list[int], rows: int) -> sh.ShardSet:
    started = sh.start_split(record, "etl", T0)
    return sh.end_split(record, "etl", started.generation, rows=rows, first_rows=first_rows, now=T0)


def test_a_split_under_way_is_marked_until_its_shards_are_recorded() -> None:
    record = new()
    started = sh.start_split(record, "etl", T0)
    assert started.generation == 1 and started.splitting
    shards = sh.end_split(record, "etl", 1, rows=25, first_rows=[0, 10, 20], now=T0)
    assert (shards.count, shards.splitting, shards.finished) == (3, False, False)
    assert [shards.rows_of(i) for i in range(3)] == [(0, 9), (10, 19), (20, 24)]
    with pytest.raises(ValueError, match="split 7 is not the one under way"):
        sh.end_split(record, "etl", 7, rows=1, first_rows=[0], now=T0)


def test_an_empty_split_is_finished_at_once() -> None:
    assert split(new(), [], 0).finished


def test_only_the_completion_of_the_last_shard_sees_the_set_finished() -> None:
    record = new()
    split(record, [0, 10, 20], 25)
    assert [sh.complete_shard(record, "etl", i, 1, T0) for i in (2, 0)] == [False, False]
    assert sh.complete_shard(record, "etl", 0, 1, T0) is False  # a repeated completion changes nothing
    assert sh.complete_shard(record, "etl", 1, 1, T0) is True
    assert record.stage("etl").progress["shards_done"] == "3/3"
    assert [e["event"] for e in record.events].count("shards_done") == 1


def test_a_completion_from_an_older_split_or_out_of_range_is_ignored() -> None:
    record = new()
    split(record, [0, 10], 20)
    split(record, [0, 10], 20)  # a forced re-run split again: generation 2
    assert sh.complete_shard(record, "etl", 0, 1, T0) is False
    assert sh.complete_shard(record, "etl", 5, 2, T0) is False
    assert sh.shards_of(record, "etl").done == []  # type: ignore[union-attr]


def test_a_restarted_run_splits_into_a_newer_generation_so_nothing_done_before_counts() -> None:
    record = new()
    split(record, [0, 10], 20)
    sh.complete_shard(record, "etl", 0, 1, T0)
    rr.restart(record, T0 + 1)
    before = sh.shards_of(record, "etl")
    assert before is not None and before.finished and before.count == 0
    assert before.restarts != record.restarts  # the coordinator splits again
    assert sh.start_split(record, "etl", T0 + 2).generation == 2
    old_done = sh.ShardState(generation=1, state=StageState.SUCCEEDED)
    assert sh.claim_shard(old_done, "w", T0, generation=2, lease_s=LEASE) is ClaimOutcome.CLAIMED


def test_fan_outs_are_counted_and_a_silent_set_is_stalled() -> None:
    record = new()
    split(record, [0, 10], 20)
    assert sh.next_dispatch(record, "etl", T0).dispatches == 1
    assert sh.stalled_shards(record, T0 + LEASE / 2, lease_s=LEASE) is None
    assert sh.stalled_shards(record, T0 + LEASE + 1, lease_s=LEASE) == "etl"
    sh.complete_shard(record, "etl", 0, 1, T0 + LEASE)
    assert sh.stalled_shards(record, T0 + LEASE + 1, lease_s=LEASE) is None  # a completion is progress


def test_a_shard_claim_is_one_owner_at_a_time_until_its_lease_runs_out() -> None:
    state = sh.ShardState()
    assert sh.claim_shard(state, "a", T0, generation=1, lease_s=LEASE) is ClaimOutcome.CLAIMED
    assert sh.claim_shard(state, "b", T0 + 1, generation=1, lease_s=LEASE) is ClaimOutcome.BUSY
    assert sh.claim_shard(state, "b", T0 + 1, generation=1, lease_s=LEASE, owner_alive=False) is ClaimOutcome.CLAIMED
    assert state.attempts == 2
    with pytest.raises(sh.ShardLost):
        sh.end_shard(state, "a", T0 + 2)  # "a" lost the shard: it must not record an outcome
    sh.end_shard(state, "b", T0 + 2)
    assert sh.claim_shard(state, "c", T0 + 3, generation=1, lease_s=LEASE) is ClaimOutcome.DONE


def test_a_failed_shard_is_claimed_again_and_counts_its_attempts() -> None:
    state = sh.ShardState()
    sh.claim_shard(state, "a", T0, generation=1, lease_s=LEASE)
    sh.end_shard(state, "a", T0 + 1, error="image 3 unreadable")
    assert (state.state, state.error) == (StageState.FAILED, "image 3 unreadable")
    assert sh.claim_shard(state, "b", T0 + 2, generation=1, lease_s=LEASE) is ClaimOutcome.CLAIMED
    assert state.attempts == 2
    assert (
        sh.claim_shard(
            sh.ShardState(generation=1, attempts=3, state=StageState.FAILED), "c", T0, generation=2, lease_s=LEASE
        )
        is ClaimOutcome.CLAIMED
    )
