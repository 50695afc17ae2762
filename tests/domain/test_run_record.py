"""Run-record transitions: who owns a stage, when it can be taken over, and what the log keeps."""

from __future__ import annotations

import copy
import datetime as dt
import json
from collections.abc import Callable

import pytest

from shared.domain import run_record as rr
from shared.domain.run_record import ClaimOutcome, LostOwnership, RunRecord, RunStatus, StageState, Watch

T0 = 1_700_000_000.0
LEASE = 60.0


def new() -> RunRecord:
    return rr.new_run(
        run_id="run-1",
        model_run_id="run-1",
        model_type="local_detector",
        task="object_detection",
        backend="local",
        model_id="cmodel",
        now=T0,
    )


def claim(
    record: RunRecord, owner: str, now: float, *, force: bool = False, owner_alive: bool | None = None
) -> ClaimOutcome:
    return rr.claim(record, "etl", owner, now, lease_s=LEASE, force=force, owner_alive=owner_alive)


def test_new_run_has_every_stage_pending_and_a_created_event() -> None:
    record = new()
    assert record.status is RunStatus.RUNNING
    assert list(record.stages) == list(rr.CHAIN_STAGES)
    assert all(s.state is StageState.PENDING and s.attempts == 0 for s in record.stages.values())
    assert record.created_at == "2023-11-14T22:13:20.000Z"
    assert record.events == [
        {
            "at": "2023-11-14T22:13:20.000Z",
            "stage": "model_run",
            "event": "created",
            "detail": {"model_type": "local_detector", "backend": "local"},
        }
    ]


# -- claim ------------------------------------------------------------------------------------------------


def test_first_claim_takes_the_stage() -> None:
    record = new()
    assert claim(record, "a", T0 + 1) is ClaimOutcome.CLAIMED
    s = record.stages["etl"]
    assert (s.state, s.owner, s.attempts, s.heartbeat_at) == (StageState.RUNNING, "a", 1, T0 + 1)
    assert s.started_at == rr.iso(T0 + 1)
    assert record.events[-1] == {
        "at": rr.iso(T0 + 1),
        "stage": "etl",
        "event": "started",
        "detail": {"attempt": 1, "forced": False},
    }


def test_live_owner_keeps_the_stage() -> None:
    record = new()
    claim(record, "a", T0)
    before = copy.deepcopy(record)
    assert claim(record, "b", T0 + LEASE) is ClaimOutcome.BUSY
    assert claim(record, "b", T0 + 1, owner_alive=True) is ClaimOutcome.BUSY
    assert record == before  # a refused claim changes nothing


def test_stale_lease_is_taken_over() -> None:
    record = new()
    claim(record, "a", T0)
    assert claim(record, "b", T0 + LEASE + 0.001) is ClaimOutcome.CLAIMED
    s = record.stages["etl"]
    assert (s.owner, s.attempts) == ("b", 2)
    taken = [e for e in record.events if e["event"] == "taken_over"]
    assert taken == [
        {
            "at": rr.iso(T0 + LEASE + 0.001),
            "stage": "etl",
            "event": "taken_over",
            "detail": {"previous_owner": "a", "reason": "owner gone or lease expired"},
        }
    ]


def test_heartbeat_extends_the_lease() -> None:
    record = new()
    claim(record, "a", T0)
    rr.heartbeat(record, "etl", "a", T0 + 50, {"rows_seen": 10})
    assert claim(record, "b", T0 + LEASE + 1) is ClaimOutcome.BUSY
    assert claim(record, "b", T0 + 50 + LEASE + 1) is ClaimOutcome.CLAIMED


def test_dead_owner_is_taken_over_at_once() -> None:
    record = new()
    claim(record, "a", T0)
    assert claim(record, "b", T0 + 1, owner_alive=False) is ClaimOutcome.CLAIMED
    assert record.stages["etl"].owner == "b"


def test_running_stage_without_a_heartbeat_is_stale() -> None:
    record = new()
    s = record.stage("etl")
    s.state, s.owner, s.heartbeat_at = StageState.RUNNING, "a", None
    assert claim(record, "b", T0) is ClaimOutcome.CLAIMED


def test_succeeded_stage_is_done_unless_forced() -> None:
    record = new()
    claim(record, "a", T0)
    rr.succeed(record, "etl", "a", T0 + 5, rows=3)
    assert claim(record, "b", T0 + 6) is ClaimOutcome.DONE
    assert record.stages["etl"].attempts == 1
    assert claim(record, "b", T0 + 7, force=True) is ClaimOutcome.CLAIMED
    s = record.stages["etl"]
    assert (s.state, s.owner, s.attempts, s.finished_at) == (StageState.RUNNING, "b", 2, None)
    assert record.events[-1]["detail"] == {"attempt": 2, "forced": True}


def test_force_never_steals_a_live_stage() -> None:
    record = new()
    claim(record, "a", T0)
    assert claim(record, "b", T0 + 1, force=True) is ClaimOutcome.BUSY
    assert claim(record, "b", T0 + 1, force=True, owner_alive=True) is ClaimOutcome.BUSY
    assert record.stages["etl"].owner == "a"


