"""`merged_run_metrics` over shards' stored partials equals `run_metrics` over all the rows, per split too,
for each task; with no partial at all it gives the figures of no rows."""

from __future__ import annotations

import io
import json
from collections.abc import Callable, Sequence
from typing import Any, BinaryIO

import numpy as np
import pytest

from shared.domain.model_types import Task
from shared.metrics.detections import ClassificationItem, ImageDetections
from shared.metrics.merged import classification_partial, detection_partial
from shared.metrics.partial_io import Partial
from shared.metrics.summary import by_split, merged_run_metrics, run_metrics, split_figures
from tests.metrics.oracles import random_image

SPLITS = ("validation", "test")


def _stored(partial: Partial) -> Callable[[], BinaryIO]:
    buffer = io.BytesIO()
    partial.write(buffer)
    data = buffer.getvalue()
    return lambda: io.BytesIO(data)


def _items(rng: np.random.Generator, n: int, *, multi_label: bool) -> list[ClassificationItem]:
    classes = ("cat", "dog", "owl")
    out = []
    for i in range(n):
        gt = (
            frozenset(c for c in classes if rng.random() < 0.4)
            if multi_label
            else frozenset({str(rng.choice(classes))})
        )
        scores = {c: float(np.round(rng.random(), 2)) for c in classes if rng.random() < 0.8}
        out.append(ClassificationItem(f"item-{i:03d}", gt, scores))
    return out


def _partial(task: Task, rows: Sequence[Any]) -> Partial:
    if task is Task.OBJECT_DETECTION:
        return detection_partial(rows)
    return classification_partial(rows, multi_label=task is Task.MULTI_LABEL_CLASSIFICATION)


def _plain(value: Any) -> Any:
    return json.loads(json.dumps(value))


@pytest.mark.parametrize("task", list(Task))
@pytest.mark.parametrize("seed", [0, 1])
def test_merged_partials_of_shards_and_splits_equal_one_pass(task: Task, seed: int) -> None:
    rng = np.random.default_rng(seed)
    if task is Task.OBJECT_DETECTION:
        rows: list[Any] = [random_image(rng, f"img-{i:03d}", grid=seed == 0) for i in range(40)]
    else:
        rows = _items(rng, 40, multi_label=task is Task.MULTI_LABEL_CLASSIFICATION)
    split_of = {r.image_id: SPLITS[int(rng.integers(0, 2))] for r in rows}
    detections = rows if task is Task.OBJECT_DETECTION else []
    items = [] if task is Task.OBJECT_DETECTION else rows
    partials: dict[str, list[Callable[[], BinaryIO]]] = {}
    for start in range(0, len(rows), 7):  # shards of 7 rows, a partial per split in each
        shard = rows[start : start + 7]
        for split in sorted({split_of[r.image_id] for r in shard}):
            partials.setdefault(split, []).append(
                _stored(_partial(task, [r for r in shard if split_of[r.image_id] == split]))
            )
    everything = [p for split in sorted(partials) for p in partials[split]]
    assert _plain(merged_run_metrics(task, everything, 0.5)) == _plain(run_metrics(task, detections, items, 0.5))
    merged_splits = {s: split_figures(merged_run_metrics(task, ps, 0.5)) for s, ps in sorted(partials.items())}
    assert _plain(merged_splits) == _plain(by_split(task, detections, items, split_of, 0.5))


@pytest.mark.parametrize("task", list(Task))
def test_an_empty_shard_and_no_shard_give_the_figures_of_no_rows(task: Task) -> None:
    nothing = run_metrics(task, [], [], 0.5)
    assert _plain(merged_run_metrics(task, [], 0.5)) == _plain(nothing)
    assert _plain(merged_run_metrics(task, [_stored(_partial(task, []))], 0.5)) == _plain(nothing)


def test_an_empty_partial_merged_with_others_changes_nothing() -> None:
    rng = np.random.default_rng(3)
    images: list[ImageDetections] = [random_image(rng, f"i{i}", grid=False) for i in range(12)]
    alone = merged_run_metrics(Task.OBJECT_DETECTION, [_stored(detection_partial(images))], 0.3)
    padded = [_stored(detection_partial([])), _stored(detection_partial(images)), _stored(detection_partial([]))]
    assert _plain(merged_run_metrics(Task.OBJECT_DETECTION, padded, 0.3)) == _plain(alone)
