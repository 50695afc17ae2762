"""The run record: the one truth about a model run's progress through the chain.

Pure data and pure transitions, no I/O. `RunRepository` (run_repository.py) loads a record, applies one
of these transitions and writes it back conditionally, retrying on conflict, so a transition is the unit
of concurrency: two invocations can never both claim a stage.
"""

from __future__ import annotations

import copy
import datetime as dt
import hashlib
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from enum import StrEnum
from typing import Any

SCHEMA_VERSION = 1


class Stage(StrEnum):
    """The functions of the chain, in order: the webhook's, then the four a run goes through."""

    MODEL_RUN = "model_run"
    ETL = "etl"
    TRAIN = "train"
    MONITOR = "monitor"
    INFERENCE = "inference"


CHAIN_STAGES = (Stage.ETL, Stage.TRAIN, Stage.MONITOR, Stage.INFERENCE)


class JobKind(StrEnum):
    """The long jobs a run waits on; `monitor` watches each, and each is started by one stage."""

    EXPORT = "export"
    DATASET_IMPORT = "dataset_import"
    TRAINING = "training"
    BATCH_PREDICTION = "batch_prediction"

    @property
    def started_by(self) -> Stage:
        """The stage a failure of this job fails, so that re-running it starts the job anew."""
        return JOB_STAGE[self]


class StageState(StrEnum):
    PENDING = "pending"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    SKIPPED = "skipped"


class RunStatus(StrEnum):
    RUNNING = "running"
    COMPLETE = "complete"
    FAILED = "failed"


class ClaimOutcome(StrEnum):
    CLAIMED = "claimed"  # the caller now owns the stage and must finish or fail it
    DONE = "done"  # the stage already succeeded; nothing to do without force
    BUSY = "busy"  # another live invocation owns the stage
    RUN_FINISHED = "run_finished"  # the run failed or completed; restart needs force at the webhook


class LostOwnership(RuntimeError):
    """Another invocation took the stage over (its lease expired); this one must stop writing."""


