"""The row manifest: one line per data row ETL kept, with its staged image, size, split and truth.

It is the contract between ETL, which writes it chunk by chunk beside the Vertex import chunks, and
`inference`, which joins predictions to data rows (a prediction line names only the staged image's
URI) and scores them against this ground truth. Boxes are in pixels of the real image. Unassigned rows
are listed too: they never train, and a later prediction on them still finds its row here.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from shared.domain.examples import Split
from shared.domain.run_paths import RunPaths
from shared.store.port import ObjectStore

Box = tuple[str, float, float, float, float]  # (feature name, left, top, width, height), pixels


@dataclass(frozen=True)
class ManifestRow:
    data_row_id: str
    image_uri: str
    mime_type: str
    width: int
    height: int
    split: Split
    boxes: tuple[Box, ...] = ()
    labels: tuple[str, ...] = ()
    global_key: str | None = None
    labeled: bool = True  # False: nobody labeled the row yet; predicted on for active learning only

    def to_json(self) -> dict[str, Any]:
        return {
            "data_row_id": self.data_row_id,
            "global_key": self.global_key,
            "image_uri": self.image_uri,
            "mime_type": self.mime_type,
            "width": self.width,
            "height": self.height,
            "split": self.split.value,
            "boxes": [list(b) for b in self.boxes],
            "labels": list(self.labels),
            **({} if self.labeled else {"labeled": False}),
        }

    @classmethod
    def from_json(cls, line: Mapping[str, Any]) -> ManifestRow:
        return cls(
            data_row_id=line["data_row_id"],
            image_uri=line["image_uri"],
            mime_type=line.get("mime_type") or "image/jpeg",
            width=int(line["width"]),
            height=int(line["height"]),
            split=Split(line["split"]),
            boxes=tuple((b[0], float(b[1]), float(b[2]), float(b[3]), float(b[4])) for b in line.get("boxes", [])),
            labels=tuple(line.get("labels", [])),
            global_key=line.get("global_key"),
            labeled=bool(line.get("labeled", True)),
        )

    def without(self, labels: set[str]) -> tuple[ManifestRow | None, int]:
        """The row without `labels` (feature names), and how many boxes that took away.

        None when nothing is left: a detection row whose boxes were all of those labels, a classification
        row whose answers all were. Inference reads its ground truth here, so a class the model never
        learned is neither predicted nor scored.
        """
        boxes = tuple(b for b in self.boxes if b[0] not in labels)
        answers = tuple(a for a in self.labels if a not in labels)
        removed = len(self.boxes) - len(boxes)
        if (self.boxes and not boxes) or (self.labels and not answers):
            return None, removed
        return ManifestRow(**{**self.__dict__, "boxes": boxes, "labels": answers}), removed


def jsonl(lines: Iterable[Mapping[str, Any]]) -> bytes:
    return "".join(json.dumps(line, separators=(",", ":")) + "\n" for line in lines).encode()


def read_jsonl(store: ObjectStore, key: str) -> Iterator[dict[str, Any]]:
    """The lines of one JSONL object, streamed."""
    with store.open_read(key) as stream:
        for line in stream:
            if line.strip():
                yield json.loads(line)


def write_chunk(store: ObjectStore, paths: RunPaths, index: int, rows: Iterable[ManifestRow]) -> None:
    store.write(paths.manifest_chunk(index), jsonl(r.to_json() for r in rows), content_type="application/jsonl")


def read_chunk(store: ObjectStore, paths: RunPaths, index: int) -> Iterator[ManifestRow]:
    for line in read_jsonl(store, paths.manifest_chunk(index)):
        yield ManifestRow.from_json(line)


def read_manifest(store: ObjectStore, run_id: str) -> Iterator[ManifestRow]:
    """Every row ETL kept for a run, chunk by chunk: memory does not grow with the run."""
    for key in store.list(RunPaths(run_id).manifest_chunks):
        for line in read_jsonl(store, key):
            yield ManifestRow.from_json(line)
