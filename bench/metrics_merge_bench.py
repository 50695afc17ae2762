"""Sharded run-level metrics benchmark: detection partials per shard, their merge, against the single pass.

Builds N held-out rows of synthetic detections (3 ground-truth boxes and 10 scored predictions an image, 4
classes, scores in (0.01, 1) rounded to 3 decimals so that equal scores meet across shards, 25-character
cuid-like ids), cuts them into shards of 10,000 rows, then, each phase in a fresh process so that its peak
RSS (VmHWM) is its own:

- `partials`: each shard's `detection_partial`, one shard at a time, written to a temporary folder
  (building the rows is not timed);
- `merge`: `merge_detections` over all the partial files;
- `single`: `evaluate_detections` on the first --single rows held in memory (what `inference` does today),
  then the merge of those rows' partials, checked equal to it (`==` on the whole dict).

It prints the time per shard partial, the merge time, the partial sizes, peak RSS per phase, and the
merge's time and memory against the single pass measured in the same run.

    .venv/bin/python bench/metrics_merge_bench.py [--rows 1000000] [--shard 10000] [--single 100000]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from shared.metrics.detection_map import evaluate_detections  # noqa: E402
from shared.metrics.detections import ImageDetections  # noqa: E402
from shared.metrics.merged import detection_partial, merge_detections  # noqa: E402

CLASSES = ("car", "person", "dog", "cat")
GT_PER_IMAGE, PRED_PER_IMAGE = 3, 10
THRESHOLD = 0.5
SEED = 11
_BASE36 = np.frombuffer(b"0123456789abcdefghijklmnopqrstuvwxyz", dtype=np.uint8)


def shard_images(shard: int, size: int) -> list[ImageDetections]:
    """Shard `shard`'s rows, the same in every process: predictions are mostly noisy copies of the ground
    truth (some with another class), the rest anywhere; a 1000 x 1000 image."""
    rng = np.random.default_rng([SEED, shard])
    n_gt, n_pred = size * GT_PER_IMAGE, size * PRED_PER_IMAGE
    xy = rng.uniform(0, 900, (n_gt, 2))
    gt = np.hstack([xy, xy + rng.uniform(10, 100, (n_gt, 2))])
    gt_cls = rng.integers(0, len(CLASSES), n_gt)
    source = np.repeat(np.arange(size) * GT_PER_IMAGE, PRED_PER_IMAGE) + rng.integers(0, GT_PER_IMAGE, n_pred)
    pred = gt[source] + rng.normal(0, 6, (n_pred, 4))
    stray = rng.random(n_pred) < 0.3
    xy = rng.uniform(0, 900, (n_pred, 2))
    pred[stray] = np.hstack([xy, xy + rng.uniform(10, 100, (n_pred, 2))])[stray]
    pred[:, 2:] = np.maximum(pred[:, 2:], pred[:, :2])
    pred_cls = np.where(rng.random(n_pred) < 0.85, gt_cls[source], rng.integers(0, len(CLASSES), n_pred))
    scores = np.round(rng.uniform(0.01, 1.0, n_pred), 3)
    ids = ["c" + bytes(row).decode() for row in _BASE36[rng.integers(0, 36, (size, 24))]]
    names = np.array(CLASSES)
    return [
        ImageDetections(
            image_id=ids[i],
            gt_labels=tuple(names[gt_cls[i * GT_PER_IMAGE : (i + 1) * GT_PER_IMAGE]].tolist()),
            gt_boxes=gt[i * GT_PER_IMAGE : (i + 1) * GT_PER_IMAGE],
            pred_labels=tuple(names[pred_cls[i * PRED_PER_IMAGE : (i + 1) * PRED_PER_IMAGE]].tolist()),
            pred_scores=scores[i * PRED_PER_IMAGE : (i + 1) * PRED_PER_IMAGE],
            pred_boxes=pred[i * PRED_PER_IMAGE : (i + 1) * PRED_PER_IMAGE],
        )
        for i in range(size)
    ]


def shard_sizes(rows: int, shard: int) -> list[int]:
    return [min(shard, rows - start) for start in range(0, rows, shard)]


def peak_rss_mib() -> float:
    """VmHWM: this process's peak resident set, from the kernel."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmHWM in /proc/self/status")


def paths(folder: Path, count: int) -> list[Path]:
    return [path(folder, i) for i in range(count)]


def path(folder: Path, index: int) -> Path:
    return folder / f"partial-{index:05d}.bin"


def openers(files: list[Path]) -> list:
    return [lambda f=f: open(f, "rb") for f in files]


