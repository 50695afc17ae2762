"""One delivery shard of inference: its held-out rows joined to their predictions, scored and uploaded.

A shard (`{"run_id": ..., "shard": i}`) reads its rows from the manifest chunks its range lies in and
the prediction lines the split routed to those chunks (`inference_plan` says which lines are its own),
converts each parsed line with the run's model type (`ModelType.prediction`, found by name in this
process's registry), joins and evaluates them as one pass would (the same uuid seed per run and
restart, so a row's import ids do not depend on the cut), uploads its rows in marked chunks
(`upload`: a re-delivered shard uploads nothing twice), and stores for the fan-in a metrics partial per
split and its report candidates. Its result holds counts and keys only.
"""

from __future__ import annotations

import io
import json
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

from shared import run_settings
from shared.dataset.manifest import ManifestRow, read_chunk
from shared.domain.label_next import Strategy
from shared.domain.model_types import ConversionFailed, ModelType, Task
from shared.domain.predictions import VertexPrediction
from shared.domain.run_paths import RunPaths
from shared.evaluation import Evaluated, evaluate_rows, join_predictions
from shared.formats.vertex_prediction import PredictionLineError, parse_prediction_line
from shared.metrics.merged import classification_partial, detection_partial
from shared.metrics.partial_io import Partial
from shared.report.assemble import label_next_candidates, sample_candidates
from shared.stages.inference_outcome import ShardOutcome
from shared.stages.inference_plan import STRAY, DeliveryPlan
from shared.stages.inference_split import read_plan
from shared.stages.runner import StageFailed, model_type_of
from shared.stages.shards import ShardContext
from shared.stages.upload import MAX_ERROR_SAMPLES, ChunkUpload, chunk_name, upload_chunks
from shared.store.port import ObjectStore

Line = VertexPrediction | PredictionLineError


def run_inference_shard(ctx: ShardContext) -> dict[str, Any]:
    """The shard work of inference (see the module docstring); returns the shard's `ShardOutcome`."""
    services, record = ctx.services, ctx.record
    settings, store, paths = services.settings, services.store, RunPaths(ctx.run_id)
    plan = read_plan(store, ctx.run_id)
    if plan is None or plan.generation != ctx.shards.generation:  # a new split is being written: retry later
        found = plan.generation if plan else None
        raise RuntimeError(f"the delivery plan is of split {found}, the shard of split {ctx.shards.generation}")
    model_type = model_type_of(record)
    rows, others = shard_rows(store, paths, plan, ctx.index)
    by_uri = {row.image_uri: row for row in rows}
    lines = shard_lines(store, paths, plan, ctx.index, by_uri, others)
    try:  # a bug in the model type's conversion fails the run: no retry mends it
        joined = join_predictions(by_uri, converted(lines, model_type))
    except ConversionFailed as exc:
        raise StageFailed(str(exc)) from exc
    ctx.heartbeat(rows=len(by_uri), predictions_joined=len(joined.predictions))
    task, restarts = Task(record.task), ctx.shards.restarts
    frozen = run_settings.of_record(settings, record)
    threshold = frozen.confidence_threshold
    predicted = list(by_uri.values())  # the held-out rows (scored) and the rows to rank (not scored)
    evaluated = evaluate_rows(
        predicted,
        joined,
        task=task,
        feature_for=json.loads(record.artifacts.get("label_map") or "{}"),
        question=record.artifacts.get("classification_question"),
        confidence_threshold=threshold,
        max_predictions=frozen.max_predictions,
        uuid_seed=f"{ctx.run_id}:{restarts}",
    )
    uploads = upload_chunks(
        services,
        ctx.run_id,
        record.model_run_id,
        evaluated,
        name_of=lambda chunk: chunk_name(ctx.run_id, restarts, ctx.index, chunk),
        before_upload=lambda: ctx.heartbeat(every_s=0),  # raises ShardLost once another owner took over
    )
    ctx.heartbeat(every_s=0, uploaded_chunks=len(uploads))  # still the owner: only the owner writes
    held_out = [row for row in predicted if row.data_row_id not in evaluated.pool]
    partials = _write_partials(store, paths, plan.generation, ctx.index, task, held_out, evaluated)
    candidates = paths.report_candidates(plan.generation, ctx.index)
    chosen = sample_candidates(evaluated, held_out, threshold=threshold)
    store.write(candidates, json.dumps([c.to_json() for c in chosen]).encode(), content_type="application/json")
    label_next = paths.label_next_candidates(plan.generation, ctx.index)
    ranked = label_next_candidates(
        evaluated,
        predicted,
        strategy=Strategy(frozen.label_next_strategy),
        count=frozen.label_next_count,
        threshold=threshold,
    )
    store.write(label_next, json.dumps([c.to_json() for c in ranked]).encode(), content_type="application/json")
    return ShardOutcome(
        rows=len(held_out),
        predictions=evaluated.prediction_count,
        predicted_rows=evaluated.predicted_rows,
        failed=len(joined.failed),
        problems=dict(joined.problems),
        failed_reasons=dict(joined.failed_reasons),
        uploads=_bounded_samples(uploads),
        partials=partials,
        candidates=candidates,
        ranked=len(evaluated.pool),
        label_next=label_next,
    ).to_json()