def iso(ts: float) -> str:
    return dt.datetime.fromtimestamp(ts, dt.UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


@dataclass
class StageRecord:
    state: StageState = StageState.PENDING
    attempts: int = 0
    owner: str | None = None
    heartbeat_at: float | None = None
    started_at: str | None = None
    finished_at: str | None = None
    error: str | None = None
    progress: dict[str, Any] = field(default_factory=dict)


@dataclass
class Watch:
    """A long job that `monitor` polls: what it is, its resource name, and where to go when it ends."""

    kind: JobKind
    ref: str
    next_stage: str
    since: float
    attempt: int = 0  # looks at this job so far: drives the backoff
    next_look_at: float | None = None
    look: int = 0  # the run-wide number of the scheduled look: names it for the scheduler
    started_by: str = ""  # the stage that started the job: a failed job fails it, and re-running it restarts the job


# Which stage starts each kind of long job. A job that fails is that stage's failure, so "re-run the
# failed stage" (by curl, or by clicking "Train model" again) starts the job anew. Keyed by str: the
# record's `jobs`, `job_keys` and `launches` hold kinds as the plain strings JSON gives back.
JOB_STAGE: dict[str, Stage] = {
    JobKind.EXPORT: Stage.ETL,
    JobKind.DATASET_IMPORT: Stage.TRAIN,
    JobKind.TRAINING: Stage.TRAIN,
    JobKind.BATCH_PREDICTION: Stage.INFERENCE,
}


@dataclass
class RunRecord:
    """One model run's progress through the chain.

    `run_id` names the chain's run (its bucket folder, every stage call); `model_run_id` names the
    Labelbox model run (every platform call). Today they are equal by construction: one model run has
    one run, and a forced restart reuses it. They stay two fields so that the code says which one it
    means, and so that several runs of one model run (say, with other settings) would change how a
    run id is made, not every platform call.
    """

    run_id: str
    model_run_id: str
    model_type: str
    task: str
    backend: str
    created_at: str
    model_id: str | None = None
    status: RunStatus = RunStatus.RUNNING
    restarts: int = 0
    resumes: int = 0  # times a failed run was resumed from its failed stage (names the hand-off)
    looks: int = 0  # every monitor look ever scheduled for this run, across watches and restarts
    stages: dict[str, StageRecord] = field(default_factory=dict)
    artifacts: dict[str, str] = field(default_factory=dict)
    jobs: dict[str, str] = field(default_factory=dict)
    # kind -> the key of the launch being made: recorded before the job is started, so a retry after a
    # lost write finds the job by its key instead of starting a second one
    job_keys: dict[str, str] = field(default_factory=dict)
    launches: dict[str, int] = field(default_factory=dict)  # kind -> launches so far (failed ones too)
    failed_jobs: list[dict[str, Any]] = field(default_factory=list)  # jobs that failed and were replaced
    links: dict[str, str] = field(default_factory=dict)
    data_quality: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)
    uploads: dict[str, Any] = field(default_factory=dict)
    handoffs: list[str] = field(default_factory=list)
    # stage -> its `ShardSet` (shared/domain/shards.py) as a dict, for a stage that fans out
    shards: dict[str, dict[str, Any]] = field(default_factory=dict)
    # the run's own settings, resolved from the model run's config at the start and frozen (run_settings.py)
    settings: dict[str, Any] = field(default_factory=dict)
    watch: Watch | None = None
    error: str | None = None
    events: list[dict[str, Any]] = field(default_factory=list)
    schema_version: int = SCHEMA_VERSION

    # -- serialisation -------------------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RunRecord:
        data = copy.deepcopy(data)
        stages = {name: StageRecord(**{**s, "state": StageState(s["state"])}) for name, s in data.pop("stages").items()}
        watch = data.pop("watch", None)
        return cls(
            **{k: v for k, v in data.items() if k in cls.__dataclass_fields__ and k != "status"},
            status=RunStatus(data["status"]),
            stages=stages,
            watch=Watch(**{**watch, "kind": JobKind(watch["kind"])}) if watch else None,
        )

    def stage(self, name: str) -> StageRecord:
        return self.stages.setdefault(name, StageRecord())

    def log(self, now: float, stage: str, event: str, **detail: Any) -> None:
        """Appends to the event log; entries are never edited or removed."""
        entry: dict[str, Any] = {"at": iso(now), "stage": stage, "event": event}
        if detail:
            entry["detail"] = detail
        self.events.append(entry)


def new_run(
    *,
    run_id: str,
    model_run_id: str,
    model_type: str,
    task: str,
    backend: str,
    model_id: str | None,
    now: float,
) -> RunRecord:
    record = RunRecord(
        run_id=run_id,
        model_run_id=model_run_id,
        model_type=model_type,
        task=task,
        backend=backend,
        model_id=model_id,
        created_at=iso(now),
        stages={name: StageRecord() for name in CHAIN_STAGES},
    )
    record.log(now, Stage.MODEL_RUN, "created", model_type=model_type, backend=backend)
    return record


def restart(record: RunRecord, now: float) -> None:
    """Forced restart from the webhook: every stage back to pending; artifacts stay for resuming copies."""
    record.restarts += 1
    record.status = RunStatus.RUNNING
    record.error = None
    record.watch = None
    record.handoffs = []
    record.jobs = {}
    record.job_keys = {}
    record.uploads = {}
    record.metrics = {}
    record.settings = {}  # a restart is a new start: the config is read again
    # Each stage's shard numbering survives (as an empty, finished set of the old life): the restarted
    # run's split is a newer generation, so no shard done before the restart counts as done after it.
    record.shards = {
        stage: {
            "count": 0,
            "generation": data.get("generation", 0),
            "restarts": data.get("restarts", 0),
            "finished": True,
        }
        for stage, data in record.shards.items()
    }
    record.stages = {name: StageRecord() for name in CHAIN_STAGES}
    record.log(now, Stage.MODEL_RUN, "restarted", restarts=record.restarts)


