"""Monitor: one look at the run's long job, then either the next look is scheduled or the run moves on.

It never sleeps: a look that finds the job still running asks the scheduler (Cloud Tasks, or a timer
locally) to call it again after a backoff delay, and returns. A finished job hands the run to the
stage the watch names, once: the hand-off is recorded under the job's name, so a duplicate delivery of
the same look finds it done. A scheduled look carries its number; one that is not the watch's current
look (a duplicate, or a chain of looks a re-armed watch replaced) does nothing, so looks never fork.
A failed job fails the stage that started it, so re-running that stage starts the job anew.
"""

from __future__ import annotations

from typing import Any

from shared import run_settings
from shared.domain import run_record as rr
from shared.domain.model_types import Task
from shared.domain.run_record import JobKind, RunRecord, Stage, Watch
from shared.platform.port import ExportState
from shared.stages.runner import JobFailed, StageAnswer, StageContext, StageFailed
from shared.stages.watch import backoff_delay, schedule_look
from shared.training.port import JobState, JobStatus

# Where a finished job's result goes in the run record.
RESULT_FIELD = {
    JobKind.EXPORT: ("artifacts", "export_ready"),
    JobKind.DATASET_IMPORT: ("jobs", "dataset"),
    JobKind.TRAINING: ("jobs", "model"),
    JobKind.BATCH_PREDICTION: ("artifacts", "prediction_output"),
}
_EXPORT_STATES = {ExportState.RUNNING: JobState.RUNNING, ExportState.COMPLETE: JobState.SUCCEEDED}


def _status(ctx: StageContext, kind: JobKind, ref: str) -> JobStatus:
    backend = ctx.services.backend
    if kind is JobKind.EXPORT:
        export = ctx.services.platform.export_status(ref)
        state = _EXPORT_STATES.get(export.state, JobState.FAILED)
        return JobStatus(state, error=export.error, result=ref if state is JobState.SUCCEEDED else None)
    if kind is JobKind.DATASET_IMPORT:
        return backend.dataset_status(ref)
    if kind is JobKind.TRAINING:
        return backend.training_status(ref)
    if kind is JobKind.BATCH_PREDICTION:
        return backend.batch_prediction_status(ref)
    raise StageFailed(f"the run record watches an unknown kind of job {kind!r}")


def max_wait_s(ctx: StageContext, record: RunRecord, watch: Watch) -> tuple[float, str]:
    """How long the job may take before the run fails, and the setting that says so.

    A training may take its whole budget (plus a margin for queueing and model upload), however small
    MONITOR_MAX_WAIT_S is: cancelling a training that is still within its budget bills the user for
    nothing."""
    settings = ctx.services.settings
    if watch.kind is JobKind.TRAINING:
        training = run_settings.of_record(settings, record).training
        deadline = ctx.services.backend.training_deadline_s(watch.ref, Task(record.task), training)
        if deadline is not None:
            return deadline + settings.monitor.training_margin_s, "the training budget plus MONITOR_TRAINING_MARGIN_S"
    return settings.monitor.max_wait_s, "MONITOR_MAX_WAIT_S"


def run_monitor(ctx: StageContext) -> StageAnswer:
    services = ctx.services
    record = ctx.record()
    base: dict[str, Any] = {"run_id": ctx.run_id, "stage": Stage.MONITOR}
    watch = record.watch
    if watch is None:
        ctx.update(lambda r: rr.release(r, Stage.MONITOR, ctx.owner, ctx.now, waiting_for="nothing"))
        return StageAnswer(200, {**base, "outcome": "nothing_to_watch"})
    if ctx.look is not None and ctx.look != watch.look:
        ctx.update(lambda r: rr.release(r, Stage.MONITOR, ctx.owner, ctx.now, waiting_for=f"look {watch.look}"))
        return StageAnswer(200, {**base, "outcome": "stale_look", "look": ctx.look, "current_look": watch.look})

    status = _status(ctx, watch.kind, watch.ref)
    progress = {k: v for k, v in status.progress.items() if isinstance(v, (int, float, str))}
    what = watch.kind.replace("_", " ")

    if not status.state.finished:
        waited = ctx.now - watch.since
        limit, setting = max_wait_s(ctx, record, watch)
        if waited > limit:
            if watch.kind is JobKind.TRAINING:
                services.backend.cancel_training(watch.ref)
            raise JobFailed(
                f"{what} still {status.state.value} after {waited / 3600:.1f} h, longer than {setting} "
                f"({limit / 3600:.1f} h); it was cancelled where possible",
                link=status.link,
            )
        delay = backoff_delay(services, watch.attempt + 1)

        def next_look(r: RunRecord) -> rr.Watch:
            assert r.watch is not None
            r.watch.attempt += 1
            rr.next_look(r, ctx.now, delay)
            r.stage(Stage.MONITOR).progress = {"job": watch.kind, "state": status.state.value, **progress}
            rr.release(r, Stage.MONITOR, ctx.owner, ctx.now, waiting_for=f"{watch.kind} {status.state.value}")
            return r.watch

        _record, updated = ctx.update(next_look)
        schedule_look(services, ctx.run_id, updated)
        return StageAnswer(
            200, {**base, "outcome": "waiting", "state": status.state.value, "next_look_in_s": delay, **progress}
        )

    if status.state is not JobState.SUCCEEDED:
        raise JobFailed(
            f"{what} {status.state.value}: {status.error or 'the backend gave no reason'}; "
            f"re-run {watch.started_by or watch.kind.started_by} (or click Train model) "
            "to start it again",
            link=status.link,
        )

    section, key = RESULT_FIELD[watch.kind]
    handoff_key = f"{watch.next_stage}:after:{watch.kind}:{watch.ref}"

    def finished(r: RunRecord) -> bool:
        getattr(r, section)[key] = status.result or ""
        if watch.kind in (JobKind.TRAINING, JobKind.BATCH_PREDICTION):  # a job's figures: machine, cost, counts
            r.metrics[watch.kind] = progress
        r.watch = None
        r.stage(Stage.MONITOR).progress = {"job": watch.kind, "state": status.state.value, **progress}
        rr.release(r, Stage.MONITOR, ctx.owner, ctx.now, waiting_for="nothing")
        return rr.mark_handoff(r, handoff_key, ctx.now)

    _record, first = ctx.update(finished)
    if first:
        services.chain.hand_off(watch.next_stage, ctx.run_id, key=handoff_key)
    return StageAnswer(
        200,
        {
            **base,
            "outcome": "handed_off" if first else "already_handed_off",
            "to": watch.next_stage,
            "result": status.result,
        },
    )
