"""ETL: the model run's export -> Vertex import JSONL, staged images and a row manifest in the bucket.

The export is started once and its task recorded, so a re-run reads the same export. ETL waits for it
at most ETL_EXPORT_WAIT_S (and never past its own function timeout), heartbeating as it polls; an
export still running then is handed to `monitor` like any long job, and `monitor` calls ETL again
once it is ready. So a slow export never outlives the function and never leaves the stage running
under a dead owner.

Rows are streamed from the export and handled in blocks of `etl_chunk_rows`: each block's images are
staged concurrently, and its import lines and manifest lines are written as one chunk file each, so
memory stays flat however many rows the run holds. The manifest (one line per kept row, including the
unassigned rows that do not train) is what `inference` joins predictions and ground truth through.

Bad rows are counted by kind, with a few examples each (`DataQuality`). Two things need the whole
export: a data row id seen twice (the first row is kept; the ids seen are held in a set, about 100
bytes a row: 100 MB for a million rows), and labels with too few images for Vertex, known only once
every row is counted. With ETL_RARE_LABELS=drop (the default) those labels are taken out in a second
pass over the chunk files, one chunk at a time, and the kept rows counted again; with `fail`, or when
dropping leaves nothing Vertex can train on, the stage fails and says why.
"""

from __future__ import annotations

import json
import time
from collections import Counter
from collections.abc import Callable, Mapping

from shared.dataset import manifest
from shared.dataset.builder import TrainingSetBuilder
from shared.dataset.image_staging import ImageStager
from shared.dataset.manifest import ManifestRow, jsonl, read_jsonl
from shared.dataset.training_set import import_line_without
from shared.domain import run_record as rr
from shared.domain.data_quality import BOX_OF_DROPPED_LABEL, MIN_IMAGES_PER_LABEL, ROW_OF_DROPPED_LABELS, DataQuality
from shared.domain.examples import Split
from shared.domain.model_types import Task
from shared.domain.run_paths import RunPaths
from shared.domain.run_record import JobKind, Stage
from shared.formats.vertex_import import LabelNames
from shared.platform.port import ExportState, ExportStatus, ModelRunStatus
from shared.stages.runner import StageAnswer, StageContext, StageFailed
from shared.stages.watch import backoff_delay, schedule_look, watch_job
from shared.store.port import ObjectStore

EXPORT_POLL_S = 2.0
TIMEOUT_MARGIN_S = 120.0  # what ETL keeps of its function's time for work after the wait
EXPORT_ERROR_REASON = "row Labelbox could not export"


class _SplitLookup:
    """Falls back to the platform's per-row splits, fetched once and only if a row lacks its split."""

    def __init__(self, ctx: StageContext, model_run_id: str) -> None:
        self._ctx = ctx
        self._model_run_id = model_run_id
        self._splits: Mapping[str, Split] | None = None

    def get(self, data_row_id: str, default: Split = Split.UNASSIGNED) -> Split:
        if self._splits is None:
            self._splits = self._ctx.services.platform.data_row_splits(self._model_run_id)
        return self._splits.get(data_row_id, default)


