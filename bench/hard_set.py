"""The engine on the demo generator's hard scene: a backbone trained from scratch against the pretrained
MobileNetV2, at the same steps, seed and input size. Called by `bench/engine_bench.py`.

640x480 pictures with 3-10 shapes of 12-64 px among unlabeled clutter, letterboxed into a square input:
at 160 a 12 px shape is 3 px, so this set is measured at a larger input (256 by default).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch

from bench.engine_bench import build_import, predict_split, pycocotools_map, split_test_rows
from shared.demo import HARD
from shared.engine.model import BACKBONES, load_checkpoint
from shared.engine.predict import Predictor
from shared.engine.train import TrainSettings, train
from shared.engine.vertex_io import parse_import_line


@dataclass(frozen=True)
class HardResult:
    backbone: str
    steps: int
    images_per_s: float
    train_s: float
    map50: float
    map50_95: float


def run_hard_set(
    workdir: Path, *, images: int, seed: int, steps: int, input_size: int, device: torch.device
) -> tuple[dict[str, int], list[HardResult]]:
    """Trains each backbone on the hard scene's training split and scores its test-split predictions."""
    store, import_uri, lines = build_import(workdir, images, seed, scene=HARD)
    rows = [parse_import_line(json.dumps(line), "object_detection") for line in lines]
    _test, truth, instances_uri = split_test_rows(store, lines, "bench/hard_test_instances.jsonl")
    splits = {s: sum(row.split == s for row in rows) for s in ("training", "validation", "test")}
    results = []
    for backbone in BACKBONES:
        settings = TrainSettings(
            task="object_detection",
            import_uri=import_uri,
            seed=seed,
            max_steps=steps,
            input_size=input_size,
            backbone=backbone,
            display_name=f"bench-hard-{backbone}",
        )
        checkpoint = workdir / f"hard-{backbone}.pt"
        summary = train(settings, store, checkpoint, device=device)
        predictor = Predictor(load_checkpoint(checkpoint, device), device)
        found, _rate = predict_split(predictor, store, instances_uri, f"hard-{backbone}", 64)
        map50, map_coco = pycocotools_map(truth, found, HARD.width, HARD.height)
        results.append(
            HardResult(
                backbone,
                int(summary["step"]),  # type: ignore[call-overload]
                float(summary["images_per_s"]),  # type: ignore[arg-type]
                float(summary["elapsed_s"]),  # type: ignore[arg-type]
                map50,
                map_coco,
            )
        )
    return splits, results


def print_hard_set(splits: dict[str, int], results: list[HardResult], *, images: int, input_size: int) -> None:
    scratch = results[0]
    print(f"hard scene: {images} pictures of {HARD.width}x{HARD.height} at input {input_size}; splits {splits}")
    for r in results:
        print(
            f"  {r.backbone:<13} {r.steps} steps, {r.images_per_s} training images/s ({r.train_s} s), "
            f"test mAP@0.5 {r.map50:.4f}, mAP@[.5:.95] {r.map50_95:.4f}" + ("" if r is scratch else _versus(r, scratch))
        )


def _versus(r: HardResult, scratch: HardResult) -> str:
    accuracy = f"{r.map50 / scratch.map50:.2f}x" if scratch.map50 > 0 else "n/a (scratch scored 0), so no ratio of"
    return f"  ({accuracy} scratch's mAP@0.5, {r.images_per_s / max(scratch.images_per_s, 1e-9):.2f}x its speed)"
