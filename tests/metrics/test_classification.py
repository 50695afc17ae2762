"""Run-level classification metrics against a brute-force computation written independently here."""

from __future__ import annotations

import json

import numpy as np
import pytest

from shared.metrics.classification import evaluate_classification
from shared.metrics.detections import ClassificationItem
from tests.metrics.oracles import brute_average_precision, random_classification_items

CLASSES = ["cat", "dog", "bird", "fish"]


def _said(item: ClassificationItem, multi_label: bool, threshold: float) -> set[str]:
    scores = {c: item.scores.get(c, 0.0) for c in CLASSES}
    if multi_label:
        return {c for c, s in scores.items() if s >= threshold}
    top = max(sorted(scores), key=lambda c: scores[c])  # first name among equal best scores
    return {top} if scores[top] >= threshold else set()


def _brute(items: list[ClassificationItem], multi_label: bool, threshold: float) -> dict:
    tp = {c: 0 for c in CLASSES}
    n_pred = {c: 0 for c in CLASSES}
    n_gt = {c: 0 for c in CLASSES}
    exact = 0
    for item in items:
        said = _said(item, multi_label, threshold)
        exact += said == set(item.gt_labels)
        for c in CLASSES:
            tp[c] += c in said and c in item.gt_labels
            n_pred[c] += c in said
            n_gt[c] += c in item.gt_labels
    f1 = {c: 2 * tp[c] / (n_pred[c] + n_gt[c]) for c in CLASSES if n_pred[c] + n_gt[c]}
    total_tp, total_pred, total_gt = sum(tp.values()), sum(n_pred.values()), sum(n_gt.values())
    return {
        "exact": exact / len(items),
        "precision": total_tp / total_pred,
        "recall": total_tp / total_gt,
        "f1": 2 * total_tp / (total_pred + total_gt),
        "macro_f1": sum(f1.values()) / len(f1),
        "per_class": {c: (tp[c], n_pred[c], n_gt[c]) for c in CLASSES},
    }


@pytest.mark.parametrize("multi_label", [False, True])
@pytest.mark.parametrize("threshold", [0.0, 0.4, 0.75])
def test_figures_match_brute_force(multi_label: bool, threshold: float) -> None:
    rng = np.random.default_rng(3 + int(multi_label))
    items = random_classification_items(rng, 120, CLASSES, multi_label=multi_label)
    ours = evaluate_classification(items, CLASSES, multi_label=multi_label, confidence_threshold=threshold)
    want = _brute(items, multi_label, threshold)
    key = "exact_match" if multi_label else "accuracy"
    assert ours[key] == pytest.approx(want["exact"])
    for name in ("precision", "recall", "f1", "macro_f1"):
        assert ours[name] == pytest.approx(want[name]), name
    aps = []
    for c in CLASSES:
        tp, n_pred, n_gt = want["per_class"][c]
        got = ours["per_class"][c]
        assert (got["gt_count"], got["pred_count"]) == (n_gt, n_pred)
        assert got["precision"] == pytest.approx(tp / n_pred if n_pred else 0.0)
        assert got["recall"] == pytest.approx(tp / n_gt if n_gt else 0.0)
        ap = brute_average_precision([it.scores.get(c, 0.0) for it in items], [c in it.gt_labels for it in items])
        assert got["ap"] == pytest.approx(ap) and ours["average_precision"]["per_class"][c] == got["ap"]
        aps.append(ap)
    assert ours["average_precision"]["mean"] == pytest.approx(np.mean(aps))
    assert ours["images"] == len(items) and ours["skipped"] == 0
    assert json.loads(json.dumps(ours)) == ours


@pytest.mark.parametrize("multi_label", [False, True])
def test_best_f1_is_the_best_over_all_thresholds(multi_label: bool) -> None:
    rng = np.random.default_rng(8)
    items = random_classification_items(rng, 60, CLASSES, multi_label=multi_label)
    ours = evaluate_classification(items, CLASSES, multi_label=multi_label, confidence_threshold=0.5)
    scores = sorted({it.scores.get(c, 0.0) for it in items for c in CLASSES}, reverse=True)
    f1_at = {s: _brute(items, multi_label, s)["f1"] for s in scores}
    best = max(f1_at.values())
    assert ours["best_f1"] == pytest.approx(best)
    assert ours["best_f1_threshold"] == max(s for s, f in f1_at.items() if f == pytest.approx(best))


def test_single_label_confusion_matrix() -> None:
    items = [
        ClassificationItem("a", frozenset({"cat"}), {"cat": 0.9, "dog": 0.1}),
        ClassificationItem("b", frozenset({"cat"}), {"cat": 0.2, "dog": 0.7}),
        ClassificationItem("c", frozenset({"dog"}), {"cat": 0.3, "dog": 0.3}),  # tie, below threshold anyway
        ClassificationItem("d", frozenset({"dog"}), {"dog": 0.8}),
        ClassificationItem("e", frozenset({"zebra"}), {"dog": 0.8}),  # not a class of this model: skipped
    ]
    ours = evaluate_classification(items, ["cat", "dog"], multi_label=False, confidence_threshold=0.5)
    assert ours["confusion_matrix"] == {
        "labels": ["cat", "dog", "none"],
        "matrix": [[1, 1, 0], [0, 1, 1], [0, 0, 0]],
    }
    assert ours["accuracy"] == 0.5 and ours["images"] == 4 and ours["skipped"] == 1
    assert ours["precision"] == pytest.approx(2 / 3) and ours["recall"] == 0.5


def test_multi_label_has_no_confusion_matrix_and_allows_empty_ground_truth() -> None:
    items = [
        ClassificationItem("a", frozenset(), {"cat": 0.1}),
        ClassificationItem("b", frozenset({"cat", "dog"}), {"cat": 0.9, "dog": 0.6}),
    ]
    ours = evaluate_classification(items, ["cat", "dog"], multi_label=True, confidence_threshold=0.5)
    assert "confusion_matrix" not in ours
    assert ours["exact_match"] == 1.0 and ours["f1"] == 1.0 and ours["average_precision"]["mean"] == 1.0


def test_class_without_ground_truth_has_no_ap() -> None:
    items = [ClassificationItem("a", frozenset({"cat"}), {"cat": 0.9, "dog": 0.6})]
    ours = evaluate_classification(items, ["cat", "dog"], multi_label=True, confidence_threshold=0.5)
    assert ours["per_class"]["dog"]["ap"] is None
    assert ours["average_precision"] == {"mean": 1.0, "per_class": {"cat": 1.0, "dog": None}}
    assert ours["macro_f1"] == pytest.approx((1.0 + 0.0) / 2)  # dog was said without being there


def test_single_label_item_with_two_labels_is_an_error() -> None:
    items = [ClassificationItem("a", frozenset({"cat", "dog"}), {"cat": 0.9})]
    with pytest.raises(ValueError, match="more than one"):
        evaluate_classification(items, ["cat", "dog"], multi_label=False, confidence_threshold=0.5)


def test_classes_must_be_distinct() -> None:
    with pytest.raises(ValueError, match="distinct"):
        evaluate_classification([], ["cat", "cat"], multi_label=True, confidence_threshold=0.5)


def test_no_items() -> None:
    ours = evaluate_classification([], ["cat"], multi_label=False, confidence_threshold=0.5)
    assert ours["accuracy"] == 0.0 and ours["images"] == 0 and ours["best_f1_threshold"] is None
