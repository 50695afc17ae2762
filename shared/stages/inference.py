"""Inference: batch prediction on the held-out rows, then everything back into the model run.

First call: write the instances file and start batch prediction, which `monitor` watches like training.
Then, in shards, so that no invocation grows with the run (a million held-out rows is a hundred shards):

1. Split (the call from `monitor` when the job is done): the job's output is streamed once and every
   line routed to the manifest chunk of its row (`inference_split`); the held-out rows are cut into
   delivery shards of INFERENCE_SHARD_ROWS (`inference_plan`), one call each is handed off, and the
   stage waits (pending) for its shards (`shards.py`).
2. Shards (`{"run_id": ..., "shard": i}`, in parallel, `inference_delivery`): each converts its
   predictions with the run's model type (`ModelType.prediction`), joins its rows to them, uploads
   them with per-row diagnostics in marked chunks (a re-delivery never uploads a chunk twice), and
   stores a metrics partial per split and its report candidates.
3. Fan-in (a plain call once every shard is done, `inference_fan_in`): the partials are merged into the
   run-level metrics, the report written, and the run marked COMPLETE.

A re-run before the fan-in redoes only the unfinished shards; a forced re-run splits anew (and uploads
nothing already uploaded).
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Iterator

from shared import run_settings
from shared.dataset.manifest import ManifestRow, read_manifest
from shared.domain import run_record as rr
from shared.domain import shards as sh
from shared.domain.label_next import in_pool
from shared.domain.model_types import Task
from shared.domain.run_paths import RunPaths
from shared.domain.run_record import InferencePhase, JobKind, RunRecord, Stage
from shared.platform.port import ModelRunStatus
from shared.services import Services
from shared.stages.inference_delivery import run_inference_shard
from shared.stages.inference_fan_in import fan_in
from shared.stages.inference_plan import is_predicted
from shared.stages.inference_split import current_split, predicted_splits, predicts_pool, split_delivery
from shared.stages.runner import StageAnswer, StageContext, StageFailed, model_type_of
from shared.stages.shards import fan_out, wait_for_shards
from shared.stages.watch import backoff_delay, schedule_look, watch_job
from shared.training.labels import resource_labels
from shared.training.port import JobState, PredictionRequest, RequestRefused

__all__ = ["held_out_rows", "run_inference", "run_inference_shard"]  # the shard work, for the entry point

SCAN_CONFIDENCE = 0.01  # batch prediction keeps low-confidence boxes so the PR curves and mAP are whole


def held_out_rows(services: Services, run_id: str) -> Iterator[ManifestRow]:
    """The rows batch prediction runs on: the held-out splits' (scored), and the rows to rank for
    labeling (`inference_plan.is_predicted`)."""
    splits, pool = predicted_splits(services), predicts_pool(services)
    for row in read_manifest(services.store, run_id):
        if is_predicted(row.split.value, row.labeled, splits, pool):
            yield row


def run_inference(ctx: StageContext) -> StageAnswer:
    record = ctx.record()
    model_type_of(record)  # a type this process has not registered fails before a job starts
    if rr.inference_phase(record) is InferencePhase.PREDICTING:
        return _start_batch_prediction(ctx, record)
    return _deliver(ctx, record)


def _start_batch_prediction(ctx: StageContext, record: RunRecord) -> StageAnswer:
    services = ctx.services
    base = {"run_id": ctx.run_id, "stage": "inference"}
    if "batch_prediction" in record.jobs:  # a re-run after the job failed starts a new one
        status = services.backend.batch_prediction_status(record.jobs["batch_prediction"])
        if status.state in (JobState.FAILED, JobState.CANCELLED):
            record, _ = ctx.update(lambda r: rr.forget_failed_job(r, "batch_prediction", ctx.now, status.error))
    if "batch_prediction" not in record.jobs:
        key = RunPaths(ctx.run_id).instances
        count = to_rank = 0
        with tempfile.NamedTemporaryFile("w", suffix=".jsonl") as tmp:
            for row in held_out_rows(services, ctx.run_id):
                tmp.write(json.dumps({"content": row.image_uri, "mimeType": row.mime_type}) + "\n")
                ranked = in_pool(row.split.value, row.labeled)
                count += not ranked
                to_rank += ranked
            tmp.flush()
            if not count:
                raise StageFailed("no validation or test rows to predict on: assign rows to those splits")
            services.store.upload_file(key, tmp.name, content_type="application/jsonl")
        settings = run_settings.of_record(services.settings, record)
        record, job_key = ctx.update(lambda r: rr.intend_launch(r, "batch_prediction", ctx.now))
        request = PredictionRequest(
            run_id=ctx.run_id,
            task=Task(record.task),
            model=record.jobs["model"],
            instances_uri=services.store.uri(key),
            output_uri_prefix=services.store.uri(RunPaths(ctx.run_id).prediction_output),
            confidence_threshold=min(SCAN_CONFIDENCE, settings.confidence_threshold),
            max_predictions=settings.max_predictions,
            labels=resource_labels(services.settings, record),
            display_name=f"lb-predict-{record.model_run_id}"[:120],
            job_key=job_key,
            backend=record.backend,
        )
        try:
            job = services.backend.start_batch_prediction(request)
        except RequestRefused as exc:
            raise StageFailed(f"batch prediction refused: {exc}") from exc

        def started(r: RunRecord) -> None:
            rr.launched(r, "batch_prediction", job.ref)
            r.artifacts["instances"] = services.store.uri(key)
            r.data_quality["held_out_rows"] = count
            r.data_quality["rows_to_rank"] = to_rank  # unlabeled and unassigned: predicted, ranked, not scored
            if job.link:
                r.links["batch_prediction"] = job.link

        record, _ = ctx.update(started)
        ctx.set_status(ModelRunStatus.TRAINING_MODEL, phase="batch prediction", batch_prediction_job=job.ref)
    delay = backoff_delay(services, 0)
    ref = record.jobs["batch_prediction"]

    def wait(r: RunRecord) -> rr.Watch:
        watch = (
            r.watch
            if r.watch and r.watch.ref == ref
            else watch_job(
                r,
                kind=JobKind.BATCH_PREDICTION,
                ref=ref,
                next_stage=Stage.INFERENCE,
                now=ctx.now,
                delay_s=delay,
                started_by=Stage.INFERENCE,
            )
        )
        rr.release(r, "inference", ctx.owner, ctx.now, waiting_for="batch_prediction")
        return watch

    _record, watch = ctx.update(wait)
    schedule_look(services, ctx.run_id, watch)
    return StageAnswer(202, {**base, "outcome": "waiting", "for": "batch_prediction", "job": ref})


def _deliver(ctx: StageContext, record: RunRecord) -> StageAnswer:
    """The batch job is done: split its output into delivery shards (once per split), fan them out and
    wait; the plain call made once every shard is done fans in."""
    shards = sh.shards_of(record, Stage.INFERENCE)
    if ctx.force or shards is None or not current_split(ctx.services, record, shards):
        shards = split_delivery(ctx, record)
    if not shards.finished:
        return wait_for_shards(ctx, fan_out(ctx))
    return fan_in(ctx, shards)
