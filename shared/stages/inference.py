"""Inference: batch prediction on the held-out rows, then everything back into the model run.

First call: write the instances file and start batch prediction, which `monitor` watches like training.
Second call (from `monitor`, when the job is done): read every output file, join predictions to data
rows, upload predictions with per-row diagnostics in chunks (each recorded as it succeeds, so a re-run
never uploads a chunk twice), compute run-level metrics, write the report, and mark the run COMPLETE.
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Iterator

from shared.dataset.manifest import ManifestRow, read_manifest
from shared.domain import run_record as rr
from shared.domain.model_types import Task
from shared.domain.run_paths import RunPaths
from shared.domain.run_record import InferencePhase, JobKind, RunRecord, Stage, StageState
from shared.evaluation import evaluate_rows, join_predictions
from shared.formats.vertex_prediction import PredictionLineError, VertexPrediction, parse_prediction_line
from shared.metrics.summary import by_split, compact, headline, run_metrics
from shared.platform.port import ModelRunStatus
from shared.report import render_report
from shared.report.assemble import report_data
from shared.services import Services
from shared.stages.runner import StageAnswer, StageContext, StageFailed
from shared.stages.upload import upload_predictions
from shared.stages.watch import backoff_delay, schedule_look, watch_job
from shared.training.labels import resource_labels
from shared.training.port import JobState, PredictionRequest

SCAN_CONFIDENCE = 0.01  # batch prediction keeps low-confidence boxes so the PR curves and mAP are whole


def _predicted_splits(services: Services) -> set[str]:
    splits = {"validation", "test"}
    if services.settings.predict.on_training:
        splits.add("training")
    return splits


def held_out_rows(services: Services, run_id: str) -> Iterator[ManifestRow]:
    wanted = _predicted_splits(services)
    for row in read_manifest(services.store, run_id):
        if row.split in wanted:
            yield row


def run_inference(ctx: StageContext) -> StageAnswer:
    record = ctx.record()
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
        count = 0
        with tempfile.NamedTemporaryFile("w", suffix=".jsonl") as tmp:
            for row in held_out_rows(services, ctx.run_id):
                tmp.write(json.dumps({"content": row.image_uri, "mimeType": row.mime_type}) + "\n")
                count += 1
            tmp.flush()
            if not count:
                raise StageFailed("no validation or test rows to predict on: assign rows to those splits")
            services.store.upload_file(key, tmp.name, content_type="application/jsonl")
        settings = services.settings
        record, job_key = ctx.update(lambda r: rr.intend_launch(r, "batch_prediction", ctx.now))
        job = services.backend.start_batch_prediction(
            PredictionRequest(
                run_id=ctx.run_id,
                task=Task(record.task),
                model=record.jobs["model"],
                instances_uri=services.store.uri(key),
                output_uri_prefix=services.store.uri(RunPaths(ctx.run_id).prediction_output),
                confidence_threshold=min(SCAN_CONFIDENCE, settings.predict.confidence_threshold),
                max_predictions=settings.predict.max_predictions,
                labels=resource_labels(services.settings, record),
                display_name=f"lb-predict-{record.model_run_id}"[:120],
                job_key=job_key,
            )
        )

        def started(r: RunRecord) -> None:
            rr.launched(r, "batch_prediction", job.ref)
            r.artifacts["instances"] = services.store.uri(key)
            r.data_quality["held_out_rows"] = count
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


# The files of a batch prediction's output directory: AutoML writes `predictions_00001.jsonl` and, for
# instances it could not predict, `errors_00001.jsonl`; custom models write `prediction.results-*` and
# `prediction.errors_stats-*`. Every one is read: an error line names the instance that failed.
OUTPUT_FILE_PREFIXES = ("predictions", "prediction.results", "errors", "prediction.errors")


def _read_outputs(services: Services, output_uri: str) -> Iterator[VertexPrediction | PredictionLineError]:
    """Every line of every output file in the job's output directory."""
    prefix = services.store.key_from_uri(output_uri.rstrip("/") + "/")
    for key in services.store.list(prefix):
        if not key.rsplit("/", 1)[-1].startswith(OUTPUT_FILE_PREFIXES):
            continue
        with services.store.open_read(key) as stream:
            for line in stream:
                if line.strip():
                    yield parse_prediction_line(line)


