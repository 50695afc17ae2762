"""Run-level object-detection metrics: COCO mAP, precision/recall at the confidence threshold, confusion matrix.

mAP@0.5 and mAP@[.5:.95] reproduce pycocotools' COCOeval (bbox, default parameters: IoU .50:.05:.95,
101 recall points, at most 100 detections per image and class, area "all", nothing crowd) to floating-point
noise, quirks included: within an image, detections are matched in descending score order (ties keep input
order) to the unmatched ground truth of highest IoU >= t (ties go to the later one); precision is 0 past
the highest recall reached; classes without ground truth are left out of the mean. Where COCOeval reports
-1 (no class has ground truth) this module reports None.

Equal scores across images: COCOeval keeps them in image-id order, so its curve (and mAP) depends on how the
images are numbered. Here detections of a class are ranked by score descending, then image id
(`ImageDetections.image_id`, compared as strings), then box index within the image (then input position,
should two images share an id): the order the images come in changes nothing, and COCOeval agrees when its
image ids are numbered in `image_id` order.

Everything at a confidence threshold uses the same matching at IoU >= 0.5, over all predictions (no cap).
Labels outside `classes` are ignored on both sides, as COCOeval ignores categories it does not evaluate.
Boxes larger than 1e10 px² (COCO's "all" area range) are out of scope.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import cast

import numpy as np

from shared.metrics._curves import ThresholdCurve, class_figures, f1_score, ratio
from shared.metrics.detections import ImageDetections
from shared.metrics.matching import Side, blocks, greedy_pairs, iou_coco, pad

IOU_THRESHOLDS = np.linspace(0.5, 0.95, int(np.round((0.95 - 0.5) / 0.05)) + 1, endpoint=True)
RECALL_THRESHOLDS = np.linspace(0.0, 1.00, int(np.round((1.00 - 0.0) / 0.01)) + 1, endpoint=True)
MAX_DETECTIONS = 100
_MATCH_IOU = np.minimum(IOU_THRESHOLDS, 1 - 1e-10)  # COCOeval's min([t, 1 - 1e-10])
BACKGROUND = "background"


@dataclass(frozen=True)
class Boxes:
    image: np.ndarray
    cls: np.ndarray
    xywh: np.ndarray  # COCO's x, y, w, h: the arithmetic below must see what COCOeval sees
    score: np.ndarray


def flatten_boxes(images: Sequence[ImageDetections], code: dict[str, int], *, predictions: bool) -> Boxes:
    labels = [image.pred_labels if predictions else image.gt_labels for image in images]
    image = np.repeat(np.arange(len(images)), [len(lbs) for lbs in labels])
    cls = np.fromiter((code.get(lb, -1) for lbs in labels for lb in lbs), np.int64, len(image))
    corners = np.concatenate(
        [np.zeros((0, 4))] + [image.pred_boxes if predictions else image.gt_boxes for image in images]
    )
    xywh = np.concatenate([corners[:, :2], corners[:, 2:] - corners[:, :2]], axis=1)
    score = (
        np.concatenate([np.zeros(0)] + [image.pred_scores for image in images]) if predictions else np.zeros(len(image))
    )
    known = cls >= 0
    return Boxes(image=image[known], cls=cls[known], xywh=xywh[known], score=score[known])


@dataclass(frozen=True)
class Matches:
    hit: np.ndarray  # (n_pred, T) matched at each IoU threshold
    gt_at_50: np.ndarray  # (n_pred,) index of the ground truth matched at IoU 0.5, or -1
    rank: np.ndarray  # (n_pred,) position in its (image, class) by descending score


def coco_matches(gt: Boxes, pred: Boxes, n_classes: int) -> Matches:
    """COCOeval.evaluateImg for every (image, class) at once: detections one step at a time (in score order),
    all groups and all ten IoU thresholds together."""
    n_thresholds = len(IOU_THRESHOLDS)
    keys, inverse = np.unique(
        np.concatenate([gt.image * n_classes + gt.cls, pred.image * n_classes + pred.cls]), return_inverse=True
    )
    gt_side = Side.of(inverse[: len(gt.cls)], len(keys))
    pred_side = Side.of(inverse[len(gt.cls) :], len(keys), then_by=-pred.score)
    rank = np.empty(len(pred.cls), dtype=np.int64)
    rank[pred_side.order] = np.arange(len(pred.cls)) - np.repeat(pred_side.starts, pred_side.counts)
    hit = np.zeros((len(pred.cls), n_thresholds), dtype=bool)
    gt_at_50 = np.full(len(pred.cls), -1, dtype=np.int64)

    both = np.flatnonzero((gt_side.counts > 0) & (pred_side.counts > 0))
    for groups, n_det, n_gt in blocks(both, pred_side.counts, gt_side.counts):
        size = len(groups)
        p_items, p_slot, p_rank = pred_side.members(groups)
        g_items, g_slot, g_rank = gt_side.members(groups)
        ious = iou_coco(
            pad(pred.xywh[p_items], p_slot, p_rank, (size, n_det), 0.0),
            pad(gt.xywh[g_items], g_slot, g_rank, (size, n_gt), 0.0),
        )
        real_gt = np.arange(n_gt)[None, :] < gt_side.counts[groups][:, None]
        ious = np.where(real_gt[:, None, :], ious, -1.0)
        gt_index = pad(g_items, g_slot, g_rank, (size, n_gt), -1)
        taken = np.zeros((size, n_thresholds, n_gt), dtype=bool)
        block_hit = np.zeros((size, n_det, n_thresholds), dtype=bool)
        block_gt = np.full((size, n_det), -1, dtype=np.int64)
        rows = np.arange(size)
        for d in range(n_det):
            iou = ious[:, d, :]
            eligible = (iou[:, None, :] >= _MATCH_IOU[None, :, None]) & ~taken
            candidate = np.where(eligible, iou[:, None, :], -1.0)
            chosen = n_gt - 1 - candidate[:, :, ::-1].argmax(axis=2)  # the last of equal best IoUs
            # (size, T): a reduction over an axis of a 3-D array, which numpy's stubs cannot tell from a scalar
            matched = cast("np.ndarray", eligible.any(axis=2))
            b, t = np.nonzero(matched)
            taken[b, t, chosen[b, t]] = True
            block_hit[:, d, :] = matched
            block_gt[:, d] = np.where(matched[:, 0], gt_index[rows, chosen[:, 0]], -1)
        hit[p_items] = block_hit[p_slot, p_rank]
        gt_at_50[p_items] = block_gt[p_slot, p_rank]
    return Matches(hit=hit, gt_at_50=gt_at_50, rank=rank)


def _interpolated_precision(hits: np.ndarray, n_gt: int) -> np.ndarray:
    """COCOeval.accumulate for one class: (T, R) precision at the recall thresholds, from (T, nd) hits in
    global score order. Same expressions as COCOeval, so the figures agree to the last bit or nearly."""
    tp_sum = np.cumsum(hits, axis=1).astype(float)
    fp_sum = np.cumsum(~hits, axis=1).astype(float)
    recall = tp_sum / n_gt
    precision = tp_sum / (fp_sum + tp_sum + np.spacing(1))
    precision = np.maximum.accumulate(precision[:, ::-1], axis=1)[:, ::-1]
    out = np.zeros((hits.shape[0], len(RECALL_THRESHOLDS)))
    n_det = hits.shape[1]
    for t in range(hits.shape[0]):
        index = np.searchsorted(recall[t], RECALL_THRESHOLDS, side="left")
        inside = index < n_det
        out[t, inside] = precision[t, index[inside]]
    return out


def mean_present(values: np.ndarray) -> float | None:
    present = values[values > -1]
    return float(np.mean(present)) if present.size else None


def _confusion_matrix(gt: Boxes, pred: Boxes, matches: Matches, above: np.ndarray, n_classes: int) -> np.ndarray:
    """Rows: ground-truth class, then background (false positives); columns: predicted class, then background
    (missed ground truth). Same-class matches are the ones behind precision/recall (diagonal = TP); what is
    left of an image is then matched across classes, greedily by descending IoU >= 0.5."""
    matrix = np.zeros((n_classes + 1, n_classes + 1), dtype=np.int64)
    same = matches.hit[:, 0] & above
    np.add.at(matrix, (pred.cls[same], pred.cls[same]), 1)
    gt_free = np.ones(len(gt.cls), dtype=bool)
    gt_free[matches.gt_at_50[same]] = False
    pred_free = above & ~same

    left_gt, left_pred = np.flatnonzero(gt_free), np.flatnonzero(pred_free)
    keys, inverse = np.unique(np.concatenate([gt.image[left_gt], pred.image[left_pred]]), return_inverse=True)
    gt_side = Side.of(inverse[: len(left_gt)], len(keys))
    pred_side = Side.of(inverse[len(left_gt) :], len(keys))
    both = np.flatnonzero((gt_side.counts > 0) & (pred_side.counts > 0))
    for groups, n_gt, n_pred in blocks(both, gt_side.counts, pred_side.counts):
        size = len(groups)
        g_items, g_slot, g_rank = gt_side.members(groups)
        p_items, p_slot, p_rank = pred_side.members(groups)
        g_index = pad(left_gt[g_items], g_slot, g_rank, (size, n_gt), -1)
        p_index = pad(left_pred[p_items], p_slot, p_rank, (size, n_pred), -1)
        iou = iou_coco(
            pad(gt.xywh[left_gt[g_items]], g_slot, g_rank, (size, n_gt), 0.0),
            pad(pred.xywh[left_pred[p_items]], p_slot, p_rank, (size, n_pred), 0.0),
        )
        eligible = (g_index[:, :, None] >= 0) & (p_index[:, None, :] >= 0) & (iou >= 0.5)
        block, row, col, _ = greedy_pairs(iou, eligible)
        g_hit, p_hit = g_index[block, row], p_index[block, col]
        np.add.at(matrix, (gt.cls[g_hit], pred.cls[p_hit]), 1)
        gt_free[g_hit] = False
        pred_free[p_hit] = False
    # numpy types `at`'s indices as one int array-like, not as a per-axis tuple mixing an array and an int
    np.add.at(matrix, (gt.cls[gt_free], n_classes), 1)  # type: ignore[arg-type]
    np.add.at(matrix, (n_classes, pred.cls[pred_free]), 1)
    return matrix


def evaluate_detections(
    images: Sequence[ImageDetections], classes: Sequence[str], *, confidence_threshold: float
) -> dict:
    """COCO mAP plus the figures at `confidence_threshold` (micro over classes, IoU >= 0.5), JSON-ready.

    Per class, `pred_count` counts predictions at or above the threshold; `pr_curve` has one point per
    distinct score (thinned to ~101), precision not interpolated.
    """
    classes = list(classes)
    if len(set(classes)) != len(classes):
        raise ValueError("classes must be distinct")
    n_classes = len(classes)
    code = {name: index for index, name in enumerate(classes)}
    gt = flatten_boxes(images, code, predictions=False)
    pred = flatten_boxes(images, code, predictions=True)
    matches = coco_matches(gt, pred, max(n_classes, 1))

    n_thresholds, n_recalls = len(IOU_THRESHOLDS), len(RECALL_THRESHOLDS)
    precision = -np.ones((n_thresholds, n_recalls, n_classes))
    gt_counts = np.bincount(gt.cls, minlength=n_classes)
    # class, then score descending, then image id, then box index (the module docstring says why)
    image_rank = np.empty(len(images), dtype=np.int64)
    image_rank[sorted(range(len(images)), key=lambda i: images[i].image_id)] = np.arange(len(images))
    by_class = np.lexsort((np.arange(len(pred.cls)), image_rank[pred.image], -pred.score, pred.cls))
    bounds = np.searchsorted(pred.cls[by_class], np.arange(n_classes + 1))
    above = pred.score >= confidence_threshold
    hit50 = matches.hit[:, 0]

    per_class: dict[str, dict] = {}
    for k, name in enumerate(classes):
        ordered = by_class[bounds[k] : bounds[k + 1]]
        n_gt = int(gt_counts[k])
        if n_gt:
            capped = ordered[matches.rank[ordered] < MAX_DETECTIONS]
            precision[:, :, k] = _interpolated_precision(matches.hit[capped].T, n_gt)
        chosen = ordered[above[ordered]]
        tp, n_pred = int(hit50[chosen].sum()), len(chosen)
        curve = ThresholdCurve.of(pred.score[ordered], hit50[ordered], n_gt)
        per_class[name] = {
            "ap50": float(np.mean(precision[0, :, k])) if n_gt else None,
            "ap50_95": float(np.mean(precision[:, :, k])) if n_gt else None,
            **class_figures(tp, n_pred, n_gt, curve),
        }

    tp, n_pred, n_gt = int((hit50 & above).sum()), int(above.sum()), len(gt.cls)
    best_f1, best_threshold = ThresholdCurve.of(pred.score, hit50, n_gt).best_f1()
    matrix = _confusion_matrix(gt, pred, matches, above, n_classes)
    return {
        "map50": mean_present(precision[0]),
        "map50_95": mean_present(precision),
        "precision": ratio(tp, n_pred),
        "recall": ratio(tp, n_gt),
        "f1": f1_score(tp, n_pred, n_gt),
        "confidence_threshold": float(confidence_threshold),
        "best_f1": best_f1,
        "best_f1_threshold": best_threshold,
        "per_class": per_class,
        "confusion_matrix": {"labels": [*classes, BACKGROUND], "matrix": matrix.tolist()},
        "images": len(images),
    }