def _export_ready(ctx: StageContext) -> tuple[str, ExportStatus] | StageAnswer:
    """The model run's export, started once: its task id and final status, or the answer that hands
    the wait to `monitor` when it is still running after a bounded wait."""
    services, settings = ctx.services, ctx.services.settings
    record = ctx.record()
    task_id = None if ctx.force else record.artifacts.get("export_task")
    if task_id is None:
        task_id = services.platform.start_export(record.model_run_id)
        ctx.update(lambda r: r.artifacts.__setitem__("export_task", task_id))
    wait_s = max(0.0, min(settings.etl.export_wait_s, settings.function_timeout_s - TIMEOUT_MARGIN_S))
    deadline = time.monotonic() + wait_s
    status = services.platform.export_status(task_id)
    while status.state is ExportState.RUNNING and time.monotonic() < deadline:
        ctx.heartbeat(export="running")
        time.sleep(min(EXPORT_POLL_S, max(0.0, deadline - time.monotonic())))
        status = services.platform.export_status(task_id)
    if status.state is ExportState.FAILED:
        ctx.update(lambda r: r.artifacts.pop("export_task", None))  # a re-run starts a new export
        raise StageFailed(
            f"the Labelbox export failed: {status.error or 'no reason given'}; re-run etl to export again"
        )
    if status.state is ExportState.RUNNING:
        delay = backoff_delay(services, 0)

        def hand_to_monitor(r: rr.RunRecord) -> rr.Watch:
            watch = watch_job(
                r,
                kind=JobKind.EXPORT,
                ref=task_id,
                next_stage=Stage.ETL,
                now=ctx.now,
                delay_s=delay,
                started_by=Stage.ETL,
            )
            rr.release(r, Stage.ETL, ctx.owner, ctx.now, waiting_for=JobKind.EXPORT)
            return watch

        _record, watch = ctx.update(hand_to_monitor)
        schedule_look(services, ctx.run_id, watch)
        return StageAnswer(202, {"run_id": ctx.run_id, "stage": Stage.ETL, "outcome": "waiting", "for": JobKind.EXPORT})
    return task_id, status


def run_etl(ctx: StageContext) -> StageAnswer:
    services, settings = ctx.services, ctx.services.settings
    ready = _export_ready(ctx)
    if isinstance(ready, StageAnswer):
        return ready
    export_task, export = ready
    record = ctx.record()
    task = Task(record.task)
    store = services.store
    paths = RunPaths(record.run_id)
    builder = TrainingSetBuilder(task, record.model_run_id, split_fallback=_SplitLookup(ctx, record.model_run_id))
    quality, names = builder.quality, builder.names
    chunk = 0
    status_set = False
    copies: Counter[str] = Counter()

    with ImageStager(
        store,
        services.platform,
        run_id=record.run_id,
        model_run_id=record.model_run_id,
        max_bytes=settings.etl.max_image_bytes,
        max_pixels=settings.etl.max_image_pixels,
        concurrency=settings.etl.copy_concurrency,
    ) as stager:
        rows = services.platform.read_export(record.model_run_id, export_task)
        for converted in builder.example_blocks(rows, settings.etl.chunk_rows):
            if not status_set:  # the export is ready: from here on we prepare data
                ctx.set_status(ModelRunStatus.PREPARING_DATA, run_record=services.runs.uri(record.run_id))
                status_set = True
            done = builder.training_rows(converted, stager.stage_many([c.example for c in converted]))
            copies.update(done.copies)
            store.write(paths.import_chunk(chunk), jsonl(done.import_lines), content_type="application/jsonl")
            manifest.write_chunk(store, paths, chunk, done.manifest_rows)
            chunk += 1
            ctx.heartbeat(rows_seen=quality.rows_seen, rows_kept=quality.rows_kept, chunks=chunk, **copies)

    _remove_stale_chunks(store, paths, chunk)
    if export.row_errors:  # rows Labelbox itself could not export: counted, with a few of its messages
        quality.rows_skipped[EXPORT_ERROR_REASON] += export.row_errors
    rare = quality.rare_labels() if settings.etl.rare_labels == "drop" else {}
    if rare:
        _drop_labels(
            store,
            paths,
            chunk,
            rare,
            task=task,
            names=names,
            quality=quality,
            progress=lambda n: ctx.heartbeat(dropping_rare_labels=f"{n}/{chunk} chunks"),
        )
    report = {**quality.to_dict(), **copies}
    if export.row_error_samples:
        report["export_error_samples"] = list(export.row_error_samples)
    artifacts = {
        "import_jsonl": store.uri(paths.import_pattern),  # Vertex accepts wildcards; so does the engine
        "manifest": store.uri(paths.manifest_pattern),
        "images": store.uri(paths.images),
        "etl_chunks": str(chunk),
    }
    label_map = {vertex: feature for vertex, feature in names.to_feature().items() if feature not in rare}

    def record_results(r: rr.RunRecord) -> None:
        r.data_quality = report
        r.artifacts.update(artifacts)
        r.artifacts["label_map"] = json.dumps(label_map, sort_keys=True)
        if builder.question:
            r.artifacts["classification_question"] = builder.question

    ctx.update(record_results)
    if not status_set:
        raise StageFailed("the model run's export is empty: add labeled data rows to the model run")
    run_record = services.runs.uri(record.run_id)
    problems = quality.vertex_problems()
    if problems:  # the counts reach the model run before the failure does: they say what to fix
        services.platform.update_status(
            record.model_run_id,
            ModelRunStatus.PREPARING_DATA,
            metadata={**quality.summary(run_record), "run_record": run_record},
        )
        raise StageFailed(_not_usable(problems, rare))

    services.platform.update_status(
        record.model_run_id,
        ModelRunStatus.PREPARING_DATA,
        metadata={**quality.summary(run_record), "import_jsonl": artifacts["import_jsonl"], "run_record": run_record},
    )
    ctx.succeed(Stage.TRAIN, rows_kept=quality.rows_kept)
    return StageAnswer(
        200, {"run_id": record.run_id, "stage": Stage.ETL, "outcome": "succeeded", "data_quality": report}
    )


