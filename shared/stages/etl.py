"""ETL: the model run's export -> Vertex import JSONL, staged images and a row manifest in the bucket.

In three calls of the stage, so that no invocation grows with the run (a million rows is about 100
shards) and shards run in parallel, as many at once as the queue allows:

1. Split (a plain call): the export is started once and its task recorded, so a re-run reads the same
   export. ETL waits for it at most ETL_EXPORT_WAIT_S (and never past its function timeout); an export
   still running then is handed to `monitor`, which calls ETL again once it is ready. The ready export
   is streamed once: each row converted (bad rows counted), the converted rows written in shard files
   of ETL_SHARD_ROWS, and what every shard must agree on written to the plan (`export_shards`). Then
   one call per shard is handed off and the stage waits (pending) for its shards (`shards.py`).
2. Shards (`{"run_id": ..., "shard": i}`, in parallel): each stages its rows' images, in blocks of
   ETL_CHUNK_ROWS copied concurrently, converts each labeled example with the run's model type
   (`ModelType.training_example`, found by name in this process's registry), and writes its chunk of
   the import JSONL and of the manifest (one line per kept row, including the unassigned rows that do
   not train: `inference` joins predictions and ground truth through it), and its counts, all of the
   converted examples. The last shard to finish hands off:
3. Fan-in (a plain call once every shard is done): the counts are merged; labels with too few images
   for Vertex, known only now, are dropped (ETL_RARE_LABELS=drop, the default) from the few chunks
   that hold them; the rules over the whole set (every split non-empty, Vertex's minimums) are
   checked; and the run moves on to `train`, once.

A re-run before the fan-in redoes only the unfinished shards; a forced re-run exports and splits anew.
Before an export starts, the run's `label_next_slice` (if any) is added to the model run, once per run
and again when forced, so the export brings its rows to rank (`_add_slice_rows`).
"""

from __future__ import annotations

import json
import time
from collections import Counter
from collections.abc import Callable, Iterator, Mapping, Sequence
from itertools import islice
from typing import Any, TypeVar

from shared import run_settings
from shared.dataset import manifest
from shared.dataset.builder import Block, TrainingSetBuilder
from shared.dataset.export_shards import EtlPlan, ExportSplitter, read_part
from shared.dataset.image_staging import ImageStager
from shared.dataset.manifest import ManifestRow, jsonl, read_jsonl
from shared.dataset.training_set import import_line_without
from shared.domain import run_record as rr
from shared.domain import shards as sh
from shared.domain.data_quality import BOX_OF_DROPPED_LABEL, MIN_IMAGES_PER_LABEL, ROW_OF_DROPPED_LABELS, DataQuality
from shared.domain.examples import Split
from shared.domain.model_types import Backend, ConversionFailed, Task
from shared.domain.run_paths import RunPaths
from shared.domain.run_record import JobKind, Stage
from shared.domain.shards import ShardSet
from shared.platform.port import ExportState, ExportStatus, ModelRunStatus, PlatformError, SliceNotFound
from shared.stages.runner import StageAnswer, StageContext, StageFailed, model_type_of
from shared.stages.shards import ShardContext, fan_out, shard_states, wait_for_shards
from shared.stages.watch import backoff_delay, schedule_look, watch_job
from shared.store.port import NotFound, ObjectStore

T = TypeVar("T")

EXPORT_POLL_S = 2.0
TIMEOUT_MARGIN_S = 120.0  # what ETL keeps of its function's time for work after the wait
EXPORT_ERROR_REASON = "row Labelbox could not export"
SLICE_ARTIFACT = "label_next_slice"  # {"slice", "rows", "restarts"}: the slice this run life added


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
        _add_slice_rows(ctx, record)  # before the export that is to carry them
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
    """The plain call: split (once the export is ready), fan out the unfinished shards, or fan in."""
    record = ctx.record()
    model_type_of(record)  # a type this process has not registered fails before anything is exported
    if not record.settings:  # before anything is exported or staged: a bad config fails at once
        _freeze_settings(ctx, record)
    shards = sh.shards_of(record, Stage.ETL)
    if ctx.force or shards is None or shards.splitting or shards.restarts != record.restarts:
        ready = _export_ready(ctx)
        if isinstance(ready, StageAnswer):
            return ready
        shards = _split(ctx, *ready)
    if not shards.finished:
        return wait_for_shards(ctx, fan_out(ctx))
    return _fan_in(ctx, shards)


