"""Inference's split: the batch job's output, streamed once, routed into per-chunk part objects.

The held-out rows are counted per manifest chunk (one pass over the manifest, keeping only counts and
the few rows whose image does not name its chunk, see `inference_plan`), then every line of every
output file is appended to the buffer of the chunk it belongs to; a buffer past PART_BYTES is written
as the chunk's next part object, and so are the biggest buffers whenever all of them together pass
ROUTE_BUFFER_BYTES. Memory stays bounded whatever the number of lines. The plan, written last, names
the parts; the shard set is then recorded (`end_split`), so a split killed half-way is redone by the
next call (`splitting`), into a new generation's folder, and older generations' files are removed.
"""

from __future__ import annotations

import json
from collections.abc import Iterator

from shared.dataset.manifest import read_jsonl
from shared.domain import shards as sh
from shared.domain.run_paths import RunPaths
from shared.domain.run_record import RunRecord, Stage
from shared.domain.shards import ShardSet
from shared.services import Services
from shared.stages.inference_plan import STRAY, DeliveryPlan, Layout, content_uri_of, is_predicted
from shared.stages.runner import StageContext
from shared.store.port import NotFound, ObjectStore

PART_BYTES = 8 << 20  # one part object of one chunk's routed lines, at most (about)
ROUTE_BUFFER_BYTES = 64 << 20  # all chunks' buffers together

# The files of a batch prediction's output directory: AutoML writes `predictions_00001.jsonl` and, for
# instances it could not predict, `errors_00001.jsonl`; custom models write `prediction.results-*` and
# `prediction.errors_stats-*`. Every one is read: an error line names the instance that failed.
OUTPUT_FILE_PREFIXES = ("predictions", "prediction.results", "errors", "prediction.errors")


def predicted_splits(services: Services) -> list[str]:
    """The splits batch prediction runs on: the held-out ones, and training if asked for."""
    splits = ["validation", "test"]
    if services.settings.predict.on_training:
        splits.append("training")
    return splits


def predicts_pool(services: Services) -> bool:
    """Whether the unlabeled and unassigned rows are predicted too, to rank them for labeling."""
    return services.settings.predict.unlabeled


def read_plan(store: ObjectStore, run_id: str) -> DeliveryPlan | None:
    try:
        return DeliveryPlan.from_json(json.loads(store.read(RunPaths(run_id).inference_plan)))
    except NotFound:
        return None


def current_split(services: Services, record: RunRecord, shards: ShardSet | None) -> bool:
    """Whether the recorded split is whole and of this restart and of this batch job's output: if not,
    the coordinator splits (again)."""
    if shards is None or shards.splitting or shards.restarts != record.restarts:
        return False
    plan = read_plan(services.store, record.run_id)
    return (
        plan is not None
        and plan.generation == shards.generation
        and plan.output_uri == record.artifacts.get("prediction_output")
    )


def _folder_of(services: Services, paths: RunPaths, uri: str) -> int | None:
    try:
        key = services.store.key_from_uri(uri)
    except ValueError:  # another bucket, another scheme: not a staged image
        return None
    return paths.shard_of_image(key)


def scan_manifest(services: Services, paths: RunPaths, splits: list[str], pool: bool) -> Layout:
    """The predicted rows per manifest chunk, read chunk by chunk (only their split, label flag, image)."""
    layout = Layout(lambda uri: _folder_of(services, paths, uri))
    for key in services.store.list(paths.manifest_chunks):
        chunk = paths.manifest_chunk_index(key)
        if chunk is None:
            continue
        for line in read_jsonl(services.store, key):
            if is_predicted(str(line.get("split")), bool(line.get("labeled", True)), splits, pool):
                layout.add(chunk, str(line["image_uri"]))
    return layout


