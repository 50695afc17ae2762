"""Train: create the dataset and start the training job, then leave the waiting to `monitor`.

Dataset import can outlast a function, so it is started and watched like training: `monitor` calls
`train` again when the import is done, and this stage resumes where the record says it stopped.

Every launch is recorded before it is made: the stage writes the launch's key into the run record,
starts the job with that key, then records the job. A crash between the two writes leaves the key,
and the retry starts with the same key, which finds the job the first try made (Vertex by its
`lb_job` label, the local engine by its folder), so a run never trains twice. A re-run after the job
failed sets the failed job aside and launches a new one.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

from shared import run_settings
from shared.domain import run_record as rr
from shared.domain.model_types import Task
from shared.domain.run_record import JobKind, RunRecord, RunStatus, Stage, TrainPhase
from shared.platform.port import ModelRunStatus
from shared.services import Services
from shared.stages.runner import REDO, StageAnswer, StageContext, StageFailed
from shared.stages.watch import backoff_delay, ensure_monitor, schedule_look, watch_job
from shared.training.labels import resource_labels
from shared.training.port import DatasetRequest, JobState, RequestRefused, TrainingRequest


def _start_watch(ctx: StageContext, *, kind: JobKind, ref: str, next_stage: Stage, done: bool) -> None:
    delay = backoff_delay(ctx.services, 0)

    def mutate(r: RunRecord) -> rr.Watch:
        watch = watch_job(
            r, kind=kind, ref=ref, next_stage=next_stage, now=ctx.now, delay_s=delay, started_by=ctx.stage
        )
        if done:
            rr.succeed(r, ctx.stage, ctx.owner, ctx.now, job=ref)
        else:
            rr.release(r, ctx.stage, ctx.owner, ctx.now, waiting_for=kind)
        return watch

    _record, watch = ctx.update(mutate)
    schedule_look(ctx.services, ctx.run_id, watch)


FAILED_JOB = (JobState.FAILED, JobState.CANCELLED)


@contextlib.contextmanager
def _refused_fails(what: str) -> Iterator[None]:
    """A start the backend refuses fails the run with its reason (what to change), not as a crash."""
    try:
        yield
    except RequestRefused as exc:
        raise StageFailed(f"{what} refused: {exc}") from exc


def _set_aside_if_failed(
    ctx: StageContext, record: RunRecord, kind: str, state: JobState, error: str | None
) -> RunRecord:
    if state in FAILED_JOB:
        record, _ = ctx.update(lambda r: rr.forget_failed_job(r, kind, ctx.now, error))
    return record


def run_train(ctx: StageContext) -> StageAnswer:
    record = _set_aside_failed_jobs(ctx, ctx.record())
    phase = rr.train_phase(record)
    if phase is TrainPhase.TRAINING:
        return _already_started(ctx, record)
    if phase is TrainPhase.IMPORTING:
        imported = _import_dataset(ctx, record)
        if isinstance(imported, StageAnswer):
            return imported
        record = imported
    return _start_training(ctx, record)


def _set_aside_failed_jobs(ctx: StageContext, record: RunRecord) -> RunRecord:
    """A recorded training or import that has failed is set aside: this call starts it anew."""
    backend = ctx.services.backend
    if JobKind.TRAINING in record.jobs:
        status = backend.training_status(record.jobs[JobKind.TRAINING])
        record = _set_aside_if_failed(ctx, record, JobKind.TRAINING, status.state, status.error)
    if rr.train_phase(record) is TrainPhase.IMPORTING and JobKind.DATASET_IMPORT in record.jobs:
        status = backend.dataset_status(record.jobs[JobKind.DATASET_IMPORT])
        record = _set_aside_if_failed(ctx, record, JobKind.DATASET_IMPORT, status.state, status.error)
    return record


def _already_started(ctx: StageContext, record: RunRecord) -> StageAnswer:
    """Started by an earlier call: make sure monitor looks at it now, and start nothing."""
    rescheduled = ensure_monitor(ctx.services, record, lost_only=False)
    ctx.update(lambda r: rr.succeed(r, Stage.TRAIN, ctx.owner, ctx.now, job=r.jobs[JobKind.TRAINING]))
    job = record.jobs[JobKind.TRAINING]
    answer = {"outcome": "already_started", "job": job, "monitor_rescheduled": rescheduled}
    return StageAnswer(200, {"run_id": ctx.run_id, "stage": Stage.TRAIN, **answer})


def _import_dataset(ctx: StageContext, record: RunRecord) -> RunRecord | StageAnswer:
    """The imported dataset's record, or the answer that hands the wait for the import to monitor."""
    services, backend = ctx.services, ctx.services.backend
    if JobKind.DATASET_IMPORT not in record.jobs:
        ctx.set_status(ModelRunStatus.TRAINING_MODEL, backend=record.backend, run_record=services.runs.uri(ctx.run_id))
        record, key = ctx.update(lambda r: rr.intend_launch(r, JobKind.DATASET_IMPORT, ctx.now))
        labels = resource_labels(services.settings, record)
        import_uri = record.artifacts["import_jsonl"]
        with _refused_fails("dataset import"):
            ref = backend.start_dataset_import(
                DatasetRequest(ctx.run_id, Task(record.task), import_uri, labels, key, backend=record.backend)
            )

        def started_import(r: RunRecord) -> None:
            rr.launched(r, JobKind.DATASET_IMPORT, ref.ref)
            if ref.link:
                r.links["dataset"] = ref.link

        record, _ = ctx.update(started_import)
    status = backend.dataset_status(record.jobs[JobKind.DATASET_IMPORT])
    dataset = status.result
    if status.state is JobState.SUCCEEDED and dataset:
        record, _ = ctx.update(lambda r: r.jobs.__setitem__("dataset", dataset))
        return record
    if status.state.finished:
        ctx.update(lambda r: rr.forget_failed_job(r, JobKind.DATASET_IMPORT, ctx.now, status.error))
        raise StageFailed(
            f"dataset import {status.state.value}: {status.error or 'no reason given'}; re-run train to import again",
            link=status.link,
        )
    import_ref = record.jobs[JobKind.DATASET_IMPORT]
    _start_watch(ctx, kind=JobKind.DATASET_IMPORT, ref=import_ref, next_stage=Stage.TRAIN, done=False)
    return StageAnswer(
        202, {"run_id": ctx.run_id, "stage": Stage.TRAIN, "outcome": "waiting", "for": JobKind.DATASET_IMPORT}
    )


