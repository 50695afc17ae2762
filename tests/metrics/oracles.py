"""Independent oracles for the metrics tests: the Labelbox SDK itself, pycocotools itself, brute force."""

from __future__ import annotations

import contextlib
import io

import numpy as np
from labelbox.data.metrics import feature_confusion_matrix_metric, feature_miou_metric
from labelbox.types import (
    Checklist,
    ClassificationAnnotation,
    ClassificationAnswer,
    ObjectAnnotation,
    Point,
    Radio,
    Rectangle,
)
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from shared.metrics.detections import ClassificationItem, ImageDetections


def random_boxes(rng: np.random.Generator, n: int, *, grid: bool) -> np.ndarray:
    """Grid boxes (multiples of 10) give exact IoU ties and IoUs of exactly 0.5; float boxes do not."""
    if grid:
        xy = rng.integers(0, 6, (n, 2)) * 10.0
        wh = rng.integers(1, 5, (n, 2)) * 10.0
    else:
        xy = rng.uniform(0, 300, (n, 2))
        wh = rng.uniform(5, 150, (n, 2))
    return np.hstack([xy, xy + wh])


def random_image(
    rng: np.random.Generator,
    name: str,
    *,
    grid: bool,
    gt_classes: tuple[str, ...] = ("car", "person", "dog"),
    pred_classes: tuple[str, ...] = ("car", "person", "dog", "cat"),
    min_boxes: int = 0,
    max_boxes: int = 8,
    round_scores: bool = False,
) -> ImageDetections:
    """Predictions are partly noisy copies of the ground truth (so boxes overlap), partly random."""
    n_gt, n_pred = (int(rng.integers(min_boxes, max_boxes + 1)) for _ in range(2))
    gt, pred = random_boxes(rng, n_gt, grid=grid), random_boxes(rng, n_pred, grid=grid)
    copied = min(n_gt, n_pred, int(rng.integers(0, max_boxes + 1)))
    noise = rng.integers(-1, 2, (copied, 4)) * 10.0 if grid else rng.normal(0, 8, (copied, 4))
    pred[:copied] = gt[rng.permutation(n_gt)[:copied]] + noise
    pred[:, 2:] = np.maximum(pred[:, 2:], pred[:, :2])
    scores = rng.random(n_pred)
    return ImageDetections(
        image_id=name,
        gt_labels=tuple(str(c) for c in rng.choice(gt_classes, n_gt)),
        gt_boxes=gt,
        pred_labels=tuple(str(c) for c in rng.choice(pred_classes, n_pred)),
        pred_scores=np.round(scores, 1) if round_scores else scores,
        pred_boxes=pred,
    )