def output_lines(services: Services, output_uri: str) -> Iterator[bytes]:
    """Every non-empty line of every output file in the job's output directory, as read."""
    prefix = services.store.key_from_uri(output_uri.rstrip("/") + "/")
    for key in services.store.list(prefix):
        if not key.rsplit("/", 1)[-1].startswith(OUTPUT_FILE_PREFIXES):
            continue
        with services.store.open_read(key) as stream:
            for line in stream:
                if line.strip():
                    yield line if line.endswith(b"\n") else line + b"\n"


class PartWriter:
    """Routed lines, buffered per chunk and written as numbered part objects of that chunk."""

    def __init__(self, store: ObjectStore, paths: RunPaths, generation: int) -> None:
        self._store, self._paths, self._generation = store, paths, generation
        self._buffers: dict[int, list[bytes]] = {}
        self._sizes: dict[int, int] = {}
        self._total = 0
        self.parts: dict[int, int] = {}

    def add(self, chunk: int, line: bytes) -> None:
        self._buffers.setdefault(chunk, []).append(line)
        self._sizes[chunk] = self._sizes.get(chunk, 0) + len(line)
        self._total += len(line)
        if self._sizes[chunk] >= PART_BYTES:
            self._flush(chunk)
        if self._total >= ROUTE_BUFFER_BYTES:  # the biggest buffers go, until half the budget is free
            for other in sorted(self._sizes, key=self._sizes.__getitem__, reverse=True):
                if self._total <= ROUTE_BUFFER_BYTES // 2:
                    break
                self._flush(other)

    def close(self) -> dict[int, int]:
        for chunk in list(self._buffers):
            self._flush(chunk)
        return dict(self.parts)

    def _flush(self, chunk: int) -> None:
        lines = self._buffers.pop(chunk, [])
        if not lines:
            return
        part = self.parts.get(chunk, 0)
        key = self._paths.inference_part(self._generation, None if chunk == STRAY else chunk, part)
        self._store.write(key, b"".join(lines), content_type="application/jsonl")
        self.parts[chunk] = part + 1
        self._total -= self._sizes.pop(chunk, 0)


def split_delivery(ctx: StageContext, record: RunRecord) -> ShardSet:
    """Routes the batch job's output to the manifest chunks, writes the plan, records the shards."""
    services, paths = ctx.services, RunPaths(ctx.run_id)
    _record, started = ctx.update(lambda r: sh.start_split(r, Stage.INFERENCE, ctx.now))
    _remove_other_generations(services.store, paths, started.generation)
    splits, pool = predicted_splits(services), predicts_pool(services)
    layout = scan_manifest(services, paths, splits, pool)
    ctx.heartbeat(every_s=0, held_out_rows=sum(layout.counts.values()))
    output_uri = record.artifacts["prediction_output"]
    writer = PartWriter(services.store, paths, started.generation)
    lines = stray = 0
    for line in output_lines(services, output_uri):
        chunk = layout.route(content_uri_of(line))
        writer.add(STRAY if chunk is None else chunk, line)
        lines += 1
        stray += chunk is None
        ctx.heartbeat(lines_routed=lines)
    plan = DeliveryPlan(
        generation=started.generation,
        output_uri=output_uri,
        splits=splits,
        shard_rows=services.settings.predict.shard_rows,
        chunks=list(layout.counts.items()),
        parts=writer.close(),
        lines=lines,
        stray_lines=stray,
        pool=pool,
    )
    services.store.write(paths.inference_plan, plan.encode(), content_type="application/json")
    _record, shards = ctx.update(
        lambda r: sh.end_split(
            r, Stage.INFERENCE, started.generation, rows=plan.rows, first_rows=plan.first_rows(), now=ctx.now
        )
    )
    return shards


def _remove_other_generations(store: ObjectStore, paths: RunPaths, generation: int) -> None:
    """An earlier split's routed lines, partials and candidates: never read again once a new split began."""
    keep = paths.inference_split(generation)
    for key in list(store.list(paths.inference_delivery)):
        if key != paths.inference_plan and not key.startswith(keep):
            store.delete(key)
