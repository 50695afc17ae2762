"""Synthetic model-run exports for the benchmarks: demo-shaped rows (boxes of three classes, every
split), deterministic for a seed, written one JSON line a row in Labelbox's export shape."""

from __future__ import annotations

import json
import random
from collections.abc import Callable, Sequence
from pathlib import Path

from shared.demo import export_row

MODEL_RUN_ID = "11111111-2222-4333-8444-555555555555"
MODEL_ID = "cbenchmodel0000000000000a"


def write_export(
    path: Path,
    rows: int,
    *,
    row_data: Callable[[int], str],
    size: tuple[int, int],
    box_side: tuple[int, int],
    boxes: tuple[int, int],
    splits: Sequence[str | None],
    seed: int,
) -> None:
    """`rows` rows of `size` (width, height) images at `row_data(i)`, each with `boxes` (min, max) boxes
    whose sides lie in `box_side`, and a split drawn from `splits`."""
    rng = random.Random(seed)
    width, height = size
    low, high = box_side
    with open(path, "w") as out:
        for i in range(rows):
            objects = [
                {
                    "class": rng.choice(("circle", "square", "triangle")),
                    "left": rng.randint(0, max(0, width - high)),
                    "top": rng.randint(0, max(0, height - high)),
                    "width": rng.randint(low, high),
                    "height": rng.randint(low, high),
                }
                for _ in range(rng.randint(*boxes))
            ]
            row = export_row(
                data_row_id=f"c{i:024d}",
                global_key=f"img-{i}.jpg",
                row_data=row_data(i),
                width=width,
                height=height,
                model_id=MODEL_ID,
                model_run_id=MODEL_RUN_ID,
                objects=objects,
                split=rng.choice(list(splits)),
                rng=rng,
            )
            out.write(json.dumps(row, separators=(",", ":")) + "\n")
