"""A shard's converted rows -> training rows: what an ETL shard runs, and its benchmark measures.

The split (`export_shards`) has already converted the export rows and decided what every shard must
agree on (label names, the question, which rows repeat an earlier id). A shard skips its repeats,
stages its images, then `training_rows` turns each row whose image was staged into its manifest row
and Vertex import line, against the image's real size. What is counted goes into the builder's
`DataQuality`.

The run's model type converts each labeled example first (`ModelType.training_example`, seeing the
staged image's real size), so the import line, the manifest line and every count are of what the model
trains on; the boxes the conversion leaves out are counted as dropped, under the type's name.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from shared.dataset.image_staging import NotStaged, StagedImage
from shared.dataset.manifest import ManifestRow
from shared.dataset.training_set import training_row
from shared.domain.data_quality import DataQuality
from shared.domain.examples import Example
from shared.domain.model_types import ConversionFailed, ModelType, Task, unchanged
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


def left_out_reason(model_type: ModelType) -> str:
    """The data-quality reason of the boxes a model type's `training_example` leaves out."""
    return f"box left out by model type {model_type.name}"


def no_answer_reason(model_type: ModelType) -> str:
    """The data-quality reason of a classification row a model type's `training_example` left no answer."""
    return f"row without an answer after model type {model_type.name}"


class TrainingSetBuilder:
    def __init__(self, task: Task, names: LabelNames, model_type: ModelType | None = None) -> None:
        self.task = task
        self.quality = DataQuality(task)
        self.names = names
        converts = model_type is not None and model_type.training_example is not unchanged
        self.model_type = model_type if converts else None  # a built-in type's rows go through as before

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
            dropped = item.dropped_boxes
            if example.labeled and self.model_type is not None:
                example = self._converted(self.model_type, replace(example, width=image.width, height=image.height))
                left_out = len(item.example.boxes) - len(example.boxes)
                if left_out > 0:
                    dropped = dropped + Counter({left_out_reason(self.model_type): left_out})
                if self.task.is_classification and example.labeled and not example.labels:
                    quality.drop_boxes(dropped, example.data_row_id)
                    quality.skip(no_answer_reason(self.model_type), example.data_row_id)
                    continue
            prepared = training_row(
                example,
                image_uri=image.uri,
                mime_type=image.mime_type,
                width=image.width,
                height=image.height,
                task=self.task,
                names=self.names,
                quality=quality,
                dropped=dropped,
            )
            if prepared is None:
                continue
            self._warn(item, image)
            out.manifest_rows.append(prepared.manifest)
            if prepared.import_line is not None:
                out.import_lines.append(prepared.import_line)
        return out

    def _converted(self, model_type: ModelType, example: Example) -> Example:
        """The example as `model_type` trains on it; ConversionFailed when its labels are not the export's
        (their Vertex names are fixed for the whole run before any shard starts) or a single-label row
        got several answers."""
        out = model_type.convert_example(example)
        unknown = ({b.label for b in out.boxes} | set(out.labels)) - set(self.names.to_vertex)
        if unknown:
            raise ConversionFailed(
                f"model type {model_type.name!r}: training_example gave data row {example.data_row_id} "
                f"labels the export does not have ({', '.join(sorted(unknown)[:3])}): it may use its features only"
            )
        if self.task is Task.SINGLE_LABEL_CLASSIFICATION and len(out.labels) > 1:
            raise ConversionFailed(
                f"model type {model_type.name!r}: training_example gave data row {example.data_row_id} "
                f"{len(out.labels)} answers; a single-label row has one"
            )
        return out

    def _warn(self, item: Converted, image: StagedImage) -> None:
        """Counts what is odd about a row that is kept all the same."""
        row_id = item.example.data_row_id
        for reason, detail in item.warnings:
            self.quality.warn(reason, row_id, detail)
        if image.declared_size:
            (w, h), real = image.declared_size, (image.width, image.height)
            self.quality.warn(SIZE_DIFFERS, row_id, f"declared {w}x{h}, image {real[0]}x{real[1]}")