@pytest.mark.parametrize("finish", ["failed", "complete"])
def test_finished_run_refuses_claims_unless_forced(finish: str) -> None:
    record = new()
    if finish == "failed":
        rr.fail_run(record, "train", T0, "train failed: no dataset")  # etl did not fail: it needs force
    else:
        rr.complete_run(record, T0)
    assert claim(record, "b", T0 + 1) is ClaimOutcome.RUN_FINISHED
    assert claim(record, "b", T0 + 2, force=True) is ClaimOutcome.CLAIMED
    assert record.status is RunStatus.RUNNING
    assert record.error is None


def test_retrying_the_stage_that_failed_resumes_the_run_without_force() -> None:
    record = new()
    rr.fail_run(record, "etl", T0, "could not reach train")
    assert claim(record, "b", T0 + 1) is ClaimOutcome.CLAIMED
    assert record.status is RunStatus.RUNNING and record.error is None
    assert record.events[-2]["event"] == "run_resumed"


def test_a_succeeded_stage_of_a_complete_run_is_already_done() -> None:
    record = new()
    claim(record, "a", T0)
    rr.succeed(record, "etl", "a", T0)
    rr.complete_run(record, T0)
    assert claim(record, "b", T0 + 1) is ClaimOutcome.DONE


def test_same_owner_claiming_again_counts_an_attempt() -> None:
    record = new()
    claim(record, "a", T0)
    assert claim(record, "a", T0 + 1) is ClaimOutcome.CLAIMED
    assert record.stages["etl"].attempts == 2


# -- the owner's writes -------------------------------------------------------------------------------------


def test_owner_heartbeat_records_progress() -> None:
    record = new()
    claim(record, "a", T0)
    rr.heartbeat(record, "etl", "a", T0 + 2, {"rows_seen": 5})
    rr.heartbeat(record, "etl", "a", T0 + 3, {"chunks": 1})
    rr.heartbeat(record, "etl", "a", T0 + 4, None)
    s = record.stages["etl"]
    assert s.heartbeat_at == T0 + 4
    assert s.progress == {"rows_seen": 5, "chunks": 1}


def test_succeed_frees_the_stage_and_logs_detail() -> None:
    record = new()
    claim(record, "a", T0)
    rr.succeed(record, "etl", "a", T0 + 9, rows=42)
    s = record.stages["etl"]
    assert (s.state, s.owner, s.finished_at) == (StageState.SUCCEEDED, None, rr.iso(T0 + 9))
    assert record.events[-1] == {"at": rr.iso(T0 + 9), "stage": "etl", "event": "succeeded", "detail": {"rows": 42}}


def test_release_gives_the_stage_back_while_a_job_runs() -> None:
    record = new()
    rr.claim(record, "train", "a", T0, lease_s=LEASE)
    rr.release(record, "train", "a", T0 + 1, waiting_for="training")
    s = record.stages["train"]
    assert (s.state, s.owner) == (StageState.PENDING, None)
    assert record.events[-1]["detail"] == {"waiting_for": "training"}
    assert rr.claim(record, "train", "b", T0 + 2, lease_s=LEASE) is ClaimOutcome.CLAIMED


@pytest.mark.parametrize(
    "write",
    [
        lambda r: rr.check_owner(r, "etl", "a"),
        lambda r: rr.heartbeat(r, "etl", "a", T0 + 100, {"x": 1}),
        lambda r: rr.succeed(r, "etl", "a", T0 + 100),
        lambda r: rr.release(r, "etl", "a", T0 + 100, waiting_for="x"),
        lambda r: rr.fail_run(r, "etl", T0 + 100, "boom", owner="a"),
    ],
    ids=["check_owner", "heartbeat", "succeed", "release", "fail_run"],
)
def test_previous_owner_cannot_write_after_a_takeover(write: Callable[[RunRecord], object]) -> None:
    record = new()
    claim(record, "a", T0)
    claim(record, "b", T0 + LEASE + 1)
    before = copy.deepcopy(record)
    with pytest.raises(LostOwnership, match="stage etl of run run-1"):
        write(record)
    assert record == before


@pytest.mark.parametrize(
    "write",
    [
        lambda r: rr.check_owner(r, "etl", "a"),
        lambda r: rr.succeed(r, "etl", "a", T0),
    ],
)
def test_nobody_owns_a_stage_that_was_never_claimed(write: Callable[[RunRecord], object]) -> None:
    with pytest.raises(LostOwnership):
        write(new())


def test_fail_run_marks_stage_and_run_failed() -> None:
    record = new()
    claim(record, "a", T0)
    record.watch = Watch(kind="training", ref="jobs/1", next_stage="inference", since=T0)
    rr.fail_run(record, "etl", T0 + 3, "etl failed: no usable rows", owner="a")
    s = record.stages["etl"]
    assert (s.state, s.owner, s.error) == (StageState.FAILED, None, "etl failed: no usable rows")
    assert (record.status, record.error) == (RunStatus.FAILED, "etl failed: no usable rows")
    assert record.watch is not None  # kept: a resumed monitor looks at the job again
    assert record.events[-1]["event"] == "failed"