def converted(lines: Iterable[Line], model_type: ModelType) -> Iterator[Line]:
    """Each parsed prediction as `model_type` delivers it (`ModelType.prediction`); bad lines as they are."""
    for line in lines:
        yield model_type.convert_prediction(line) if isinstance(line, VertexPrediction) else line


def shard_rows(
    store: ObjectStore, paths: RunPaths, plan: DeliveryPlan, shard: int
) -> tuple[list[ManifestRow], dict[int, set[str]]]:
    """The shard's held-out rows, in manifest order; and, for each chunk it owns, the images of that
    chunk's held-out rows that are other shards' (their lines are theirs, not unknown images)."""
    rows: list[ManifestRow] = []
    others: dict[int, set[str]] = {}
    for span in plan.spans(shard):
        position = 0
        for row in read_chunk(store, paths, span.chunk):
            if not plan.predicts(row.split.value, row.labeled):
                continue
            if span.first <= position < span.stop:
                rows.append(row)
            elif span.owner:
                others.setdefault(span.chunk, set()).add(row.image_uri)
            position += 1
    return rows, others


def shard_lines(
    store: ObjectStore,
    paths: RunPaths,
    plan: DeliveryPlan,
    shard: int,
    mine: Mapping[str, ManifestRow],
    others: Mapping[int, set[str]],
) -> Iterator[Line]:
    """The prediction lines the shard joins: those naming its rows, those of the chunks it owns that name
    none of the chunk's held-out rows, and (shard 0) the stray lines; in the order they were routed."""
    for span in plan.spans(shard):
        theirs = others.get(span.chunk, set())
        for line in _part_lines(store, paths, plan, span.chunk):
            uri = line.content_uri
            if (uri is not None and uri in mine) or (span.owner and uri not in theirs):
                yield line
    if shard == 0:
        yield from _part_lines(store, paths, plan, STRAY)


def _part_lines(store: ObjectStore, paths: RunPaths, plan: DeliveryPlan, chunk: int) -> Iterator[Line]:
    for part in range(plan.parts.get(chunk, 0)):
        key = paths.inference_part(plan.generation, None if chunk == STRAY else chunk, part)
        with store.open_read(key) as stream:
            for raw in stream:
                if raw.strip():
                    yield parse_prediction_line(raw)


def _write_partials(
    store: ObjectStore,
    paths: RunPaths,
    generation: int,
    shard: int,
    task: Task,
    rows: list[ManifestRow],
    evaluated: Evaluated,
) -> dict[str, str]:
    """One metrics partial per split the shard has rows of (even if none of them was predicted: the
    split still has its figures, as one pass gives them), keyed by split."""
    split_of = {row.data_row_id: row.split.value for row in rows}
    out: dict[str, str] = {}
    for split in sorted(set(split_of.values())):
        partial: Partial
        if task is Task.OBJECT_DETECTION:
            partial = detection_partial([d for d in evaluated.detections if split_of[d.image_id] == split])
        else:
            partial = classification_partial(
                [i for i in evaluated.classifications if split_of[i.image_id] == split],
                multi_label=task is Task.MULTI_LABEL_CLASSIFICATION,
            )
        buffer = io.BytesIO()
        partial.write(buffer)
        key = out[split] = paths.metric_partial(generation, shard, split)
        store.write(key, buffer.getvalue(), content_type="application/octet-stream")
    return out


def _bounded_samples(uploads: Mapping[str, ChunkUpload]) -> dict[str, ChunkUpload]:
    """The chunks' outcomes with at most MAX_ERROR_SAMPLES error samples over the whole shard."""
    left, out = MAX_ERROR_SAMPLES, {}
    for name, upload in uploads.items():
        samples = upload.error_samples[:left]
        left -= len(samples)
        out[name] = ChunkUpload(upload.accepted, upload.rejected, samples)
    return out