def _freeze_settings(ctx: StageContext, record: rr.RunRecord) -> None:
    """Reads the model run's config once and freezes the run's settings into the record."""
    services = ctx.services
    try:
        config = services.platform.get_config(record.model_run_id)
    except PlatformError as exc:
        raise StageFailed(f"could not read the model run's config: {exc}") from None
    task, backend = Task(record.task), Backend(record.backend)
    try:
        resolved = run_settings.resolve(
            config, run_settings.deployment_defaults(services.settings, task, backend), task=task, backend=backend
        )
    except run_settings.RunConfigError as exc:
        raise StageFailed(f"{exc}; fix the model run's config and click Train model again") from None

    def freeze(r: rr.RunRecord) -> None:
        if not r.settings:
            r.settings = resolved.to_dict()
            r.log(ctx.now, Stage.ETL, "settings", from_config=list(resolved.from_config))

    ctx.update(freeze)


def _add_slice_rows(ctx: StageContext, record: rr.RunRecord) -> None:
    """Adds the run's `label_next_slice` to the model run, so the export brings its rows unlabeled and
    they are predicted and ranked. Once per run life (recorded, so a re-delivery does not repeat it);
    again when forced, as a slice is a saved query whose rows may have changed."""
    frozen = run_settings.of_record(ctx.services.settings, record)
    slice_id = frozen.label_next_slice
    if slice_id is None:
        return
    done = json.loads(record.artifacts.get(SLICE_ARTIFACT) or "{}")
    if not ctx.force and done.get("slice") == slice_id and done.get("restarts") == record.restarts:
        return
    in_config = "label_next_slice" in frozen.from_config
    where = (
        f"{run_settings.NAMESPACE}.label_next_slice in the model run's config" if in_config else "LABEL_NEXT_SLICE_ID"
    )
    try:
        rows = ctx.services.platform.add_rows_from_slice(
            record.model_run_id, slice_id, progress=lambda n: ctx.heartbeat(slice_rows_added=n)
        )
    except SliceNotFound as exc:  # what to change comes first: Labelbox keeps 255 characters of it
        message = f"label_next_slice {slice_id} does not exist: fix {where} (or remove it) and click Train model again"
        raise StageFailed(f"{message}; {exc}") from None
    except PlatformError as exc:
        raise StageFailed(
            f"could not add the rows of Catalog slice {slice_id} to the model run: {exc}; click Train model again"
        ) from None

    def note(r: rr.RunRecord) -> None:
        r.artifacts[SLICE_ARTIFACT] = json.dumps({"slice": slice_id, "rows": rows, "restarts": r.restarts})
        r.log(ctx.now, Stage.ETL, "slice_rows_added", slice=slice_id, rows=rows)

    ctx.update(note)


def _rows_from_slice(record: rr.RunRecord) -> int | None:
    """How many rows this run life's slice had (the data quality's `rows_from_slice`), None if none."""
    done = json.loads(record.artifacts.get(SLICE_ARTIFACT) or "{}")
    return int(done["rows"]) if "rows" in done and done.get("restarts") == record.restarts else None


def _split(ctx: StageContext, export_task: str, export: ExportStatus) -> ShardSet:
    """Streams the export once into shard files and the plan; records the shards."""
    services, settings = ctx.services, ctx.services.settings
    record, started = ctx.update(lambda r: sh.start_split(r, Stage.ETL, ctx.now))
    shown = run_settings.of_record(services.settings, record).shown()
    ctx.set_status(ModelRunStatus.PREPARING_DATA, run_record=services.runs.uri(record.run_id), **shown)
    paths = RunPaths(record.run_id)
    splitter = ExportSplitter(
        services.store,
        paths,
        task=Task(record.task),
        model_run_id=record.model_run_id,
        shard_rows=settings.etl.shard_rows,
        split_fallback=_SplitLookup(ctx, record.model_run_id),
    )
    for seen in splitter.add_rows(services.platform.read_export(record.model_run_id, export_task)):
        ctx.heartbeat(rows_read=seen, shards_written=splitter.shards)
    if export.row_errors:  # rows Labelbox itself could not export: counted, with a few of its messages
        splitter.quality.rows_skipped[EXPORT_ERROR_REASON] += export.row_errors
    plan = splitter.finish(started.generation, export_errors=list(export.row_error_samples))
    if not plan.rows:
        raise StageFailed("the model run's export is empty: add labeled data rows to the model run")
    _record, shards = ctx.update(
        lambda r: sh.end_split(
            r, Stage.ETL, started.generation, rows=plan.rows, first_rows=plan.first_rows, now=ctx.now
        )
    )
    return shards


