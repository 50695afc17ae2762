"""Inference's fan-in: every delivery shard is done; merge their results and complete the run.

The run-level metrics are merged from the shards' partials (`shared.metrics.merged`): per split for
`by_split`, and over every split's partials for the figures of all held-out rows, exactly what
`run_metrics` / `by_split` give over all rows at once. Counts are summed, the report shows the first
rows by data row id of all shards' candidates, and the model run gets its config, its report and
COMPLETE, as a single pass ends. Uploads were made by the shards; the fan-in only records them, so a
fan-in run again (after a kill) redoes nothing the platform sees twice but the config and status.
Last, when the run's settings name a labeling project, the rows to label next are sent there with
their pre-labels (`label_next_send`): after COMPLETE, so that a failure there loses no result.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any, BinaryIO

from shared import run_settings
from shared.domain import run_record as rr
from shared.domain.model_types import Task
from shared.domain.run_paths import RunPaths
from shared.domain.run_record import RunRecord, Stage, StageState
from shared.domain.shards import ShardSet
from shared.metrics.summary import compact, headline, merged_run_metrics, split_figures
from shared.platform.port import ModelRunStatus
from shared.report import render_report
from shared.report.assemble import (
    LabelNextCandidate,
    SampleCandidate,
    chosen_samples,
    report_data_of_samples,
    top_label_next,
)
from shared.stages.inference_outcome import DeliveryTotals, ShardOutcome
from shared.stages.label_next_send import send_label_next, shown
from shared.stages.runner import StageAnswer, StageContext, StageFailed
from shared.stages.shards import shard_states
from shared.stages.upload import recorded_uploads
from shared.store.port import NotFound, ObjectStore


def _outcome(ctx: StageContext, index: int) -> ShardOutcome:
    try:
        return ShardOutcome.from_json(shard_states(ctx.services).read_result(ctx.run_id, Stage.INFERENCE, index))
    except NotFound:  # done in the record but its result is gone: only a re-run of that shard helps
        raise StageFailed(
            f"delivery shard {index} is marked done but its result is missing; re-run inference with force"
        ) from None


PARTIAL_READ_AHEAD = 256 * 1024  # per open partial: 300 of them (100 shards, 3 splits) stay under 100 MB


def _opener(store: ObjectStore, key: str) -> Callable[[], BinaryIO]:
    return lambda: store.open_read(key, read_ahead=PARTIAL_READ_AHEAD)


def merged_metrics(store: ObjectStore, task: Task, totals: DeliveryTotals, threshold: float) -> dict[str, Any]:
    """The run-level metrics of all held-out rows, with `by_split`, from the shards' partials."""
    metrics = merged_run_metrics(task, [_opener(store, k) for k in totals.all_partials()], threshold)
    metrics["by_split"] = {
        split: split_figures(merged_run_metrics(task, [_opener(store, k) for k in keys], threshold))
        for split, keys in sorted(totals.partials.items())
    }
    return metrics


def _chosen(store: ObjectStore, totals: DeliveryTotals) -> list[SampleCandidate]:
    candidates = [SampleCandidate.from_json(c) for key in totals.candidates for c in json.loads(store.read(key))]
    return chosen_samples(candidates)


def _label_next(store: ObjectStore, totals: DeliveryTotals, count: int) -> list[LabelNextCandidate]:
    candidates = [LabelNextCandidate.from_json(c) for key in totals.label_next for c in json.loads(store.read(key))]
    return top_label_next(candidates, count)


def fan_in(ctx: StageContext, shards: ShardSet) -> StageAnswer:
    """Merges the shards' results; writes the report, the config and the status; completes the run."""
    services, settings = ctx.services, ctx.services.settings
    store, record = services.store, ctx.record()
    task, threshold = Task(record.task), run_settings.of_record(settings, record).confidence_threshold
    totals = DeliveryTotals.of([_outcome(ctx, i) for i in range(shards.count)])
    ctx.heartbeat(every_s=0, merging=f"{shards.count} shards")
    metrics = merged_metrics(store, task, totals, threshold)
    if totals.failed_reasons:  # shown with the data-quality counts in the report, the config and the record
        record.data_quality["failed_predictions"] = dict(totals.failed_reasons)
    uploads = recorded_uploads(record.uploads, totals.uploads)
    frozen = run_settings.of_record(settings, record)
    label_next = _label_next(store, totals, frozen.label_next_count)
    listed: dict[str, Any] = {
        "strategy": frozen.label_next_strategy,
        "rows_ranked": totals.ranked,
        "rows": [c.listed() for c in label_next],
    }

    report_key = RunPaths(ctx.run_id).report
    data = report_data_of_samples(
        record,
        metrics,
        _chosen(store, totals),
        image_of=lambda uri: store.read(store.key_from_uri(uri)),
        finished_at=rr.iso(services.clock()),
        label_next=label_next,
        label_next_strategy=frozen.label_next_strategy,
        rows_ranked=totals.ranked,
    )
    store.write(report_key, render_report(data).encode(), content_type="text/html")
    report_uri = store.uri(report_key)
    summary = headline(metrics, task)
    results = {
        "run_id": ctx.run_id,
        "backend": record.backend,
        "model_type": record.model_type,
        "model": record.jobs.get("model"),
        "report": report_uri,
        "settings": frozen.to_dict(),
        "metrics": compact(metrics),
        "data_quality": record.data_quality,
        "label_next": {**listed, "rows": [row["data_row_id"] for row in listed["rows"]]},
    }
    # the user's own keys (their "train" settings, their tracking) stay as they are now, edits included
    current = services.platform.get_config(record.model_run_id)
    services.platform.update_config(record.model_run_id, run_settings.merged_results(current, results))

    def finish(r: RunRecord) -> None:
        r.metrics.update({"summary": metrics, "prediction_problems": dict(totals.problems), "label_next": listed})
        if totals.failed_reasons:
            r.data_quality["failed_predictions"] = dict(totals.failed_reasons)
        r.artifacts["report"] = report_uri
        r.uploads.update(uploads)
        monitor = r.stage("monitor")
        if monitor.state is StageState.PENDING and monitor.attempts:
            monitor.state = StageState.SUCCEEDED
        rr.succeed(r, Stage.INFERENCE, ctx.owner, ctx.now, predictions=totals.predictions)
        rr.complete_run(r, ctx.now)

    services.runs.update(ctx.run_id, finish)
    services.platform.update_status(
        record.model_run_id,
        ModelRunStatus.COMPLETE,
        metadata={
            **summary,
            "report": report_uri,
            "predictions_uploaded": str(uploads["accepted"]),
            "rows_with_predictions": str(totals.predicted_rows),
            "upload_errors": str(uploads["rejected"]),
            "prediction_problems": str(sum(totals.problems.values())),
            "failed_predictions": str(totals.failed),
            "label_next": f"{len(label_next)} of {totals.ranked} rows to rank, by {frozen.label_next_strategy}",
            **{f"failed: {reason}"[:100]: str(n) for reason, n in totals.failed_reasons.most_common(5)},
            **frozen.shown(),
        },
    )
    body = {"run_id": ctx.run_id, "stage": Stage.INFERENCE, "outcome": "complete", **summary, "report": report_uri}
    sent = send_label_next(services, record, frozen, label_next)  # never raises: the run is complete
    if sent is not None:
        body["label_next_sent"] = shown(sent)
    return StageAnswer(200, body)