def test_fail_run_without_an_owner_fails_whoever_holds_the_stage() -> None:
    record = new()
    claim(record, "a", T0)
    rr.fail_run(record, "etl", T0 + 1, "hand-off failed")
    assert record.status is RunStatus.FAILED


# -- hand-offs, restart, log, serialisation --------------------------------------------------------------------


def test_handoff_is_marked_once() -> None:
    record = new()
    assert rr.mark_handoff(record, "etl:train", T0) is True
    events = len(record.events)
    assert rr.mark_handoff(record, "etl:train", T0 + 1) is False
    assert len(record.events) == events
    assert record.handoffs == ["etl:train"]
    assert record.events[-1] == {"at": rr.iso(T0), "stage": "etl", "event": "handoff", "detail": {"to": "etl:train"}}
    assert rr.mark_handoff(record, "train:monitor", T0 + 2) is True


def test_restart_puts_every_stage_back_to_pending_and_keeps_artifacts() -> None:
    record = new()
    claim(record, "a", T0)
    rr.succeed(record, "etl", "a", T0 + 1)
    rr.mark_handoff(record, "etl:train", T0 + 1)
    record.artifacts["import_jsonl"] = "gs://b/runs/run-1/etl/import-*.jsonl"
    record.jobs["training"] = "jobs/1"
    record.metrics["map"] = 0.5
    record.uploads["predictions"] = {"accepted": 3}
    rr.fail_run(record, "train", T0 + 2, "train failed")
    rr.restart(record, T0 + 3)
    assert (record.status, record.error, record.restarts, record.watch) == (RunStatus.RUNNING, None, 1, None)
    assert all(s == rr.StageRecord() for s in record.stages.values())
    assert (record.handoffs, record.jobs, record.metrics, record.uploads) == ([], {}, {}, {})
    assert record.artifacts == {"import_jsonl": "gs://b/runs/run-1/etl/import-*.jsonl"}
    assert record.events[-1]["detail"] == {"restarts": 1}
    assert claim(record, "b", T0 + 4) is ClaimOutcome.CLAIMED
    assert rr.mark_handoff(record, "etl:train", T0 + 5) is True


def test_event_log_is_append_only_with_timestamps() -> None:
    record = new()
    snapshots = []
    steps = [
        lambda: claim(record, "a", T0 + 1),
        lambda: rr.heartbeat(record, "etl", "a", T0 + 2, {"n": 1}),
        lambda: rr.succeed(record, "etl", "a", T0 + 3),
        lambda: rr.mark_handoff(record, "etl:train", T0 + 4),
        lambda: rr.fail_run(record, "train", T0 + 5, "boom"),
        lambda: rr.restart(record, T0 + 6),
    ]
    for step in steps:
        snapshots.append(copy.deepcopy(record.events))
        step()
        for earlier in snapshots:
            assert record.events[: len(earlier)] == earlier
    assert [e["event"] for e in record.events] == [
        "created",
        "started",
        "succeeded",
        "handoff",
        "failed",
        "restarted",
    ]
    stamps = [dt.datetime.fromisoformat(e["at"].replace("Z", "+00:00")) for e in record.events]
    assert stamps == sorted(stamps)
    assert all(e["at"].endswith("Z") for e in record.events)


def test_round_trip_through_json() -> None:
    record = new()
    claim(record, "a", T0)
    rr.heartbeat(record, "etl", "a", T0 + 1, {"rows_seen": 7})
    rr.succeed(record, "etl", "a", T0 + 2)
    rr.claim(record, "train", "b", T0 + 3, lease_s=LEASE)
    record.watch = Watch(kind="training", ref="jobs/9", next_stage="inference", since=T0 + 3, attempt=2)
    record.artifacts["label_map"] = json.dumps({"cat": "cat"})
    record.data_quality = {"rows_kept": 7, "rows_skipped": {"row without a label": 1}}
    rr.mark_handoff(record, "etl:train", T0 + 2)
    data = json.loads(json.dumps(record.to_dict()))
    restored = RunRecord.from_dict(data)
    assert restored == record
    assert restored.stages["etl"].state is StageState.SUCCEEDED
    assert restored.status is RunStatus.RUNNING
    assert isinstance(restored.watch, Watch)
    assert restored.to_dict() == data


def test_from_dict_does_not_share_state_with_its_input_and_ignores_unknown_keys() -> None:
    data = new().to_dict()
    data["added_by_a_later_version"] = True
    restored = RunRecord.from_dict(data)
    restored.events.append({"event": "x"})
    restored.stages["etl"].progress["n"] = 1
    assert data["events"][-1]["event"] == "created"
    assert data["stages"]["etl"]["progress"] == {}
    assert RunRecord.from_dict({**new().to_dict(), "status": "failed"}).status is RunStatus.FAILED