def claim(
    record: RunRecord,
    stage: str,
    owner: str,
    now: float,
    *,
    lease_s: float,
    force: bool = False,
    owner_alive: bool | None = None,
) -> ClaimOutcome:
    """Tries to make `owner` the one invocation working on `stage`.

    A running stage belongs to its owner while its heartbeat is younger than `lease_s`; `owner_alive`
    (known only locally, where the owner's process can be checked) settles staleness at once.
    A succeeded stage is done unless forced. A failed run can be resumed by retrying the stage that
    failed (the operator fixed the cause); any other stage of a finished run needs `force`.
    `force` redoes a succeeded stage but never steals a live one.
    """
    s = record.stage(stage)
    if s.state is StageState.SUCCEEDED and not force:
        return ClaimOutcome.DONE
    retrying_failure = record.status is RunStatus.FAILED and s.state is StageState.FAILED
    if record.status is not RunStatus.RUNNING and not (force or retrying_failure):
        return ClaimOutcome.RUN_FINISHED
    if s.state is StageState.RUNNING and s.owner != owner:
        stale = owner_alive is False or (s.heartbeat_at is None or now - s.heartbeat_at > lease_s)
        if not stale:
            return ClaimOutcome.BUSY
        record.log(now, stage, "taken_over", previous_owner=s.owner, reason="owner gone or lease expired")
    if record.status is not RunStatus.RUNNING:
        record.log(now, stage, "run_resumed", previous_status=record.status.value, forced=force)
        record.status = RunStatus.RUNNING
        record.error = None
    s.state = StageState.RUNNING
    s.attempts += 1
    s.owner = owner
    s.heartbeat_at = now
    s.started_at = iso(now)
    s.finished_at = None
    s.error = None
    record.log(now, stage, "started", attempt=s.attempts, forced=force)
    return ClaimOutcome.CLAIMED


def check_owner(record: RunRecord, stage: str, owner: str) -> StageRecord:
    s = record.stage(stage)
    if s.state is not StageState.RUNNING or s.owner != owner:
        raise LostOwnership(f"stage {stage} of run {record.run_id} is no longer owned by this invocation")
    return s


def heartbeat(record: RunRecord, stage: str, owner: str, now: float, progress: dict[str, Any] | None) -> None:
    s = check_owner(record, stage, owner)
    s.heartbeat_at = now
    if progress:
        s.progress.update(progress)


def succeed(record: RunRecord, stage: str, owner: str, now: float, **detail: Any) -> None:
    s = check_owner(record, stage, owner)
    s.state = StageState.SUCCEEDED
    s.finished_at = iso(now)
    s.owner = None
    record.log(now, stage, "succeeded", **detail)


def release(record: RunRecord, stage: str, owner: str, now: float, *, waiting_for: str) -> None:
    """Gives the stage back to pending while a long job it started runs; a later call resumes it."""
    s = check_owner(record, stage, owner)
    s.state = StageState.PENDING
    s.owner = None
    record.log(now, stage, "waiting", waiting_for=waiting_for)


def fail_run(record: RunRecord, stage: str, now: float, error: str, *, owner: str | None = None) -> None:
    """Marks the stage and the whole run failed. `error` must already be free of secrets."""
    s = record.stage(stage)
    if owner is not None and s.owner not in (None, owner):
        raise LostOwnership(f"stage {stage} of run {record.run_id} is owned by another invocation")
    s.state = StageState.FAILED
    s.finished_at = iso(now)
    s.owner = None
    s.error = error
    record.status = RunStatus.FAILED
    record.error = error
    record.log(now, stage, "failed", error=error)


def fail_job(record: RunRecord, watcher: str, owner: str, now: float, error: str) -> str:
    """The watched job failed: its starting stage fails (a re-run of it starts a new job), the watcher
    is released, and the watch ends. Returns the stage marked failed."""
    check_owner(record, watcher, owner)
    watch = record.watch
    stage = (watch.started_by or JOB_STAGE.get(watch.kind, watcher)) if watch else watcher
    w = record.stage(watcher)
    w.state, w.owner = StageState.PENDING, None
    record.watch = None
    fail_run(record, stage, now, error)
    return stage


