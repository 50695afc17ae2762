"""Export rows -> training rows, one block at a time: the conversion ETL runs and its benchmark measures.

A block goes through in two steps around the image copies, which are the caller's I/O: `examples`
parses the rows (counting what it skips, and any data row id seen before), then `training_rows` turns
each example whose image was staged into its manifest row and Vertex import line, against the image's
real size. What is counted goes into the builder's `DataQuality`.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from itertools import islice
from typing import Any

from shared.dataset.image_staging import NotStaged, StagedImage
from shared.dataset.manifest import ManifestRow
from shared.dataset.training_set import training_row
from shared.domain.data_quality import DataQuality
from shared.domain.model_types import Task
from shared.formats.labelbox_export import Converted, SplitFallback, classification_question, example_from_row
from shared.formats.vertex_import import LabelNames

DUPLICATE_ID = "duplicate data row id"
SIZE_DIFFERS = "declared size differs from the image"


@dataclass
class Block:
    """One block's output: the lines of its import chunk and manifest chunk, and how its images went."""

    import_lines: list[dict[str, Any]] = field(default_factory=list)
    manifest_rows: list[ManifestRow] = field(default_factory=list)
    copies: Counter[str] = field(default_factory=Counter)


class TrainingSetBuilder:
    def __init__(self, task: Task, model_run_id: str, *, split_fallback: SplitFallback | None = None) -> None:
        self.task = task
        self.model_run_id = model_run_id
        self.quality = DataQuality(task)
        self.names = LabelNames()
        self.question: str | None = None  # classification: the question the first labelled row answers
        self._split_fallback = split_fallback
        self._seen: set[str] = set()  # the first row of an id wins; about 100 bytes a row

    def example_blocks(self, rows: Iterable[Mapping[str, Any]], size: int) -> Iterator[list[Converted]]:
        """The examples of the next `size` rows at a time. Each row is converted as it arrives and
        dropped: a block holds its examples, never its raw export rows (nested dicts are most of the
        memory, and keeping 5000 of them made the garbage collector take half of ETL's time)."""
        iterator = iter(rows)
        while True:
            before = self.quality.rows_seen
            block = self.examples(islice(iterator, size))
            if self.quality.rows_seen == before:
                return
            yield block

    def examples(self, block: Iterable[Mapping[str, Any]]) -> list[Converted]:
        converted: list[Converted] = []
        quality = self.quality
        for row in block:
            quality.rows_seen += 1
            if self.task.is_classification and self.question is None:
                self.question = classification_question(row, model_run_id=self.model_run_id, task=self.task)
            result = example_from_row(
                row,
                model_run_id=self.model_run_id,
                task=self.task,
                split_fallback=self._split_fallback,
                question=self.question,
            )
            row_id = result.example.data_row_id if isinstance(result, Converted) else result.data_row_id
            if row_id is not None:
                if row_id in self._seen:
                    quality.skip(DUPLICATE_ID, row_id)
                    continue
                self._seen.add(row_id)
            if isinstance(result, Converted):
                converted.append(result)
            else:
                quality.skip(result.reason, result.data_row_id, result.detail)
                quality.drop_boxes(result.dropped_boxes, result.data_row_id)
        return converted

    def training_rows(self, converted: Sequence[Converted], staged: Sequence[StagedImage | NotStaged]) -> Block:
        out = Block()
        quality = self.quality
        for item, image in zip(converted, staged, strict=True):
            example = item.example
            if isinstance(image, NotStaged):
                quality.skip(image.reason, example.data_row_id, image.detail)
                continue
            out.copies["images_copied" if image.copied else "images_already_staged"] += 1
            prepared = training_row(
                example,
                image_uri=image.uri,
                mime_type=image.mime_type,
                width=image.width,
                height=image.height,
                task=self.task,
                names=self.names,
                quality=quality,
                dropped=item.dropped_boxes,
            )
            if prepared is None:
                continue
            self._warn(item, image)
            out.manifest_rows.append(prepared.manifest)
            if prepared.import_line is not None:
                out.import_lines.append(prepared.import_line)
        return out

    def _warn(self, item: Converted, image: StagedImage) -> None:
        """Counts what is odd about a row that is kept all the same."""
        row_id = item.example.data_row_id
        for reason, detail in item.warnings:
            self.quality.warn(reason, row_id, detail)
        if image.declared_size:
            (w, h), real = image.declared_size, (image.width, image.height)
            self.quality.warn(SIZE_DIFFERS, row_id, f"declared {w}x{h}, image {real[0]}x{real[1]}")
