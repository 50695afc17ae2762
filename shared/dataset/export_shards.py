"""ETL's split: the export's converted rows cut into shard files, and what every shard must agree on.

One pass over the export converts each row (counting the rows it skips), writes the converted rows in
shard files of `shard_rows` each (`runs/<run>/etl/export/part-NNNNN.jsonl`), and gathers what must be
the same in every shard: the classification question (the first labelled row's), the Vertex display
name of every label (`LabelNames`, assigned in sorted order, so the names do not depend on which shard
saw a label first) and which rows repeat an earlier row's data row id. Those duplicates are found after
the pass from 16-byte hashes of the ids (24 bytes a row, where a set of the ids would take about 100):
each shard gets the positions of its rows to skip, and the first row of an id wins, as before.

The plan (`runs/<run>/etl/plan.json`) holds all of it, and the shards read it; nothing else travels.
"""

from __future__ import annotations

import hashlib
import json
from array import array
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from shared.dataset.manifest import jsonl
from shared.domain.data_quality import DataQuality
from shared.domain.examples import Example, PixelBox, Split
from shared.domain.model_types import Task
from shared.domain.run_paths import RunPaths
from shared.formats.labelbox_export import Converted, SplitFallback, classification_question, example_from_row
from shared.formats.vertex_import import LabelNames
from shared.store.port import NotFound, ObjectStore


def converted_to_json(item: Converted) -> dict[str, Any]:
    e = item.example
    line: dict[str, Any] = {
        "id": e.data_row_id,
        "url": e.media_url,
        "mime": e.mime_type,
        "w": e.width,
        "h": e.height,
        "split": e.split.value,
    }
    if e.boxes:
        line["boxes"] = [[b.label, b.left, b.top, b.width, b.height] for b in e.boxes]
    if e.labels:
        line["labels"] = list(e.labels)
    if e.global_key is not None:
        line["key"] = e.global_key
    if item.dropped_boxes:
        line["dropped"] = dict(item.dropped_boxes)
    if item.warnings:
        line["warnings"] = [list(w) for w in item.warnings]
    if not e.labeled:
        line["unlabeled"] = True
    return line


def converted_from_json(line: Mapping[str, Any]) -> Converted:
    example = Example(
        data_row_id=line["id"],
        media_url=line["url"],
        mime_type=line.get("mime"),
        width=line.get("w"),
        height=line.get("h"),
        split=Split(line["split"]),
        boxes=tuple(PixelBox(b[0], b[1], b[2], b[3], b[4]) for b in line.get("boxes", ())),
        labels=tuple(line.get("labels", ())),
        global_key=line.get("key"),
        labeled=not line.get("unlabeled", False),
    )
    warnings = tuple((str(w[0]), str(w[1])) for w in line.get("warnings", ()))
    return Converted(example, Counter(line.get("dropped", {})), warnings)


def _id_hash(data_row_id: str) -> tuple[int, int]:
    digest = hashlib.blake2b(data_row_id.encode("utf-8", "surrogatepass"), digest_size=16).digest()
    return int.from_bytes(digest[:8], "little"), int.from_bytes(digest[8:], "little")


class _Duplicates:
    """Every row's id hash and where the row went; after the pass, the rows an earlier row's id repeats."""

    def __init__(self) -> None:
        self._hi, self._lo = array("Q"), array("Q")
        self._shard, self._position = array("l"), array("l")  # -1: the row was skipped (in no shard)

    def add(self, data_row_id: str, shard: int, position: int) -> None:
        hi, lo = _id_hash(data_row_id)
        self._hi.append(hi)
        self._lo.append(lo)
        self._shard.append(shard)
        self._position.append(position)

    def per_shard(self) -> dict[int, list[int]]:
        """Shard -> sorted positions of its rows whose id an earlier row (in export order) had."""
        if not self._hi:
            return {}
        hi, lo = np.frombuffer(self._hi, np.uint64), np.frombuffer(self._lo, np.uint64)
        order = np.lexsort((lo, hi))  # stable: equal ids stay in export order, so the first one leads
        same = (hi[order][1:] == hi[order][:-1]) & (lo[order][1:] == lo[order][:-1])
        repeats = order[1:][same]
        shard = np.frombuffer(self._shard, np.int64)[repeats]
        position = np.frombuffer(self._position, np.int64)[repeats]
        out: dict[int, list[int]] = {}
        for s, p in zip(shard.tolist(), position.tolist(), strict=True):
            if s >= 0:
                out.setdefault(s, []).append(p)
        return {s: sorted(p) for s, p in out.items()}