def _batches(items: Sequence[T], size: int) -> Iterator[list[T]]:
    iterator = iter(items)
    while block := list(islice(iterator, size)):
        yield block


def run_etl_shard(ctx: ShardContext) -> dict[str, Any]:
    """One shard: stage its rows' images and write its chunk of the import JSONL and of the manifest."""
    services, settings = ctx.services, ctx.services.settings
    record, store, paths = ctx.record, ctx.services.store, RunPaths(ctx.run_id)
    plan = EtlPlan.read(store, paths)
    if plan.generation != ctx.shards.generation:  # a new split is being written: deliver again later
        raise RuntimeError(f"the plan is of split {plan.generation}, the shard of split {ctx.shards.generation}")
    rows, repeats = read_part(store, paths, ctx.index)
    builder = TrainingSetBuilder(Task(record.task), plan.names(), model_type_of(record))
    rows = builder.without_repeats(rows, repeats)
    out = Block()
    with ImageStager(
        store,
        services.platform,
        run_id=record.run_id,
        model_run_id=record.model_run_id,
        max_bytes=settings.etl.max_image_bytes,
        max_pixels=settings.etl.max_image_pixels,
        concurrency=settings.etl.copy_concurrency,
        shard=ctx.index,
    ) as stager:
        for block in _batches(rows, settings.etl.chunk_rows):
            staged = stager.stage_many([c.example for c in block])
            try:  # the model type's conversion of each example: a bug in it fails the run, as no retry mends it
                done = builder.training_rows(block, staged)
            except ConversionFailed as exc:
                raise StageFailed(str(exc)) from exc
            out.import_lines.extend(done.import_lines)
            out.manifest_rows.extend(done.manifest_rows)
            out.copies.update(done.copies)
            ctx.heartbeat(rows_staged=len(out.manifest_rows), **out.copies)
    ctx.heartbeat(every_s=0)  # still the owner: only the owner writes the shard's chunk
    store.write(paths.import_chunk(ctx.index), jsonl(out.import_lines), content_type="application/jsonl")
    manifest.write_chunk(store, paths, ctx.index, out.manifest_rows)
    quality = builder.quality
    return {"quality": quality.to_state(), "copies": dict(out.copies), "rows_kept": quality.rows_kept}


def _fan_in(ctx: StageContext, shards: ShardSet) -> StageAnswer:
    """Every shard is done: merge the counts, drop rare labels, check the whole set, hand off to train."""
    services, settings = ctx.services, ctx.services.settings
    record, store, paths = ctx.record(), ctx.services.store, RunPaths(ctx.run_id)
    plan = EtlPlan.read(store, paths)
    task = Task(record.task)
    results = [_shard_result(ctx, i) for i in range(shards.count)]
    merged = _merged(plan, results)
    rare = _rare_labels(ctx, merged, shards) if settings.etl.rare_labels == "drop" else {}
    if rare:
        states = shard_states(services)
        for i, result in enumerate(results):
            if set(rare) & (set(result["quality"]["per_class_per_split"]) | set(result.get("labels_dropped", ()))):

                def save(updated: dict[str, Any], i: int = i) -> None:
                    states.write_result(ctx.run_id, Stage.ETL, i, updated)

                results[i] = _drop_labels(store, paths, i, result, rare, task=task, plan=plan, save=save)
            ctx.heartbeat(dropping_rare_labels=f"{i + 1}/{shards.count} shards")
        merged = _merged(plan, results)
        merged.labels_dropped = dict(rare)
    _remove_stale_chunks(store, paths, shards.count)
    copies: Counter[str] = Counter()
    for result in results:
        copies.update(result["copies"])
    report = {**merged.to_dict(), **copies}
    if plan.export_errors:
        report["export_error_samples"] = list(plan.export_errors)
    if (from_slice := _rows_from_slice(record)) is not None:
        report["rows_from_slice"] = from_slice
    artifacts = {
        "import_jsonl": store.uri(paths.import_pattern),  # Vertex accepts wildcards; so does the engine
        "manifest": store.uri(paths.manifest_pattern),
        "images": store.uri(paths.images),
        "etl_chunks": str(shards.count),
    }
    label_map = {vertex: feature for feature, vertex in plan.label_names.items() if feature not in rare}

    def record_results(r: rr.RunRecord) -> None:
        r.data_quality = report
        r.artifacts.update(artifacts)
        r.artifacts["label_map"] = json.dumps(label_map, sort_keys=True)
        if plan.question:
            r.artifacts["classification_question"] = plan.question

    ctx.update(record_results)
    run_record = services.runs.uri(record.run_id)
    problems = merged.vertex_problems()
    if problems:  # the counts reach the model run before the failure does: they say what to fix
        services.platform.update_status(
            record.model_run_id,
            ModelRunStatus.PREPARING_DATA,
            metadata={**merged.summary(run_record), "run_record": run_record},
        )
        raise StageFailed(_not_usable(problems, rare))

    services.platform.update_status(
        record.model_run_id,
        ModelRunStatus.PREPARING_DATA,
        metadata={**merged.summary(run_record), "import_jsonl": artifacts["import_jsonl"], "run_record": run_record},
    )
    round_ = f"g{shards.generation}" if shards.generation > 1 else ""  # a forced re-split hands off anew
    ctx.succeed(Stage.TRAIN, round_=round_, rows_kept=merged.rows_kept, shards=shards.count)
    return StageAnswer(
        200, {"run_id": record.run_id, "stage": Stage.ETL, "outcome": "succeeded", "data_quality": report}
    )


