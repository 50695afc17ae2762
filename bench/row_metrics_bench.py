"""Benchmark: per-data-row detection metrics, ours (batched numpy) against the Labelbox SDK's, same data.

Generates N data rows (10 ground-truth and 10 predicted boxes each over 3 classes, seeded): predictions are
mostly jittered copies of the ground truth, some with the wrong class, the rest random. Times the SDK's
feature_confusion_matrix_metric + feature_miou_metric row by row, and ours on all rows at once, checks
that they agree (counts exactly, IoU to 1e-12), and prints rows/s for each and the ratio.

    .venv/bin/python -m bench.row_metrics_bench [--rows 2000] [--seed 0] [--repeats 5]
"""

from __future__ import annotations

import argparse
import platform
import statistics
import sys
import time

import numpy as np
from labelbox.data.metrics import feature_confusion_matrix_metric, feature_miou_metric
from labelbox.types import ObjectAnnotation, Point, Rectangle

from shared.metrics.detections import ImageDetections
from shared.metrics.row_metrics import FeatureMetric, detection_row_metrics

CLASSES = ("car", "person", "bicycle")
BOXES = 10
WIDTH, HEIGHT = 1280.0, 720.0


def generate(rows: int, seed: int) -> list[ImageDetections]:
    rng = np.random.default_rng(seed)
    images = []
    for index in range(rows):
        xy = rng.uniform(0, [WIDTH - 200, HEIGHT - 200], (BOXES, 2))
        gt = np.hstack([xy, xy + rng.uniform(20, 200, (BOXES, 2))])
        gt_labels = rng.choice(CLASSES, BOXES)
        copied = rng.random(BOXES) < 0.7
        pred = gt + rng.normal(0, 8, (BOXES, 4))
        xy = rng.uniform(0, [WIDTH - 200, HEIGHT - 200], (BOXES, 2))
        pred[~copied] = np.hstack([xy, xy + rng.uniform(20, 200, (BOXES, 2))])[~copied]
        pred[:, 2:] = np.maximum(pred[:, 2:], pred[:, :2] + 1)
        pred_labels = np.where(rng.random(BOXES) < 0.15, rng.choice(CLASSES, BOXES), gt_labels)
        shuffle = rng.permutation(BOXES)
        images.append(
            ImageDetections(
                image_id=f"row-{index}",
                gt_labels=tuple(str(label) for label in gt_labels),
                gt_boxes=gt,
                pred_labels=tuple(str(label) for label in pred_labels[shuffle]),
                pred_scores=rng.random(BOXES),
                pred_boxes=pred[shuffle],
            )
        )
    return images


def _annotations(labels: tuple[str, ...], boxes: np.ndarray) -> list[ObjectAnnotation]:
    return [
        ObjectAnnotation(name=label, value=Rectangle(start=Point(x=box[0], y=box[1]), end=Point(x=box[2], y=box[3])))
        for label, box in zip(labels, boxes.tolist(), strict=True)
    ]


def sdk_row_metrics(gt: list, pred: list, iou_threshold: float) -> dict[str, FeatureMetric]:
    counts = {
        m.feature_name: m.value
        for m in feature_confusion_matrix_metric(gt, pred, include_subclasses=False, iou=iou_threshold)
    }
    ious = {m.feature_name: m.value for m in feature_miou_metric(gt, pred, include_subclasses=False)}
    return {name: FeatureMetric(*counts[name], iou=float(ious[name])) for name in sorted(counts)}


def disagreements(ours: list[dict[str, FeatureMetric]], sdk: list[dict[str, FeatureMetric]]) -> int:
    bad = 0
    for mine, theirs in zip(ours, sdk, strict=True):
        same = mine.keys() == theirs.keys() and all(
            (a.tp, a.fp, a.tn, a.fn) == (b.tp, b.fp, b.tn, b.fn) and abs(a.iou - b.iou) <= 1e-12
            for a, b in zip(mine.values(), theirs.values(), strict=True)
        )
        bad += not same
    return bad


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, default=2000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--repeats", type=int, default=5, help="timed runs of ours (median reported)")
    parser.add_argument("--iou", type=float, default=0.5)
    args = parser.parse_args(argv)

    images = generate(args.rows, args.seed)
    sdk_inputs = [
        (_annotations(im.gt_labels, im.gt_boxes), _annotations(im.pred_labels, im.pred_boxes)) for im in images
    ]

    start = time.perf_counter()
    sdk = [sdk_row_metrics(gt, pred, args.iou) for gt, pred in sdk_inputs]
    sdk_seconds = time.perf_counter() - start

    timings = []
    for _ in range(args.repeats):
        start = time.perf_counter()
        ours = detection_row_metrics(images, iou_threshold=args.iou)
        timings.append(time.perf_counter() - start)
    ours_seconds = statistics.median(timings)

    # End to end from plain lists, construction and validation of ImageDetections included.
    raw = [
        (
            im.image_id,
            im.gt_labels,
            im.gt_boxes.tolist(),
            im.pred_labels,
            im.pred_scores.tolist(),
            im.pred_boxes.tolist(),
        )
        for im in images
    ]
    start = time.perf_counter()
    rebuilt = [
        ImageDetections.from_lists(i, gt_labels=gl, gt_boxes=gb, pred_labels=pl, pred_scores=ps, pred_boxes=pb)
        for i, gl, gb, pl, ps, pb in raw
    ]
    detection_row_metrics(rebuilt, iou_threshold=args.iou)
    end_to_end_seconds = time.perf_counter() - start

    bad = disagreements(ours, sdk)
    features = sum(len(row) for row in ours)
    print(f"machine: {platform.processor() or platform.machine()}, python {platform.python_version()}")
    print(
        f"data: {args.rows} rows x ({BOXES} gt + {BOXES} predicted boxes), {len(CLASSES)} classes, "
        f"seed {args.seed}, IoU threshold {args.iou}; {features} (row, class) metrics"
    )
    print(f"labelbox SDK : {args.rows / sdk_seconds:12,.0f} rows/s  ({sdk_seconds:.3f} s)")
    print(f"ours         : {args.rows / ours_seconds:12,.0f} rows/s  ({ours_seconds:.4f} s, median of {args.repeats})")
    print(f"ours + build : {args.rows / end_to_end_seconds:12,.0f} rows/s  (ImageDetections.from_lists included)")
    print(f"speed-up     : {sdk_seconds / ours_seconds:12,.0f}x  ({sdk_seconds / end_to_end_seconds:,.0f}x with build)")
    print(f"agreement    : {args.rows - bad}/{args.rows} rows identical to the SDK")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
