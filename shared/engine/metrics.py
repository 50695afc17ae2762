"""Validation metrics: COCO mAP through pycocotools (the reference implementation), and accuracy."""

from __future__ import annotations

import contextlib
import io
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np


@dataclass(frozen=True)
class ImageTruth:
    width: int
    height: int
    boxes: Sequence[tuple[str, tuple[float, float, float, float]]]  # label, normalized x0, y0, x1, y1


@dataclass(frozen=True)
class ImageDetections:
    detections: Sequence[tuple[str, float, tuple[float, float, float, float]]]  # label, score, normalized box


def coco_map(truths: Sequence[ImageTruth], predictions: Sequence[ImageDetections]) -> tuple[float | None, float | None]:
    """(mAP@0.5, mAP@[.5:.95]) over all images, in the images' pixel space; None without any truth box."""
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    names = sorted({name for t in truths for name, _b in t.boxes} | {d[0] for p in predictions for d in p.detections})
    category = {name: i + 1 for i, name in enumerate(names)}
    if not any(t.boxes for t in truths):
        return None, None

    def pixels(box: tuple[float, float, float, float], w: int, h: int) -> list[float]:
        return [box[0] * w, box[1] * h, (box[2] - box[0]) * w, (box[3] - box[1]) * h]

    images: list[dict[str, Any]] = []
    annotations: list[dict[str, Any]] = []
    results: list[dict[str, Any]] = []
    for image_id, (truth, pred) in enumerate(zip(truths, predictions, strict=True), start=1):
        images.append({"id": image_id, "width": truth.width, "height": truth.height})
        for name, box in truth.boxes:
            xywh = pixels(box, truth.width, truth.height)
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": image_id,
                    "category_id": category[name],
                    "bbox": xywh,
                    "area": xywh[2] * xywh[3],
                    "iscrowd": 0,
                }
            )
        for name, score, box in pred.detections:
            results.append(
                {
                    "image_id": image_id,
                    "category_id": category[name],
                    "bbox": pixels(box, truth.width, truth.height),
                    "score": float(score),
                }
            )
    if not results:
        return 0.0, 0.0
    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints progress and summary tables
        gt = COCO()
        gt.dataset = {
            "images": images,
            "annotations": annotations,
            "categories": [{"id": i, "name": n} for n, i in category.items()],
        }
        gt.createIndex()
        dt = gt.loadRes(results)
        evaluation = COCOeval(gt, dt, iouType="bbox")
        evaluation.evaluate()
        evaluation.accumulate()
        evaluation.summarize()
    stats = np.asarray(evaluation.stats)
    return float(max(stats[1], 0.0)), float(max(stats[0], 0.0))


def single_label_accuracy(truths: Sequence[str], predicted: Sequence[str]) -> float | None:
    if not truths:
        return None
    return sum(t == p for t, p in zip(truths, predicted, strict=True)) / len(truths)


def multi_label_accuracy(truths: Sequence[set[str]], predicted: Sequence[set[str]]) -> float | None:
    """Exact-match (subset) accuracy: an image counts only if its predicted label set is exactly right."""
    if not truths:
        return None
    return sum(t == p for t, p in zip(truths, predicted, strict=True)) / len(truths)
