"""How inference's delivery is cut into shards, and where each prediction line goes. Pure: no I/O.

Delivery shards are contiguous ranges of the held-out manifest rows (INFERENCE_SHARD_ROWS each), in
manifest order. The split streams the batch job's output once and routes every line to the manifest
chunk that holds its row: ETL stages an image in its shard's folder (`RunPaths.image`), and its
manifest chunk has the same index, so the image URI names the chunk without a table of every row.
Only the held-out rows whose image lies elsewhere (an older layout, an external URI) are kept in a
table (`Layout.moved`), empty on a run ETL staged.

A shard reads the routed lines of the chunks its rows lie in, and keeps the lines of its own rows. A
chunk's lines that name none of its held-out rows (an image not in the held-out set, a training row
when training rows are not predicted) are counted by the chunk's owner, the shard that holds its first
held-out row; lines that name no chunk at all (a URI outside the run, a line without one) are routed
to the stray part, which shard 0 counts. So every line is counted exactly once, as one pass counts it.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from shared.domain.label_next import in_pool

STRAY = -1  # the "chunk" of the lines that name no held-out chunk, in the plan's part counts


def is_predicted(split: str, labeled: bool, splits: list[str], pool: bool) -> bool:
    """Whether batch prediction runs on a manifest row: a labeled row of a predicted split (scored), or,
    with `pool`, a row to rank for labeling (predicted, never scored)."""
    return (labeled and split in splits) or (pool and in_pool(split, labeled))


@dataclass(frozen=True)
class ChunkSpan:
    """The held-out rows of one manifest chunk that are one shard's: positions [first, stop) among the
    chunk's held-out rows. `owner`: the shard also counts the chunk's lines that name none of them."""

    chunk: int
    first: int
    stop: int
    owner: bool


@dataclass
class DeliveryPlan:
    """What the split decided, read by every shard of that split (`generation`)."""

    generation: int
    output_uri: str  # the batch job's output: a new job's output needs a new split
    splits: list[str]  # the predicted splits: which manifest rows are held out
    shard_rows: int
    chunks: list[tuple[int, int]]  # (manifest chunk, its held-out rows), in manifest order, none empty
    parts: dict[int, int] = field(default_factory=dict)  # routed part objects per chunk (STRAY included)
    lines: int = 0
    stray_lines: int = 0
    pool: bool = False  # unlabeled and unassigned rows are predicted too (`is_predicted`)

    def predicts(self, split: str, labeled: bool) -> bool:
        return is_predicted(split, labeled, self.splits, self.pool)

    @property
    def rows(self) -> int:
        return sum(n for _chunk, n in self.chunks)

    def first_rows(self) -> list[int]:
        """Each shard's first held-out row (what `end_split` records)."""
        return list(range(0, self.rows, max(1, self.shard_rows)))

    def spans(self, shard: int) -> list[ChunkSpan]:
        """The chunks shard `shard` reads, with the part of each that is its own."""
        first = shard * max(1, self.shard_rows)
        stop = min(first + max(1, self.shard_rows), self.rows)
        out: list[ChunkSpan] = []
        start = 0
        for chunk, count in self.chunks:
            lo, hi = max(first, start), min(stop, start + count)
            if lo < hi:
                out.append(ChunkSpan(chunk, lo - start, hi - start, owner=first <= start < stop))
            start += count
        return out

    def to_json(self) -> dict[str, Any]:
        return {
            "generation": self.generation,
            "output_uri": self.output_uri,
            "splits": list(self.splits),
            "shard_rows": self.shard_rows,
            "chunks": [list(c) for c in self.chunks],
            "parts": {str(k): v for k, v in self.parts.items()},
            "lines": self.lines,
            "stray_lines": self.stray_lines,
            "pool": self.pool,
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> DeliveryPlan:
        return cls(
            generation=int(data["generation"]),
            output_uri=str(data["output_uri"]),
            splits=list(data["splits"]),
            shard_rows=int(data["shard_rows"]),
            chunks=[(int(c), int(n)) for c, n in data["chunks"]],
            parts={int(k): int(v) for k, v in data.get("parts", {}).items()},
            lines=int(data.get("lines", 0)),
            stray_lines=int(data.get("stray_lines", 0)),
            pool=bool(data.get("pool", False)),
        )

    def encode(self) -> bytes:
        return json.dumps(self.to_json(), indent=1).encode()


class Layout:
    """Where the held-out rows are: their count per manifest chunk, and the rows whose image URI does not
    name their chunk (`folder_of(uri)`: the chunk an image's folder names, or None)."""

    def __init__(self, folder_of: Callable[[str], int | None]) -> None:
        self._folder_of = folder_of
        self.counts: dict[int, int] = {}  # in manifest order
        self.moved: dict[str, int] = {}

    def add(self, chunk: int, image_uri: str) -> None:
        self.counts[chunk] = self.counts.get(chunk, 0) + 1
        if self._folder_of(image_uri) != chunk:
            self.moved[image_uri] = chunk

    def route(self, image_uri: str | None) -> int | None:
        """The chunk whose held-out rows a line naming `image_uri` may belong to; None: no chunk's."""
        if not image_uri:
            return None
        moved = self.moved.get(image_uri)
        if moved is not None:
            return moved
        chunk = self._folder_of(image_uri)
        return chunk if chunk is not None and chunk in self.counts else None


def content_uri_of(line: bytes) -> str | None:
    """The image a batch-prediction output line names, as `parse_prediction_line` reads it, without
    parsing its boxes: the split routes a million lines and only needs this."""
    try:
        record = json.loads(line.decode("utf-8"))
    except ValueError:  # not UTF-8, not JSON: a line `parse_prediction_line` finds no image in either
        return None
    instance = record.get("instance") if isinstance(record, dict) else None
    content = instance.get("content") if isinstance(instance, dict) else None
    return content if isinstance(content, str) and content else None
