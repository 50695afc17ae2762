"""Run-level image-classification metrics, single-label (radio) or multi-label (checklist).

A model "says" a label when its score is >= the confidence threshold; single-label, only the top-scoring
label can be said (exact ties go to the alphabetically first, as in the per-row metrics). Only `classes`
are evaluated: other labels in the ground truth or the scores are ignored, and a single-label item whose
ground truth is not among `classes` is skipped and counted in "skipped".

Average precision is per class, one-vs-rest on that class's score, step-wise (sklearn's
average_precision_score); None for a class without ground truth, and left out of the mean.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from shared.metrics._curves import ThresholdCurve, class_figures, f1_score, ratio
from shared.metrics.detections import ClassificationItem

NO_PREDICTION = "none"


def _matrices(items: Sequence[ClassificationItem], classes: list[str]) -> tuple[np.ndarray, np.ndarray]:
    scores = np.array(
        [[float(item.scores.get(name, 0.0)) for name in classes] for item in items], dtype=np.float64
    ).reshape(len(items), len(classes))
    truth = np.array([[name in item.gt_labels for name in classes] for item in items], dtype=bool).reshape(
        len(items), len(classes)
    )
    return scores, truth


def _class_report(scores: np.ndarray, truth: np.ndarray, tp: int, n_pred: int, n_gt: int) -> tuple[dict, float | None]:
    curve = ThresholdCurve.of(scores, truth, n_gt)
    ap = curve.average_precision()
    return {"ap": ap, **class_figures(tp, n_pred, n_gt, curve)}, ap


def evaluate_classification(
    items: Sequence[ClassificationItem],
    classes: Sequence[str],
    *,
    multi_label: bool,
    confidence_threshold: float,
) -> dict:
    """Accuracy (single-label) or exact match (multi-label), micro and macro F1, per-class AP and curves."""
    classes = list(classes)
    if len(set(classes)) != len(classes):
        raise ValueError("classes must be distinct")
    n_classes = len(classes)
    scores, truth = _matrices(items, classes)
    skipped = 0
    result: dict = {}

    if multi_label:
        said = scores >= confidence_threshold
        tp_per_class = (said & truth).sum(axis=0)
        pred_per_class = said.sum(axis=0)
        gt_per_class = truth.sum(axis=0)
        result["exact_match"] = float(np.mean(np.all(said == truth, axis=1))) if len(items) else 0.0
        overall = ThresholdCurve.of(scores.ravel(), truth.ravel(), int(truth.sum()))
        matrix = None
    else:
        per_item = truth.sum(axis=1)
        if (per_item > 1).any():
            bad = items[int(np.argmax(per_item > 1))].image_id
            raise ValueError(f"{bad}: single-label item has more than one ground-truth label")
        kept = per_item == 1
        skipped = int((~kept).sum())
        scores, truth = scores[kept], truth[kept]
        by_name = np.argsort(np.array(classes, dtype=object), kind="stable")
        top = by_name[np.argmax(scores[:, by_name], axis=1)] if n_classes else np.zeros(len(scores), int)
        top_score = scores[np.arange(len(scores)), top] if n_classes else np.zeros(len(scores))
        predicted = np.where(top_score >= confidence_threshold, top, -1)
        gt = np.argmax(truth, axis=1) if n_classes else np.zeros(len(truth), int)
        correct = predicted == gt
        tp_per_class = np.bincount(gt[correct], minlength=n_classes)
        pred_per_class = np.bincount(predicted[predicted >= 0], minlength=n_classes)
        gt_per_class = np.bincount(gt, minlength=n_classes)
        result["accuracy"] = float(np.mean(correct)) if len(gt) else 0.0
        overall = ThresholdCurve.of(top_score, top == gt, len(gt))
        matrix = np.zeros((n_classes + 1, n_classes + 1), dtype=np.int64)
        np.add.at(matrix, (gt, np.where(predicted >= 0, predicted, n_classes)), 1)

    per_class: dict[str, dict] = {}
    aps: dict[str, float | None] = {}
    f1s: list[float] = []
    for k, name in enumerate(classes):
        tp, n_pred, n_gt = int(tp_per_class[k]), int(pred_per_class[k]), int(gt_per_class[k])
        per_class[name], aps[name] = _class_report(scores[:, k], truth[:, k], tp, n_pred, n_gt)
        if n_gt or n_pred:
            f1s.append(per_class[name]["f1"])
    tp, n_pred, n_gt = int(tp_per_class.sum()), int(pred_per_class.sum()), int(gt_per_class.sum())
    defined = [ap for ap in aps.values() if ap is not None]
    best_f1, best_threshold = overall.best_f1()
    result.update(
        {
            "precision": ratio(tp, n_pred),
            "recall": ratio(tp, n_gt),
            "f1": f1_score(tp, n_pred, n_gt),
            # Classes neither given nor said have no F1 to speak of and are left out.
            "macro_f1": float(np.mean(f1s)) if f1s else None,
            "average_precision": {"mean": float(np.mean(defined)) if defined else None, "per_class": aps},
            "confidence_threshold": float(confidence_threshold),
            "best_f1": best_f1,
            "best_f1_threshold": best_threshold,
            "per_class": per_class,
        }
    )
    if matrix is not None:
        result["confusion_matrix"] = {"labels": [*classes, NO_PREDICTION], "matrix": matrix.tolist()}
    result["images"] = len(scores)
    result["skipped"] = skipped
    return result