def _start_training(ctx: StageContext, record: RunRecord) -> StageAnswer:
    services = ctx.services
    record, key = ctx.update(lambda r: rr.intend_launch(r, JobKind.TRAINING, ctx.now))
    request = TrainingRequest(
        run_id=ctx.run_id,
        task=Task(record.task),
        dataset=record.jobs["dataset"],
        labels=resource_labels(services.settings, record),
        display_name=f"lb-{record.model_run_id}"[:120],
        job_key=key,
        settings=run_settings.of_record(services.settings, record).training,
        backend=record.backend,
    )
    with _refused_fails("training"):
        job = services.backend.start_training(request)

    def started_training(r: RunRecord) -> None:
        rr.launched(r, JobKind.TRAINING, job.ref)
        if job.link:
            r.links[JobKind.TRAINING] = job.link

    ctx.update(started_training)
    metadata = {"training_job": job.ref, **({"training_link": job.link} if job.link else {})}
    ctx.set_status(ModelRunStatus.TRAINING_MODEL, **metadata)
    _start_watch(ctx, kind=JobKind.TRAINING, ref=job.ref, next_stage=Stage.INFERENCE, done=True)
    answer = {"outcome": "training_started", "job": job.ref, "link": job.link}
    return StageAnswer(202, {"run_id": ctx.run_id, "stage": Stage.TRAIN, **answer})


def train_already_done(services: Services, record: RunRecord) -> dict[str, Any]:
    """A repeated `train` call on a started training: if that job has failed (say its process was
    killed) the re-run restarts it; otherwise make sure a monitor look is pending, now."""
    job = record.jobs.get(JobKind.TRAINING)
    if job and record.status is RunStatus.RUNNING and services.backend.training_status(job).state in FAILED_JOB:
        return {REDO: True}
    return {"job": job, "monitor_rescheduled": ensure_monitor(services, record, lost_only=False)}