@dataclass
class EtlPlan:
    """What the split decided, for the shards and the fan-in."""

    generation: int
    shards: int
    rows: int  # export rows read
    examples: int  # rows converted, cut into the shards
    shard_rows: int
    first_rows: list[int]  # the export row number of each shard's first row
    label_names: dict[str, str]  # Labelbox feature -> Vertex display name
    question: str | None = None
    quality: dict[str, Any] = field(default_factory=dict)  # the split's own counts (rows it skipped)
    export_errors: list[Any] = field(default_factory=list)  # a few of Labelbox's own row errors

    def to_json(self) -> bytes:
        return json.dumps(self.__dict__, sort_keys=True).encode()

    @classmethod
    def read(cls, store: ObjectStore, paths: RunPaths) -> EtlPlan:
        return cls(**json.loads(store.read(paths.etl_plan)))

    def names(self) -> LabelNames:
        return LabelNames(dict(self.label_names))


class ExportSplitter:
    """Converts export rows and writes them into shard files; `finish` writes the plan."""

    def __init__(
        self,
        store: ObjectStore,
        paths: RunPaths,
        *,
        task: Task,
        model_run_id: str,
        shard_rows: int,
        split_fallback: SplitFallback | None = None,
    ) -> None:
        self.store, self.paths, self.task, self.model_run_id = store, paths, task, model_run_id
        self.shard_rows = shard_rows
        self.quality = DataQuality(task)  # what the split itself skips; the shards count the rest
        self.question: str | None = None
        self._fallback = split_fallback
        self._features: set[str] = set()
        self._duplicates = _Duplicates()
        self._buffer: list[dict[str, Any]] = []
        self._first_rows: list[int] = []
        self.examples = 0

    @property
    def shards(self) -> int:
        return len(self._first_rows)

    def add_rows(self, rows: Iterable[Mapping[str, Any]]) -> Iterator[int]:
        """Converts and shards every row; yields the rows read so far every 1000 rows (for heartbeats)."""
        for row in rows:
            self._add(row)
            if self.quality.rows_seen % 1000 == 0:
                yield self.quality.rows_seen
        self._flush()

    def _add(self, row: Mapping[str, Any]) -> None:
        quality = self.quality
        row_number = quality.rows_seen
        quality.rows_seen += 1
        if self.task.is_classification and self.question is None:
            self.question = classification_question(row, model_run_id=self.model_run_id, task=self.task)
        result = example_from_row(
            row, model_run_id=self.model_run_id, task=self.task, split_fallback=self._fallback, question=self.question
        )
        if not isinstance(result, Converted):
            quality.skip(result.reason, result.data_row_id, result.detail)
            quality.drop_boxes(result.dropped_boxes, result.data_row_id)
            if result.data_row_id is not None:
                self._duplicates.add(result.data_row_id, -1, -1)
            return
        if not self._buffer:
            self._first_rows.append(row_number)
        shard = len(self._first_rows) - 1
        self._duplicates.add(result.example.data_row_id, shard, len(self._buffer))
        self._features.update(b.label for b in result.example.boxes)
        self._features.update(result.example.labels)
        self._buffer.append(converted_to_json(result))
        self.examples += 1
        if len(self._buffer) >= self.shard_rows:
            self._flush()

    def _flush(self) -> None:
        if not self._buffer:
            return
        index = len(self._first_rows) - 1
        self.store.write(self.paths.export_part(index), jsonl(self._buffer), content_type="application/jsonl")
        self._buffer = []

    def finish(self, generation: int, *, export_errors: list[Any] | None = None) -> EtlPlan:
        """Writes each shard's duplicates and the plan; removes the parts of an earlier, longer split."""
        duplicates = self._duplicates.per_shard()
        for shard in range(self.shards):
            key = self.paths.export_duplicates(shard)
            if shard in duplicates:
                self.store.write(key, json.dumps(duplicates[shard]).encode(), content_type="application/json")
            else:
                self.store.delete(key)
        for key in list(self.store.list(f"{self.paths.etl}export/")):
            index = _index_of(key)
            if index is not None and index >= self.shards:
                self.store.delete(key)
        names = LabelNames()
        for feature in sorted(self._features):
            names.vertex_name(feature)
        plan = EtlPlan(
            generation=generation,
            shards=self.shards,
            rows=self.quality.rows_seen,
            examples=self.examples,
            shard_rows=self.shard_rows,
            first_rows=list(self._first_rows),
            label_names=dict(names.to_vertex),
            question=self.question,
            quality=self.quality.to_state(),
            export_errors=list(export_errors or []),
        )
        self.store.write(self.paths.etl_plan, plan.to_json(), content_type="application/json")
        return plan


def _index_of(key: str) -> int | None:
    try:
        return int(key.rsplit("-", 1)[1].split(".")[0])
    except (IndexError, ValueError):
        return None


def read_part(store: ObjectStore, paths: RunPaths, shard: int) -> tuple[list[Converted], set[int]]:
    """A shard's converted rows, and the positions among them that repeat an earlier row's id."""
    rows: list[Converted] = []
    with store.open_read(paths.export_part(shard)) as stream:
        for line in stream:
            if line.strip():
                rows.append(converted_from_json(json.loads(line)))
    try:
        repeats = set(json.loads(store.read(paths.export_duplicates(shard))))
    except NotFound:
        repeats = set()
    return rows, repeats
