"""Runs one stage for one run: claim it in the run record, do the work, record the outcome.

Every stage goes through here, so claiming, heartbeats, failure handling and the answer a caller gets
are the same everywhere. A stage's work raises `StageFailed` with a message a user can act on; any other
exception is recorded as an internal error. Either way the model run is marked FAILED in Labelbox with
the message cut to 255 characters, and no secret reaches the message.
"""

from __future__ import annotations

import logging
import time
import traceback
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any, TypeVar

from shared.chain.port import HandOffFailed
from shared.domain import run_record as rr
from shared.domain.model_types import ModelType, UnknownModelType, lookup
from shared.domain.run_record import ClaimOutcome, LostOwnership, RunRecord, RunStatus
from shared.platform.port import ModelRunStatus, cut_message
from shared.run_repository import RunNotFound
from shared.services import Services

log = logging.getLogger(__name__)
T = TypeVar("T")


# What an `on_done` hook answers when the stage succeeded but the job it started has failed since
# (before `monitor` noticed): the re-run then goes ahead as if forced, and restarts that job.
REDO = "redo"


class StageFailed(Exception):
    """The stage cannot succeed; the message is shown to the user, so say what to do about it."""

    def __init__(self, message: str, *, link: str | None = None) -> None:
        super().__init__(message)
        self.link = link


class JobFailed(StageFailed):
    """The long job `monitor` watches failed: the stage that started it is the one that failed, so a
    re-run of that stage (or "Train model" clicked again) starts the job anew."""


def model_type_of(record: RunRecord) -> ModelType:
    """The run's model type as this process registered it (its conversions apply to the run's data);
    StageFailed, naming the type and how to register it, when this process has not."""
    try:
        return lookup(record.model_type)
    except UnknownModelType as exc:
        raise StageFailed(str(exc)) from None


@dataclass(frozen=True)
class StageCall:
    """One call of a stage: the run, and the optional flags a caller may add."""

    run_id: str
    force: bool = False
    look: int | None = None  # the number of a scheduled monitor look
    shard: int | None = None  # one shard of the stage's work (a fan-out's call)


@dataclass
class StageAnswer:
    """What the stage's HTTP entry point answers."""

    status: int
    body: dict[str, Any] = field(default_factory=dict)


@dataclass
class StageContext:
    services: Services
    run_id: str
    stage: str
    owner: str
    force: bool = False
    look: int | None = None
    _last_beat: float = 0.0

    @property
    def now(self) -> float:
        return self.services.clock()

    def record(self) -> RunRecord:
        record = self.services.runs.get(self.run_id)
        if record is None:
            raise RunNotFound(self.run_id)
        return record

    def update(self, mutate: Callable[[RunRecord], T]) -> tuple[RunRecord, T]:
        """A conditional update that first checks this invocation still owns the stage."""

        def owned(record: RunRecord) -> T:
            rr.check_owner(record, self.stage, self.owner)
            return mutate(record)

        return self.services.runs.update(self.run_id, owned)

    def heartbeat(self, *, every_s: float = 2.0, **progress: Any) -> None:
        """Extends the lease and records progress, at most every `every_s` seconds."""
        if time.monotonic() - self._last_beat < every_s:
            return
        self._last_beat = time.monotonic()
        self.update(lambda r: rr.heartbeat(r, self.stage, self.owner, self.now, progress))

    def set_status(self, status: ModelRunStatus, **metadata: Any) -> None:
        record = self.record()
        self.services.platform.update_status(
            record.model_run_id, status, metadata={k: str(v) for k, v in metadata.items()}
        )

    def succeed(self, next_stage: str | None = None, *, round_: str = "", **detail: Any) -> None:
        """Marks the stage succeeded and hands the run to `next_stage`, once.

        Success and the hand-off are recorded in one conditional write, so a duplicate invocation finds
        both and repeats neither; a forced re-run hands off again and lets the next stage decide. A stage
        whose work spans calls (a fan-in after shards) names its `round_` (the split), so that the call
        finishing a forced re-run's round hands off anew though it is not itself forced.
        """
        key = f"{next_stage}:from:{self.stage}" + (f":{round_}" if round_ else "")

        def mutate(record: RunRecord) -> bool:
            rr.succeed(record, self.stage, self.owner, self.now, **detail)
            return bool(next_stage) and rr.mark_handoff(record, key, self.now)

        record, first = self.services.runs.update(self.run_id, mutate)
        if next_stage and (first or self.force):
            # the attempt names the delivery: a duplicate of this invocation's hand-off is one task,
            # a forced re-run (a new attempt) hands off anew
            attempt = record.stage(self.stage).attempts
            self.services.chain.hand_off(next_stage, self.run_id, key=f"{key}:r{record.restarts}:a{attempt}")