def _deliver(ctx: StageContext, record: RunRecord) -> StageAnswer:
    services, settings = ctx.services, ctx.services.settings
    task = Task(record.task)
    rows = {row.image_uri: row for row in held_out_rows(services, ctx.run_id)}
    joined = join_predictions(rows, _read_outputs(services, record.artifacts["prediction_output"]))
    if joined.failed_reasons:  # shown with the data-quality counts in the report, the config and the record
        record.data_quality["failed_predictions"] = dict(joined.failed_reasons)
    feature_for = json.loads(record.artifacts.get("label_map") or "{}")
    evaluated = evaluate_rows(
        list(rows.values()),
        joined,
        task=task,
        feature_for=feature_for,
        question=record.artifacts.get("classification_question"),
        confidence_threshold=settings.predict.confidence_threshold,
        max_predictions=settings.predict.max_predictions,
        uuid_seed=f"{ctx.run_id}:{record.restarts}",
    )
    threshold = settings.predict.confidence_threshold
    metrics = run_metrics(task, evaluated.detections, evaluated.classifications, threshold)
    split_of = {row.data_row_id: row.split.value for row in rows.values()}
    metrics["by_split"] = by_split(task, evaluated.detections, evaluated.classifications, split_of, threshold)
    uploads = upload_predictions(ctx, record, evaluated)

    report_key = RunPaths(ctx.run_id).report
    data = report_data(
        record,
        metrics,
        evaluated,
        list(rows.values()),
        image_of=lambda uri: services.store.read(services.store.key_from_uri(uri)),
        threshold=threshold,
        finished_at=rr.iso(services.clock()),
    )
    services.store.write(report_key, render_report(data).encode(), content_type="text/html")
    report_uri = services.store.uri(report_key)
    summary = headline(metrics, task)
    services.platform.update_config(
        record.model_run_id,
        {
            "chain": {
                "run_id": ctx.run_id,
                "backend": record.backend,
                "model_type": record.model_type,
                "model": record.jobs.get("model"),
                "report": report_uri,
            },
            "metrics": compact(metrics),
            "data_quality": record.data_quality,
        },
    )

    def finish(r: RunRecord) -> None:
        r.metrics.update({"summary": metrics, "prediction_problems": dict(joined.problems)})
        if joined.failed_reasons:
            r.data_quality["failed_predictions"] = dict(joined.failed_reasons)
        r.artifacts["report"] = report_uri
        r.uploads.update(uploads)
        monitor = r.stage("monitor")
        if monitor.state is StageState.PENDING and monitor.attempts:
            monitor.state = StageState.SUCCEEDED
        rr.succeed(r, "inference", ctx.owner, ctx.now, predictions=evaluated.prediction_count)
        rr.complete_run(r, ctx.now)

    ctx.services.runs.update(ctx.run_id, finish)
    services.platform.update_status(
        record.model_run_id,
        ModelRunStatus.COMPLETE,
        metadata={
            **summary,
            "report": report_uri,
            "predictions_uploaded": str(uploads["accepted"]),
            "rows_with_predictions": str(evaluated.predicted_rows),
            "upload_errors": str(uploads["rejected"]),
            "prediction_problems": str(sum(joined.problems.values())),
            "failed_predictions": str(len(joined.failed)),
            **{f"failed: {reason}"[:100]: str(n) for reason, n in joined.failed_reasons.most_common(5)},
        },
    )
    return StageAnswer(
        200, {"run_id": ctx.run_id, "stage": "inference", "outcome": "complete", **summary, "report": report_uri}
    )