class TrainPhase(StrEnum):
    """Where `train` stands, read from the record: what a call of it does next."""

    IMPORTING = "importing"  # no dataset yet: import one, or wait for the import under way
    READY = "ready"  # the dataset is imported and no training is recorded: start one
    TRAINING = "training"  # a training job is recorded: never a second while it lives


class InferencePhase(StrEnum):
    """Where `inference` stands: predicting (start the batch job, or wait for it) or delivering."""

    PREDICTING = "predicting"
    DELIVERING = "delivering"  # the job's output is there: upload, score, report


def train_phase(record: RunRecord) -> TrainPhase:
    if JobKind.TRAINING in record.jobs:
        return TrainPhase.TRAINING
    return TrainPhase.READY if "dataset" in record.jobs else TrainPhase.IMPORTING


def inference_phase(record: RunRecord) -> InferencePhase:
    return InferencePhase.DELIVERING if "prediction_output" in record.artifacts else InferencePhase.PREDICTING


def intend_launch(record: RunRecord, kind: str, now: float) -> str:
    """The key of the launch of `kind` about to be made: a new one, or the one a lost launch recorded.

    Deterministic from the run, its restarts and the launch count, so the same intent always names the
    same job, and a relaunch after a failed job names a new one."""
    key = record.job_keys.get(kind)
    if key is None:
        count = record.launches.get(kind, 0) + 1
        record.launches[kind] = count
        digest = hashlib.sha256(f"{record.run_id}|{record.restarts}|{kind}|{count}".encode()).hexdigest()[:20]
        key = record.job_keys[kind] = f"{kind.replace('_', '-')[:16]}-{count}-{digest}"
        record.log(now, JOB_STAGE.get(kind, kind), "launching", kind=kind, job_key=key)
    return key


def launched(record: RunRecord, kind: str, ref: str) -> None:
    record.jobs[kind] = ref


def forget_failed_job(record: RunRecord, kind: str, now: float, error: str | None) -> None:
    """A recorded job that failed is set aside, so the next launch of its kind starts a new one."""
    ref = record.jobs.pop(kind, None)
    record.job_keys.pop(kind, None)
    if ref is not None:
        record.failed_jobs.append({"kind": kind, "ref": ref, "error": error, "at": iso(now)})
        record.log(now, JOB_STAGE.get(kind, kind), "job_replaced", kind=kind, ref=ref)


def stalled_stage(
    record: RunRecord, now: float, *, lease_s: float, owner_alive: Callable[[str | None], bool | None]
) -> str | None:
    """A stage the record says is running but whose owner is gone (dead process, or silent past its
    lease): nothing is working on it, so it must be handed to a new invocation."""
    for name in CHAIN_STAGES:
        s = record.stages.get(name)
        if s is None or s.state is not StageState.RUNNING:
            continue
        silent = s.heartbeat_at is None or now - s.heartbeat_at > lease_s
        if owner_alive(s.owner) is False or silent:
            return name
    return None


def failed_stage(record: RunRecord) -> str | None:
    """The stage a resume starts from: the earliest chain stage that failed."""
    for name in CHAIN_STAGES:
        if record.stages.get(name, StageRecord()).state is StageState.FAILED:
            return name
    return None


def next_look(record: RunRecord, now: float, delay_s: float) -> Watch:
    """Numbers the watch's next look: a new number every time, so no schedule name is ever reused."""
    assert record.watch is not None
    record.looks += 1
    record.watch.look = record.looks
    record.watch.next_look_at = now + delay_s
    return record.watch


def complete_run(record: RunRecord, now: float) -> None:
    record.status = RunStatus.COMPLETE
    record.log(now, Stage.INFERENCE, "run_complete")


def mark_handoff(record: RunRecord, key: str, now: float) -> bool:
    """Records a hand-off once; False if it was already made (a duplicate delivery must not repeat it)."""
    if key in record.handoffs:
        return False
    record.handoffs.append(key)
    record.log(now, key.split(":", 1)[0], "handoff", to=key)
    return True