def _rare_labels(ctx: StageContext, merged: DataQuality, shards: ShardSet) -> dict[str, int]:
    """The labels under Vertex's minimum, decided once per split and recorded before any is dropped, so
    a fan-in run again after a kill drops the same labels and reports the counts they had."""
    key = f"etl_rare_labels:g{shards.generation}"
    stored = ctx.record().artifacts.get(key)
    if stored is not None:
        return dict(json.loads(stored))
    rare = merged.rare_labels()
    if rare:
        ctx.update(lambda r: r.artifacts.__setitem__(key, json.dumps(rare, sort_keys=True)))
    return rare


def _shard_result(ctx: StageContext, index: int) -> dict[str, Any]:
    try:
        return shard_states(ctx.services).read_result(ctx.run_id, Stage.ETL, index)
    except NotFound:  # done in the record but its result is gone: only a re-run of that shard helps
        raise StageFailed(f"shard {index} is marked done but its result is missing; re-run etl with force") from None


def _merged(plan: EtlPlan, results: Sequence[Mapping[str, Any]]) -> DataQuality:
    """The split's counts and every shard's, in shard order: as one pass over the export would count."""
    merged = DataQuality.from_state(plan.quality)
    for result in results:
        merged.merge(DataQuality.from_state(result["quality"]))
    return merged


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
    index: int,
    result: Mapping[str, Any],
    labels: Mapping[str, int],
    *,
    task: Task,
    plan: EtlPlan,
    save: Callable[[dict[str, Any]], None],
) -> dict[str, Any]:
    """Takes `labels` out of one shard's chunks and counts its kept rows again; returns its new result.

    A detection image whose only boxes were of these labels leaves the training set, and so does a
    single-label row answering one of them; a multi-label row only loses that answer. The manifest is
    rewritten alike, so inference neither predicts nor scores a class the model never learned.

    The new counts are stored (with the labels they dropped) before the chunks are rewritten, and are
    worked out from the chunks only when not stored yet: a fan-in killed half-way and run again counts
    what the original chunks held, while the rewrite itself is idempotent.
    """
    features = set(labels)
    dropped_marker = sorted(features)
    display = {plan.label_names[f] for f in features if f in plan.label_names}
    kept: list[ManifestRow] = []
    quality = DataQuality.from_state(result["quality"])
    fresh = result.get("labels_dropped") != dropped_marker
    if fresh:
        quality.clear_kept()
    for row in manifest.read_chunk(store, paths, index):
        if not row.labeled:  # nothing of it to drop
            if fresh:
                quality.keep_unlabeled()
            kept.append(row)
            continue
        new, boxes_removed = row.without(features)
        if fresh and boxes_removed:
            quality.drop_boxes(Counter({BOX_OF_DROPPED_LABEL: boxes_removed}), row.data_row_id)
        if new is None:
            if fresh:
                quality.skip(ROW_OF_DROPPED_LABELS, row.data_row_id)
            continue
        if fresh:
            quality.keep(new.split, [b[0] for b in new.boxes] if task is Task.OBJECT_DETECTION else new.labels)
        kept.append(new)
    updated = {**result, "quality": quality.to_state(), "labels_dropped": dropped_marker}
    if fresh:
        save(updated)
    manifest.write_chunk(store, paths, index, kept)
    import_key = paths.import_chunk(index)
    lines = [out for line in read_jsonl(store, import_key) if (out := import_line_without(line, display))]
    store.write(import_key, jsonl(lines), content_type="application/jsonl")
    return updated


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
