"""A shard's converted rows -> training rows: what an ETL shard runs, and its benchmark measures.

The split (`export_shards`) has already converted the export rows and decided what every shard must
agree on (label names, the question, which rows repeat an earlier id). A shard skips its repeats,
stages its images, then `training_rows` turns each row whose image was staged into its manifest row
and Vertex import line, against the image's real size. What is counted goes into the builder's
`DataQuality`.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from shared.dataset.image_staging import NotStaged, StagedImage
from shared.dataset.manifest import ManifestRow
from shared.dataset.training_set import training_row
from shared.domain.data_quality import DataQuality
from shared.domain.model_types import Task
from shared.formats.labelbox_export import Converted
from shared.formats.vertex_import import LabelNames

DUPLICATE_ID = "duplicate data row id"
SIZE_DIFFERS = "declared size differs from the image"


@dataclass
class Block:
    """One block's output: its import lines and manifest rows, and how its images went."""

    import_lines: list[dict[str, Any]] = field(default_factory=list)
    manifest_rows: list[ManifestRow] = field(default_factory=list)
    copies: Counter[str] = field(default_factory=Counter)


class TrainingSetBuilder:
    def __init__(self, task: Task, names: LabelNames) -> None:
        self.task = task
        self.quality = DataQuality(task)
        self.names = names

    def without_repeats(self, rows: Sequence[Converted], repeats: set[int]) -> list[Converted]:
        """The rows of a shard less those whose data row id an earlier row had (counted)."""
        kept = []
        for position, item in enumerate(rows):
            if position in repeats:
                self.quality.skip(DUPLICATE_ID, item.example.data_row_id)
            else:
                kept.append(item)
        return kept

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