def decimal_grid_image(
    rng: np.random.Generator, name: str, *, step: float | None, max_boxes: int = 6
) -> ImageDetections:
    """Boxes on a decimal grid (coordinates k * step, as the nearest float, e.g. 0.3 for 3 * 0.1), or random floats
    when `step` is None; predictions are built from the ground truth so that many pairs overlap by exactly 1/2
    (doubled, halved or shifted by a third of a side), many tie with each other, and some are just near.

    On such grids the exact IoU is 1/2 but every float computation of it rounds: whether it lands above 1/2
    depends on the order of the arithmetic, which is what the SDK comparisons here must survive.
    """
    scale = 1.0 if step is None else round(1 / step)

    def value(units: np.ndarray) -> np.ndarray:
        return units / scale if step is not None else units * rng.uniform(0.9, 1.1, units.shape)

    n_gt = int(rng.integers(1, max_boxes + 1))
    xy = rng.integers(0, 50 * scale, (n_gt, 2))
    wh = rng.integers(1, 20 * scale, (n_gt, 2)) * 3  # divisible by 3: a shift by a third stays on the grid
    gt_units = np.hstack([xy, xy + wh])
    preds = []
    for _ in range(int(rng.integers(0, 2 * max_boxes + 1))):
        x1, y1, x2, y2 = gt_units[int(rng.integers(n_gt))]
        w, h = x2 - x1, y2 - y1
        kind = int(rng.integers(0, 8))
        if kind == 0:
            preds.append([x1, y1, x2 + w, y2])  # twice as wide: 1/2
        elif kind == 1:
            preds.append([x1, y1 - h, x2, y2])  # twice as tall, the other way: 1/2
        elif kind == 2:
            preds.append([x1, y1, x1 + w, y1 + h // 2 if h % 2 == 0 else y2])  # half as tall (or the same)
        elif kind == 3:
            preds.append([x1 + w // 3, y1, x2 + w // 3, y2])  # shifted by a third: (2/3) / (4/3) = 1/2
        elif kind == 4:
            preds.append([x1, y1, x2, y2])  # a copy: ties at 1
        elif kind == 5:
            preds.append([x1 - w, y1, x2, y2])  # twice as wide, the other way: ties with kind 0
        elif kind == 6:
            jitter = rng.integers(-1, 2, 4)
            preds.append(np.array([x1, y1, x2 + w, y2]) + jitter)  # a hair from 1/2
        else:
            c = rng.integers(0, 50 * scale, 2)
            preds.append([c[0], c[1], c[0] + rng.integers(1, 40 * scale), c[1] + rng.integers(1, 40 * scale)])
    pred_units = np.array(preds, dtype=np.int64).reshape(-1, 4)
    pred_units[:, 2:] = np.maximum(pred_units[:, 2:], pred_units[:, :2])
    gt_boxes = value(gt_units.astype(np.float64))
    pred_boxes = value(pred_units.astype(np.float64))
    if step is None:
        pred_boxes[:, 2:] = np.maximum(pred_boxes[:, 2:], pred_boxes[:, :2])
        gt_boxes[:, 2:] = np.maximum(gt_boxes[:, 2:], gt_boxes[:, :2])
    return ImageDetections(
        image_id=name,
        gt_labels=tuple(str(c) for c in rng.choice(("car", "dog"), n_gt, p=(0.8, 0.2))),
        gt_boxes=gt_boxes,
        pred_labels=tuple(str(c) for c in rng.choice(("car", "dog"), len(pred_units), p=(0.8, 0.2))),
        pred_scores=np.round(rng.random(len(pred_units)), 1),
        pred_boxes=pred_boxes,
    )


def _objects(labels: tuple[str, ...], boxes: np.ndarray) -> list[ObjectAnnotation]:
    return [
        ObjectAnnotation(name=label, value=Rectangle(start=Point(x=b[0], y=b[1]), end=Point(x=b[2], y=b[3])))
        for label, b in zip(labels, boxes.tolist(), strict=True)
    ]


def sdk_detection_row(image: ImageDetections, iou_threshold: float) -> dict[str, tuple]:
    """{class: (tp, fp, tn, fn, iou)} from the SDK's own functions, as the brief pins them."""
    gt, pred = _objects(image.gt_labels, image.gt_boxes), _objects(image.pred_labels, image.pred_boxes)
    counts = feature_confusion_matrix_metric(gt, pred, include_subclasses=False, iou=iou_threshold)
    ious = {m.feature_name: float(m.value) for m in feature_miou_metric(gt, pred, include_subclasses=False)}
    assert {m.feature_name for m in counts} == set(ious)
    return {m.feature_name: (*m.value, ious[m.feature_name]) for m in counts}


def sdk_confusion_metric_name(iou_threshold: float) -> str:
    box = Rectangle(start=Point(x=0, y=0), end=Point(x=10, y=10))
    gt = [ObjectAnnotation(name="a", value=box)]
    return feature_confusion_matrix_metric(gt, gt, iou=iou_threshold)[0].metric_name


def _classifications(labels: frozenset[str], multi_label: bool) -> list[ClassificationAnnotation]:
    if not labels:
        return []
    answers = [ClassificationAnswer(name=label) for label in sorted(labels)]
    value = Checklist(answer=answers) if multi_label else Radio(answer=answers[0])
    return [ClassificationAnnotation(name="question", value=value)]


def sdk_classification_row(
    gt_labels: frozenset[str], predicted: frozenset[str], *, multi_label: bool
) -> dict[str, tuple]:
    gt, pred = _classifications(gt_labels, multi_label), _classifications(predicted, multi_label)
    counts = feature_confusion_matrix_metric(gt, pred, include_subclasses=False)
    ious = {m.feature_name: float(m.value) for m in feature_miou_metric(gt, pred, include_subclasses=False)}
    names = {m.metric_name for m in counts}
    assert names <= {"classification"}, names
    return {m.feature_name: (*m.value, ious[m.feature_name]) for m in counts}


def coco_eval(images: list[ImageDetections], classes: list[str]) -> COCOeval:
    """COCOeval (bbox, default params) run on the same detections; category ids from 1, image ids from 1 in
    the order of `image_id` (COCOeval breaks score ties across images by image id, ours by `image_id`)."""
    categories = [{"id": i + 1, "name": c} for i, c in enumerate(classes)]
    gts, dts = [], []
    by_id = sorted(range(len(images)), key=lambda i: images[i].image_id)
    for n, image in enumerate(images[i] for i in by_id):
        for label, (x1, y1, x2, y2) in zip(image.gt_labels, image.gt_boxes.tolist(), strict=True):
            if label in classes:
                w, h = x2 - x1, y2 - y1
                gts.append(
                    {
                        "id": len(gts) + 1,
                        "image_id": n + 1,
                        "category_id": classes.index(label) + 1,
                        "bbox": [x1, y1, w, h],
                        "area": w * h,
                        "iscrowd": 0,
                    }
                )
        for label, score, (x1, y1, x2, y2) in zip(
            image.pred_labels, image.pred_scores.tolist(), image.pred_boxes.tolist(), strict=True
        ):
            category = classes.index(label) + 1 if label in classes else 10_000  # not evaluated by COCO
            dts.append({"image_id": n + 1, "category_id": category, "bbox": [x1, y1, x2 - x1, y2 - y1], "score": score})
    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO()
        gt.dataset = {
            "images": [{"id": n + 1} for n in range(len(images))],
            "annotations": gts,
            "categories": categories,
        }
        gt.createIndex()
        evaluation = COCOeval(gt, gt.loadRes(dts), "bbox")
        evaluation.evaluate()
        evaluation.accumulate()
        evaluation.summarize()
    return evaluation


def brute_iou(a: list[float], b: list[float]) -> float:
    w = min(a[2], b[2]) - max(a[0], b[0])
    h = min(a[3], b[3]) - max(a[1], b[1])
    if w <= 0 or h <= 0:
        return 0.0
    inter = w * h
    return inter / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter)


def brute_matches(image: ImageDetections, cls: str, threshold: float) -> tuple[int, int, int]:
    """(tp, n_pred, n_gt) for one image and class at IoU >= 0.5: predictions with score >= threshold, best
    score first, each taking the free ground truth of highest IoU. Plain loops, no shared code."""
    gts = [b for lb, b in zip(image.gt_labels, image.gt_boxes.tolist(), strict=True) if lb == cls]
    preds = [
        (s, b)
        for lb, s, b in zip(image.pred_labels, image.pred_scores.tolist(), image.pred_boxes.tolist(), strict=True)
        if lb == cls and s >= threshold
    ]
    preds.sort(key=lambda p: -p[0])
    free, tp = set(range(len(gts))), 0
    for _, box in preds:
        best, best_iou = None, 0.5
        for g in sorted(free):
            iou = brute_iou(box, gts[g])
            if iou >= best_iou:
                best, best_iou = g, iou
        if best is not None:
            free.discard(best)
            tp += 1
    return tp, len(preds), len(gts)


def brute_average_precision(scores: list[float], positive: list[bool]) -> float | None:
    """Mean, over positives, of the precision when predicting everything scoring at least as high."""
    n_pos = sum(positive)
    if not n_pos:
        return None
    total = 0.0
    for s, p in zip(scores, positive, strict=True):
        if p:
            said = [q for t, q in zip(scores, positive, strict=True) if t >= s]
            total += sum(said) / len(said)
    return total / n_pos


def random_classification_items(
    rng: np.random.Generator, n: int, classes: list[str], *, multi_label: bool
) -> list[ClassificationItem]:
    items = []
    for i in range(n):
        if multi_label:
            gt = frozenset(c for c in classes if rng.random() < 0.35)
        else:
            gt = frozenset({str(rng.choice(classes))})
        scores = {c: float(np.round(rng.random(), 2)) for c in classes if rng.random() < 0.9}
        for c in gt:  # the model tends to score the right labels higher
            if c in scores and rng.random() < 0.6:
                scores[c] = float(np.round(min(1.0, scores[c] + 0.4), 2))
        items.append(ClassificationItem(image_id=f"item-{i}", gt_labels=gt, scores=scores))
    return items