def child_partials(folder: Path, rows: int, shard: int) -> dict:
    seconds = []
    for index, size in enumerate(shard_sizes(rows, shard)):
        images = shard_images(index, size)
        started = time.perf_counter()
        partial = detection_partial(images)
        with open(path(folder, index), "wb") as out:
            partial.write(out)
        seconds.append(time.perf_counter() - started)
        del images, partial
    return {"seconds": seconds, "peak_rss_mib": peak_rss_mib()}


def child_merge(folder: Path, count: int) -> dict:
    baseline = peak_rss_mib()
    started = time.perf_counter()
    merged = merge_detections(openers(paths(folder, count)), THRESHOLD)
    return {
        "seconds": time.perf_counter() - started,
        "peak_rss_mib": peak_rss_mib(),
        "baseline_rss_mib": baseline,
        "map50": merged["map50"],
        "map50_95": merged["map50_95"],
    }


def child_single(folder: Path, rows: int, shard: int) -> dict:
    baseline = peak_rss_mib()
    images = [im for index, size in enumerate(shard_sizes(rows, shard)) for im in shard_images(index, size)]
    built = peak_rss_mib()
    classes = sorted({lbl for d in images for lbl in d.gt_labels})
    started = time.perf_counter()
    single = evaluate_detections(images, classes, confidence_threshold=THRESHOLD)
    seconds = time.perf_counter() - started
    peak = peak_rss_mib()
    del images
    started = time.perf_counter()
    merged = merge_detections(openers(paths(folder, len(shard_sizes(rows, shard)))), THRESHOLD)
    return {
        "seconds": seconds,
        "peak_rss_mib": peak,
        "baseline_rss_mib": baseline,
        "rows_rss_mib": built,
        "merge_seconds": time.perf_counter() - started,
        "equal": merged == single,
        "map50": single["map50"],
    }


def measure(*args: object) -> dict:
    result = subprocess.run(
        [sys.executable, __file__, "--child", *map(str, args)], capture_output=True, text=True, check=True
    )
    return json.loads(result.stdout.strip().splitlines()[-1])


def size_line(files: list[Path]) -> str:
    sizes = np.array([f.stat().st_size for f in files])
    return (
        f"{sizes.mean() / 2**20:.2f} MiB a shard (max {sizes.max() / 2**20:.2f}), {sizes.sum() / 2**20:.0f} MiB in all"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--shard", type=int, default=10_000)
    parser.add_argument("--single", type=int, default=100_000)
    parser.add_argument("--child", nargs="+", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        mode, folder, *rest = args.child
        run = {"partials": child_partials, "merge": child_merge, "single": child_single}[mode]
        print(json.dumps(run(Path(folder), *map(int, rest))))
        return
    single_rows = min(args.single, args.rows)
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        big, small = tmp / "all", tmp / "single"
        big.mkdir()
        small.mkdir()
        n_shards = len(shard_sizes(args.rows, args.shard))
        print(
            f"{args.rows} rows ({GT_PER_IMAGE} ground-truth boxes, {PRED_PER_IMAGE} predictions each, "
            f"{len(CLASSES)} classes) in {n_shards} shards of {args.shard}"
        )
        parts = measure("partials", big, args.rows, args.shard)
        seconds = np.array(parts["seconds"])
        print(
            f"partials  {seconds.mean():6.3f} s a shard (max {seconds.max():.3f}, {seconds.sum():.1f} s in all)  "
            f"peak RSS {parts['peak_rss_mib']:6.1f} MiB   {size_line(paths(big, n_shards))}"
        )
        merge = measure("merge", big, n_shards)
        print(
            f"merge     {merge['seconds']:6.1f} s for {args.rows} rows      peak RSS {merge['peak_rss_mib']:6.1f} MiB "
            f"(after imports {merge['baseline_rss_mib']:.1f})   map50 {merge['map50']:.6f}"
        )
        if single_rows % args.shard:  # else the first shards of the run are exactly those rows' shards
            measure("partials", small, single_rows, args.shard)
        else:
            small = big
        single = measure("single", small, single_rows, args.shard)
        print(
            f"single    {single['seconds']:6.1f} s for {single_rows} rows       "
            f"peak RSS {single['peak_rss_mib']:6.1f} MiB "
            f"(rows alone {single['rows_rss_mib']:.1f})   merged == single pass at {single_rows} rows: "
            f"{single['equal']} (merge {single['merge_seconds']:.1f} s)"
        )
        per_row_merge = merge["seconds"] / args.rows
        per_row_single = single["seconds"] / single_rows
        print(
            f"\nmerge vs single pass: {per_row_merge / per_row_single:.2f}x the time a row; "
            f"peak RSS {merge['peak_rss_mib'] / single['peak_rss_mib']:.2f}x the single pass's "
            f"({args.rows} vs {single_rows} rows)"
        )
        if not single["equal"]:
            sys.exit("merged metrics differ from the single pass")


if __name__ == "__main__":
    main()
