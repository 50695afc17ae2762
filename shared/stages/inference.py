"""Inference: batch prediction on the held-out rows, then everything back into the model run.

First call: write the instances file and start batch prediction, which `monitor` watches like training.
Second call (from `monitor`, when the job is done): read every output file, join predictions to data
rows, upload predictions with per-row diagnostics in chunks (each recorded as it succeeds, so a re-run
never uploads a chunk twice), compute run-level metrics, write the report, and mark the run COMPLETE.
"""

from __future__ import annotations

import json
import tempfile
from collections import Counter
from collections.abc import Iterator
from typing import Any

from shared.domain import run_record as rr
from shared.domain.model_types import Task
from shared.domain.run_paths import RunPaths
from shared.domain.run_record import RunRecord, StageState
from shared.evaluation import Evaluated, HeldOutRow, chunk_by_rows, evaluate_rows, join_predictions
from shared.formats.vertex_prediction import PredictionLineError, VertexPrediction, parse_prediction_line
from shared.metrics.classification import evaluate_classification
from shared.metrics.detection_map import evaluate_detections
from shared.platform.port import ModelRunStatus
from shared.report import ReportData, ReportSample, render_report
from shared.services import Services
from shared.stages.etl import read_manifest
from shared.stages.runner import StageAnswer, StageContext, StageFailed
from shared.stages.train import resource_labels
from shared.stages.watch import backoff_delay, schedule_look, watch_job
from shared.training.port import JobState, PredictionRequest

UPLOAD_ROWS_PER_CHUNK = 2_000  # data rows per import; each row carries its predictions and metrics
SCAN_CONFIDENCE = 0.01  # batch prediction keeps low-confidence boxes so the PR curves and mAP are whole
REPORT_SAMPLES = 24
MAX_ERROR_SAMPLES = 20


def _predicted_splits(services: Services) -> set[str]:
    splits = {"validation", "test"}
    if services.settings.predict_on_training:
        splits.add("training")
    return splits


def held_out_rows(services: Services, run_id: str) -> Iterator[HeldOutRow]:
    wanted = _predicted_splits(services)
    for line in read_manifest(services.store, run_id):
        if line["split"] in wanted:
            yield HeldOutRow.from_manifest(line)


def run_inference(ctx: StageContext) -> StageAnswer:
    record = ctx.record()
    if "prediction_output" not in record.artifacts:
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
                confidence_threshold=min(SCAN_CONFIDENCE, settings.predict_confidence_threshold),
                max_predictions=settings.predict_max_predictions,
                labels=resource_labels(services, record),
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
                kind="batch_prediction",
                ref=ref,
                next_stage="inference",
                now=ctx.now,
                delay_s=delay,
                started_by="inference",
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
        confidence_threshold=settings.predict_confidence_threshold,
        max_predictions=settings.predict_max_predictions,
        uuid_seed=f"{ctx.run_id}:{record.restarts}",
    )
    metrics = _run_metrics(record, evaluated, settings.predict_confidence_threshold)
    metrics["by_split"] = _by_split(record, evaluated, rows, settings.predict_confidence_threshold)
    uploads = _upload(ctx, record, evaluated)

    report_key = RunPaths(ctx.run_id).report
    services.store.write(
        report_key,
        render_report(_report_data(services, record, metrics, evaluated, list(rows.values()))).encode(),
        content_type="text/html",
    )
    report_uri = services.store.uri(report_key)
    summary = _summary(metrics, task)
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
            "metrics": _compact(metrics),
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


def _run_metrics(record: RunRecord, evaluated: Evaluated, threshold: float) -> dict[str, Any]:
    task = Task(record.task)
    if task is Task.OBJECT_DETECTION:
        classes = sorted({lbl for d in evaluated.detections for lbl in d.gt_labels})
        return evaluate_detections(evaluated.detections, classes, confidence_threshold=threshold)
    classes = sorted({lbl for i in evaluated.classifications for lbl in i.gt_labels})
    return evaluate_classification(
        evaluated.classifications,
        classes,
        multi_label=task is Task.MULTI_LABEL_CLASSIFICATION,
        confidence_threshold=threshold,
    )


def _by_split(
    record: RunRecord, evaluated: Evaluated, rows: dict[str, HeldOutRow], threshold: float
) -> dict[str, dict[str, Any]]:
    """The headline figures on each held-out split alone (the test split is the one to quote)."""
    split_of = {row.data_row_id: row.split for row in rows.values()}
    out: dict[str, dict[str, Any]] = {}
    for split in sorted(set(split_of.values())):
        subset = Evaluated(
            {},
            [d for d in evaluated.detections if split_of[d.image_id] == split],
            [i for i in evaluated.classifications if split_of[i.image_id] == split],
            0,
            0,
        )
        full = _run_metrics(record, subset, threshold)
        keep = ("map50", "map50_95", "precision", "recall", "f1", "accuracy", "exact_match", "macro_f1", "images")
        out[split] = {k: full[k] for k in keep if k in full}
    return out


