"""Per-data-row diagnostic metrics, the ones Labelbox shows on each row of a model run.

They reproduce the Labelbox SDK 7.17 (`labelbox.data.metrics`), batched over all rows at once:

* detection, per class in the union of ground-truth and predicted classes of a row, as
  ``feature_confusion_matrix_metric(include_subclasses=False, iou=t)``: pairs sorted by descending IoU
  (ties: ground truth, then prediction, in row order), greedily matched one-to-one when IoU > t (strictly);
  TN is always 0; a class on one side only gives [0, n_pred, 0, 0] or [0, 0, 0, n_gt].
* the IoU, as ``feature_miou_metric(include_subclasses=False)``: the same greedy matching over all pairs
  (ties: prediction, then ground truth), matched IoUs summed and divided by max(n_gt, n_pred); 0.0 for a
  class on one side only. Coordinates are first rounded to 6 decimals as the SDK does (geojson); the IoU
  then equals the SDK's to ~1e-15 (shapely sums areas in another order).
* where those last bits decide something, they are the SDK's: a pair within a rounding margin of the
  threshold, or of another pair of its (row, class) (a tie the greedy order breaks), gets the SDK's own
  value (`sdk_iou`, GEOS's arithmetic replayed), so an IoU of exactly 0.5 on a 0.1 or 0.01 grid, which
  rounds to either side, falls on the side it falls in the SDK. Every other pair keeps the vectorised
  value; on real data the exceptions are a handful, so the batch stays fast.
* classification, as the SDK does for radio and checklist answers: each answer is a feature; an answer
  both given and predicted is [1, 0, 0, 0] with IoU 1.0, predicted only [0, 1, 0, 0], given only
  [0, 0, 0, 1], both with IoU 0.0.

Prediction confidences play no part in the SDK's metrics: filter predictions before calling.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from shared.formats.labelbox_metrics import FeatureMetric
from shared.metrics.detections import ClassificationItem, ImageDetections
from shared.metrics.matching import Side, blocks, greedy_pairs, iou_corners, near_ties, pad
from shared.metrics.sdk_iou import sdk_iou

# Integer coordinates below this (in magnitude) give exact areas and exact shoelace sums: each of the at most
# a dozen terms is below 2**42, every partial sum far below 2**53.
_EXACT_INTEGERS = 2.0**20


def sdk_rounded(values: np.ndarray) -> np.ndarray:
    """Coordinates as the SDK measures them: its Rectangle goes through geojson, which rounds every coordinate
    with Python's round(x, 6). numpy's rounding (x * 1e6, rint) can land on the other side of a half, so those
    rare near-half values, and huge ones, are redone with round() itself."""
    rounded = np.round(values, 6)
    scaled = values * 1e6
    doubtful = (np.abs(scaled - np.floor(scaled) - 0.5) < 1e-3) | (np.abs(values) >= 1e6)
    for index in zip(*np.nonzero(doubtful), strict=True):
        rounded[index] = round(float(values[index]), 6)
    return rounded


def detection_row_metrics(
    images: Sequence[ImageDetections], *, iou_threshold: float = 0.5
) -> list[dict[str, FeatureMetric]]:
    """Per image, per class present on either side: TP/FP/TN/FN at `iou_threshold` and mean IoU.

    Features in each dict are sorted by class name. Images with no boxes at all give an empty dict.
    """
    if not 0.0 < iou_threshold < 1.0:
        raise ValueError(f"iou_threshold must be between 0 and 1 (exclusive), got {iou_threshold}")
    if not images:
        return []
    names = sorted({label for image in images for label in (*image.gt_labels, *image.pred_labels)})
    code = {name: index for index, name in enumerate(names)}
    n_classes = max(1, len(names))

    gt_image = np.repeat(np.arange(len(images)), [len(image.gt_labels) for image in images])
    pred_image = np.repeat(np.arange(len(images)), [len(image.pred_labels) for image in images])
    gt_class = np.fromiter((code[lb] for image in images for lb in image.gt_labels), np.int64, len(gt_image))
    pred_class = np.fromiter((code[lb] for image in images for lb in image.pred_labels), np.int64, len(pred_image))
    gt_boxes = sdk_rounded(np.concatenate([image.gt_boxes for image in images]))
    pred_boxes = sdk_rounded(np.concatenate([image.pred_boxes for image in images]))

    # Groups are (image, class) pairs; sorted keys put them in image order, then class-name order.
    keys, inverse = np.unique(
        np.concatenate([gt_image * n_classes + gt_class, pred_image * n_classes + pred_class]),
        return_inverse=True,
    )
    gt_group, pred_group = inverse[: len(gt_image)], inverse[len(gt_image) :]
    gt_side = Side.of(gt_group, len(keys))
    pred_side = Side.of(pred_group, len(keys))
    n_gt, n_pred = gt_side.counts, pred_side.counts

    tp = np.zeros(len(keys), dtype=np.int64)
    iou_sum = np.zeros(len(keys))
    both = np.flatnonzero((n_gt > 0) & (n_pred > 0))
    for groups, rows, cols in blocks(both, n_gt, n_pred):
        g_items, g_slot, g_rank = gt_side.members(groups)
        p_items, p_slot, p_rank = pred_side.members(groups)
        valid = (np.arange(rows)[None, :, None] < n_gt[groups][:, None, None]) & (
            np.arange(cols)[None, None, :] < n_pred[groups][:, None, None]
        )
        gt_block = pad(gt_boxes[g_items], g_slot, g_rank, (len(groups), rows), 0.0)
        pred_block = pad(pred_boxes[p_items], p_slot, p_rank, (len(groups), cols), 0.0)
        iou, margin = iou_corners(gt_block, pred_block)
        overlap = valid & (iou > 0.0)
        tied = near_ties(iou, margin, overlap)
        # Confusion matrix: ties broken ground truth first (rows), as the SDK lists pairs gt x pred.
        edge = tied | (overlap & (np.abs(iou - iou_threshold) <= margin))
        counted = _as_the_sdk_decides(iou, edge, gt_block, pred_block, pred_first=True)
        block, *_ = greedy_pairs(counted, valid & (counted > iou_threshold))
        tp[groups] += np.bincount(block, minlength=len(groups))
        # mIoU: the SDK lists pairs pred x gt here, so ties are broken prediction first (transposed).
        # Zero-IoU pairs add nothing to the sum, so they need not be matched.
        summed = _as_the_sdk_decides(iou, tied, gt_block, pred_block, pred_first=False).transpose(0, 2, 1)
        block, _, _, value = greedy_pairs(summed, overlap.transpose(0, 2, 1))
        iou_sum[groups] += np.bincount(block, weights=value, minlength=len(groups))

    mean_iou = iou_sum / np.maximum(np.maximum(n_gt, n_pred), 1)
    results: list[dict[str, FeatureMetric]] = [{} for _ in images]
    for key, t, g, p, m in zip(
        keys.tolist(), tp.tolist(), n_gt.tolist(), n_pred.tolist(), mean_iou.tolist(), strict=True
    ):
        image, cls = divmod(key, n_classes)
        results[image][names[cls]] = FeatureMetric(tp=t, fp=p - t, tn=0, fn=g - t, iou=m)
    return results


def _as_the_sdk_decides(
    iou: np.ndarray, doubtful: np.ndarray, gt: np.ndarray, pred: np.ndarray, *, pred_first: bool
) -> np.ndarray:
    """`iou` with the SDK's own value, bit for bit, at the `doubtful` pairs: those where float rounding could
    decide differently (at the threshold's edge, or in a near tie that the greedy matching breaks by order).
    The operands go in the SDK's order: the prediction first for the confusion matrix, the ground truth first
    for the mIoU, which can differ in the last bit."""
    if not doubtful.any():
        return iou
    b_index, r_index, c_index = np.nonzero(doubtful)
    # Integer pixels (as most ground truth is) are exact in both computations: nothing to decide.
    corners = np.concatenate([gt[b_index, r_index], pred[b_index, c_index]], axis=1)
    inexact = ~((corners == np.rint(corners)) & (np.abs(corners) < _EXACT_INTEGERS)).all(axis=1)
    if not inexact.any():
        return iou
    out = iou.copy()
    for b, r, c in zip(b_index[inexact], r_index[inexact], c_index[inexact], strict=True):
        first, second = (pred[b, c], gt[b, r]) if pred_first else (gt[b, r], pred[b, c])
        out[b, r, c] = sdk_iou(first, second)
    return out


def predicted_labels(scores: Mapping[str, float], *, multi_label: bool, confidence_threshold: float) -> frozenset[str]:
    """The answers a model gives: every label scoring >= threshold, or for single-label the top label if it
    does (exact ties go to the alphabetically first label, so the answer never depends on dict order)."""
    if multi_label:
        return frozenset(label for label, score in scores.items() if score >= confidence_threshold)
    if not scores:
        return frozenset()
    label, score = min(scores.items(), key=lambda item: (-item[1], item[0]))
    return frozenset({label}) if score >= confidence_threshold else frozenset()


def classification_row_metrics(
    items: Sequence[ClassificationItem], *, multi_label: bool, confidence_threshold: float
) -> list[dict[str, FeatureMetric]]:
    """Per item, per answer given or predicted: the SDK's radio (single-label) or checklist (multi-label)
    confusion counts and IoU. A single-label item with more than one ground-truth label is an error."""
    results: list[dict[str, FeatureMetric]] = []
    for item in items:
        if not multi_label and len(item.gt_labels) > 1:
            raise ValueError(f"{item.image_id}: single-label item has {len(item.gt_labels)} ground-truth labels")
        predicted = predicted_labels(item.scores, multi_label=multi_label, confidence_threshold=confidence_threshold)
        row: dict[str, FeatureMetric] = {}
        for label in sorted(item.gt_labels | predicted):
            given, said = label in item.gt_labels, label in predicted
            row[label] = FeatureMetric(
                tp=int(given and said),
                fp=int(said and not given),
                tn=0,
                fn=int(given and not said),
                iou=1.0 if given and said else 0.0,
            )
        results.append(row)
    return results