def run_stage(
    services: Services,
    call: StageCall,
    stage: str,
    work: Callable[[StageContext], StageAnswer],
    *,
    on_done: Callable[[Services, RunRecord], dict[str, Any]] | None = None,
) -> StageAnswer:
    """Claims `stage` and runs `work`; `on_done` adds to the answer when the stage had already succeeded."""
    run_id, force = call.run_id, call.force
    owner = services.new_owner()
    now = services.clock()

    def try_claim(record: RunRecord) -> ClaimOutcome:
        current_owner = record.stage(stage).owner
        return rr.claim(
            record,
            stage,
            owner,
            now,
            lease_s=services.settings.stage_lease_seconds,
            force=force,
            owner_alive=services.owner_alive(current_owner),
        )

    try:
        record, outcome = services.runs.update(run_id, try_claim)
    except RunNotFound:
        return StageAnswer(404, {"error": f"no run record for run_id {run_id!r}; start runs through the webhook"})
    base = {"run_id": run_id, "stage": stage}
    if outcome is ClaimOutcome.DONE:
        extra = on_done(services, record) if on_done else {}
        if extra.pop(REDO, False):  # done, but its job failed since: a re-run starts the job anew
            return run_stage(services, replace(call, force=True), stage, work)
        return StageAnswer(200, {**base, "outcome": "already_done", **extra})
    if outcome is ClaimOutcome.BUSY:
        return StageAnswer(409, {**base, "outcome": "busy", "message": f"{stage} is already running for this run"})
    if outcome is ClaimOutcome.RUN_FINISHED:  # final: a queue must not deliver it again
        return StageAnswer(
            200, {**base, "outcome": "run_finished", "status": record.status.value, "error": record.error}
        )

    ctx = StageContext(services, run_id, stage, owner, force, call.look)
    try:
        return work(ctx)
    except LostOwnership as exc:
        log.warning("%s", exc)
        return StageAnswer(409, {**base, "outcome": "lost_ownership"})
    except JobFailed as exc:
        message = services.scrub(str(exc))
        failed = fail_job(services, run_id, stage, message, owner=owner, link=exc.link)
        return StageAnswer(200, {**base, "outcome": "failed", "failed_stage": failed, "error": message})
    except StageFailed as exc:
        message = services.scrub(str(exc))
        fail(services, run_id, stage, message, owner=owner, link=exc.link)
        return StageAnswer(200, {**base, "outcome": "failed", "error": message})
    except HandOffFailed as exc:  # this stage's work is done; the next one is marked failed, to be retried
        message = services.scrub(f"{exc}; once it is reachable, re-run {exc.stage} with curl")
        fail(services, run_id, exc.stage, message)
        return StageAnswer(502, {**base, "outcome": "failed", "error": message})
    except Exception as exc:
        detail = services.scrub(f"{type(exc).__name__}: {exc}")
        log.error(
            "stage %s of run %s crashed: %s\n%s",
            stage,
            run_id,
            detail,
            services.scrub(traceback.format_exc()),
        )
        fail(services, run_id, stage, f"internal error in {stage}: {detail}", owner=owner)
        return StageAnswer(500, {**base, "outcome": "failed", "error": f"internal error in {stage}: {detail}"})


def fail(
    services: Services,
    run_id: str,
    stage: str,
    message: str,
    *,
    owner: str | None = None,
    link: str | None = None,
) -> None:
    """Marks the run failed in the record and in Labelbox; the message is cut to what Labelbox keeps."""
    now = services.clock()
    text = f"{stage} failed: {message}"
    if link:
        text = f"{text} ({link})"
    try:
        record, _ = services.runs.update(run_id, lambda r: rr.fail_run(r, stage, now, text, owner=owner))
    except LostOwnership:
        return
    _mirror_failure(services, record, stage, text)


def fail_undelivered(services: Services, stage: str, body: Mapping[str, object], why: str) -> None:
    """The queue gave up a call of `stage`: a running run fails, saying what to do; any other is left."""
    run_id = str(body.get("run_id", ""))
    record = services.runs.get(run_id) if run_id else None
    if record is None or record.status is not RunStatus.RUNNING:
        return
    what = f"shard {body['shard']} of {stage}" if body.get("shard") is not None else stage
    fail(
        services,
        run_id,
        stage,
        services.scrub(
            f"the call of {what} was not delivered ({why}); once {stage} is running, click Train model "
            f"again or re-run it with curl"
        ),
    )


def fail_job(services: Services, run_id: str, watcher: str, message: str, *, owner: str, link: str | None) -> str:
    """Marks the stage that started the failed job failed (and the run); returns that stage."""
    now = services.clock()

    def mutate(r: RunRecord) -> str:
        stage = (r.watch.started_by if r.watch else "") or watcher
        text = f"{stage} failed: {message}" + (f" ({link})" if link else "")
        return rr.fail_job(r, watcher, owner, now, text)

    try:
        record, stage = services.runs.update(run_id, mutate)
    except LostOwnership:
        return watcher
    _mirror_failure(services, record, stage, record.error or message)
    return stage


def _mirror_failure(services: Services, record: RunRecord, stage: str, text: str) -> None:
    try:
        services.platform.update_status(
            record.model_run_id,
            ModelRunStatus.FAILED,
            metadata={"failed_stage": stage, "run_record": services.runs.uri(record.run_id)},
            error_message=cut_message(text),
        )
    except Exception as exc:  # the record already says FAILED; the platform is a best-effort mirror
        log.error("could not mark model run %s FAILED: %s", record.model_run_id, services.scrub(str(exc)))