def _upload(ctx: StageContext, record: RunRecord, evaluated: Evaluated) -> dict[str, Any]:
    """Uploads chunk by chunk; a chunk recorded as done (by an earlier, interrupted call) is skipped."""
    services = ctx.services
    chunks = chunk_by_rows(evaluated.upload_rows, UPLOAD_ROWS_PER_CHUNK)
    uploaded = set(ctx.record().uploads.get("chunks", {}))
    for index, rows in enumerate(chunks):
        name = f"lbchain-{ctx.run_id}-r{record.restarts}-{index:05d}"
        if name in uploaded:
            continue
        result = services.platform.upload_predictions(record.model_run_id, name, rows)

        def done(r: RunRecord, name: str = name, result: Any = result) -> None:
            r.uploads.setdefault("chunks", {})[name] = {"accepted": result.accepted, "rejected": len(result.errors)}
            samples = r.uploads.setdefault("error_samples", [])
            for error in result.errors[: max(0, MAX_ERROR_SAMPLES - len(samples))]:
                samples.append(error)

        ctx.update(done)
        ctx.heartbeat(uploaded_chunks=index + 1, chunks=len(chunks))
    uploads = ctx.record().uploads
    recorded = uploads.get("chunks", {})
    reasons: Counter[str] = Counter()
    for error in uploads.get("error_samples", []):
        for e in error.get("errors", []) or [{}]:
            reasons[str(e.get("message", "unknown"))[:120]] += 1
    return {
        "chunks": recorded,
        "accepted": sum(c["accepted"] for c in recorded.values()),
        "rejected": sum(c["rejected"] for c in recorded.values()),
        "error_reasons": dict(reasons),
    }


def _summary(metrics: dict[str, Any], task: Task) -> dict[str, str]:
    keys = ("map50", "map50_95", "precision", "recall", "f1", "best_f1", "best_f1_threshold")
    if task.is_classification:
        keys = ("accuracy", "exact_match", "precision", "recall", "f1", "macro_f1", "best_f1_threshold")
    return {k: f"{metrics[k]:.4f}" for k in keys if isinstance(metrics.get(k), (int, float))}


def _compact(metrics: dict[str, Any]) -> dict[str, Any]:
    """The metrics without curves, for Labelbox's model-run config."""
    out = {k: v for k, v in metrics.items() if k not in {"per_class", "confusion_matrix"}}
    out["per_class"] = {
        c: {k: v for k, v in m.items() if k != "pr_curve"} for c, m in (metrics.get("per_class") or {}).items()
    }
    return out


def _report_data(
    services: Services, record: RunRecord, metrics: dict[str, Any], evaluated: Evaluated, rows: list[HeldOutRow]
) -> ReportData:
    by_id = {row.data_row_id: row for row in rows}
    chosen = sorted(by_id)[:REPORT_SAMPLES]
    samples = []
    predictions = {d.image_id: d for d in evaluated.detections}
    items = {i.image_id: i for i in evaluated.classifications}
    threshold = services.settings.predict_confidence_threshold
    for data_row_id in chosen:
        row = by_id[data_row_id]
        image = services.store.read(services.store.key_from_uri(row.image_uri))
        if data_row_id in predictions:
            d = predictions[data_row_id]
            shown = [
                (lbl, float(s), float(b[0]), float(b[1]), float(b[2] - b[0]), float(b[3] - b[1]))
                for lbl, s, b in zip(d.pred_labels, d.pred_scores, d.pred_boxes, strict=True)
                if s >= threshold
            ]
            truth: list[Any] = list(row.boxes)
        else:
            scores = items[data_row_id].scores if data_row_id in items else {}
            shown = [(lbl, float(s)) for lbl, s in sorted(scores.items(), key=lambda kv: -kv[1]) if s >= threshold]
            truth = list(row.labels)
        samples.append(ReportSample(data_row_id, image, row.mime_type, row.width, row.height, truth, shown, row.split))
    return ReportData(
        run_id=record.run_id,
        model_run_id=record.model_run_id,
        model_type=record.model_type,
        task=record.task,
        backend=record.backend,
        status="complete",
        created_at=record.created_at,
        finished_at=rr.iso(services.clock()),
        training={**record.metrics.get("training", {}), **{f"job_{k}": v for k, v in record.jobs.items()}},
        data_quality=record.data_quality,
        metrics=metrics,
        samples=samples,
    )