def _not_usable(problems: list[str], dropped: Mapping[str, int]) -> str:
    text = " | ".join(problems)
    if not dropped:
        return "training data not usable: " + text
    listed = ", ".join(f"{label} ({n})" for label, n in sorted(dropped.items())[:5])
    more = f" and {len(dropped) - 5} more" if len(dropped) > 5 else ""
    cause = f"after dropping labels with under {MIN_IMAGES_PER_LABEL} images ({listed}{more})"
    return f"training data not usable {cause}: {text}"


def _drop_labels(
    store: ObjectStore,
    paths: RunPaths,
    chunks: int,
    labels: Mapping[str, int],
    *,
    task: Task,
    names: LabelNames,
    quality: DataQuality,
    progress: Callable[[int], None] = lambda n: None,
) -> None:
    """Takes `labels` out of every written chunk, one chunk at a time, and counts the kept rows again.

    A detection image whose only boxes were of these labels leaves the training set, and so does a
    single-label row answering one of them; a multi-label row only loses that answer. The manifest is
    rewritten alike, so inference neither predicts nor scores a class the model never learned.
    """
    features = set(labels)
    display = {names.to_vertex[f] for f in features if f in names.to_vertex}
    quality.labels_dropped = dict(labels)
    quality.clear_kept()
    for index in range(chunks):
        kept: list[ManifestRow] = []
        for row in manifest.read_chunk(store, paths, index):
            new, boxes_removed = row.without(features)
            if boxes_removed:
                quality.drop_boxes(Counter({BOX_OF_DROPPED_LABEL: boxes_removed}), row.data_row_id)
            if new is None:
                quality.skip(ROW_OF_DROPPED_LABELS, row.data_row_id)
                continue
            quality.keep(new.split, [b[0] for b in new.boxes] if task is Task.OBJECT_DETECTION else new.labels)
            kept.append(new)
        manifest.write_chunk(store, paths, index, kept)
        import_key = paths.import_chunk(index)
        lines = [out for line in read_jsonl(store, import_key) if (out := import_line_without(line, display))]
        store.write(import_key, jsonl(lines), content_type="application/jsonl")
        progress(index + 1)


def _remove_stale_chunks(store: ObjectStore, paths: RunPaths, chunks: int) -> None:
    """A re-run over fewer rows must not leave chunks of the previous run behind."""
    for chunk_prefix in (paths.import_chunks, paths.manifest_chunks):
        for key in list(store.list(chunk_prefix)):
            try:
                index = int(key.rsplit("-", 1)[1].split(".")[0])
            except (IndexError, ValueError):
                continue
            if index >= chunks:
                store.delete(key)
