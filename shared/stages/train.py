"""Train: create the dataset and start the training job, then leave the waiting to `monitor`.

Dataset import can outlast a function, so it is started and watched like training: `monitor` calls
`train` again when the import is done, and this stage resumes where the record says it stopped. A job
that exists is never started twice; a repeated call only makes sure a monitor look is scheduled.
"""

from __future__ import annotations

from typing import Any

from shared import run_record as rr
from shared.bootstrap import Services
from shared.formats.vertex_import import label_value
from shared.model_types import Task
from shared.platform.port import ModelRunStatus
from shared.run_record import RunRecord
from shared.stages.runner import StageAnswer, StageContext, StageFailed
from shared.stages.watch import backoff_delay, look_is_overdue, schedule_look, watch_job
from shared.training.port import JobState, TrainingRequest

CHAIN_LABEL = "lb_chain"


def resource_labels(services: Services, record: RunRecord) -> dict[str, str]:
    """Labels on every backend resource, so teardown can find what a deployment created."""
    return {
        CHAIN_LABEL: label_value(services.settings.deployment_name),
        "lb_model_run": label_value(record.model_run_id),
    }


def _start_watch(ctx: StageContext, *, kind: str, ref: str, next_stage: str, done: bool) -> None:
    delay = backoff_delay(ctx.services, 0)

    def mutate(r: RunRecord) -> rr.Watch:
        watch = watch_job(r, kind=kind, ref=ref, next_stage=next_stage, now=ctx.now, delay_s=delay)
        if done:
            rr.succeed(r, ctx.stage, ctx.owner, ctx.now, job=ref)
        else:
            rr.release(r, ctx.stage, ctx.owner, ctx.now, waiting_for=kind)
        return watch

    _record, watch = ctx.update(mutate)
    schedule_look(ctx.services, ctx.run_id, watch)


def run_train(ctx: StageContext) -> StageAnswer:
    services = ctx.services
    record = ctx.record()
    backend = services.backend
    base: dict[str, Any] = {"run_id": ctx.run_id, "stage": "train"}

    if "training" in record.jobs:  # started by an earlier call: never a second job
        ensure_monitor(services, record)
        ctx.update(lambda r: rr.succeed(r, "train", ctx.owner, ctx.now, job=r.jobs["training"]))
        return StageAnswer(200, {**base, "outcome": "already_started", "job": record.jobs["training"]})

    if "dataset" not in record.jobs:
        if "dataset_import" not in record.jobs:
            ctx.set_status(
                ModelRunStatus.TRAINING_MODEL, backend=backend.name, run_record=services.runs.uri(ctx.run_id)
            )
            ref = backend.start_dataset_import(
                ctx.run_id, Task(record.task), record.artifacts["import_jsonl"], resource_labels(services, record)
            )

            def started_import(r: RunRecord) -> None:
                r.jobs["dataset_import"] = ref.ref
                if ref.link:
                    r.links["dataset"] = ref.link

            record, _ = ctx.update(started_import)
        status = backend.dataset_status(record.jobs["dataset_import"])
        if status.state is JobState.SUCCEEDED and status.result:
            record, _ = ctx.update(lambda r: r.jobs.__setitem__("dataset", status.result))
        elif status.state.finished:
            raise StageFailed(
                f"dataset import {status.state.value}: {status.error or 'no reason given'}", link=status.link
            )
        else:
            _start_watch(ctx, kind="dataset_import", ref=record.jobs["dataset_import"], next_stage="train", done=False)
            return StageAnswer(202, {**base, "outcome": "waiting", "for": "dataset_import"})

    job = backend.start_training(
        TrainingRequest(
            run_id=ctx.run_id,
            task=Task(record.task),
            dataset=record.jobs["dataset"],
            labels=resource_labels(services, record),
            display_name=f"lb-{record.model_run_id}"[:120],
        )
    )

    def started_training(r: RunRecord) -> None:
        r.jobs["training"] = job.ref
        if job.link:
            r.links["training"] = job.link

    ctx.update(started_training)
    metadata = {"training_job": job.ref, **({"training_link": job.link} if job.link else {})}
    ctx.set_status(ModelRunStatus.TRAINING_MODEL, **metadata)
    _start_watch(ctx, kind="training", ref=job.ref, next_stage="inference", done=True)
    return StageAnswer(202, {**base, "outcome": "training_started", "job": job.ref, "link": job.link})


def train_already_done(services: Services, record: RunRecord) -> dict[str, Any]:
    """A repeated `train` call: the job exists, so only make sure a monitor look is pending."""
    return {"job": record.jobs.get("training"), "monitor_rescheduled": ensure_monitor(services, record)}


def ensure_monitor(services: Services, record: RunRecord) -> bool:
    """Re-schedules the monitor's look when the scheduled one was lost; True if it scheduled one."""
    watch = record.watch
    if watch is None or not look_is_overdue(services, watch):
        return False
    now = services.clock()

    def advance(r: RunRecord) -> rr.Watch | None:
        if r.watch is None or r.watch.look != watch.look:
            return None  # somebody else moved it on
        r.log(now, "monitor", "rescheduled", reason="the scheduled look was lost", look=r.looks + 1)
        return rr.next_look(r, now, 0.0)

    _record, advanced = services.runs.update(record.run_id, advance)
    return bool(advanced) and schedule_look(services, record.run_id, advanced)
