"""Per-data-row classification metrics must be the SDK's radio (single-label) and checklist (multi-label)."""

from __future__ import annotations

import numpy as np
import pytest

from shared.formats.labelbox_metrics import FeatureMetric
from shared.metrics.detections import ClassificationItem
from shared.metrics.row_metrics import classification_row_metrics, predicted_labels
from tests.metrics.oracles import random_classification_items, sdk_classification_row

CLASSES = ["cat", "dog", "bird", "fish", "horse"]


@pytest.mark.parametrize("multi_label", [False, True])
@pytest.mark.parametrize("threshold", [0.3, 0.7])
def test_random_items_match_the_sdk(multi_label: bool, threshold: float) -> None:
    rng = np.random.default_rng(11 + int(multi_label))
    items = random_classification_items(rng, 80, CLASSES, multi_label=multi_label)
    rows = classification_row_metrics(items, multi_label=multi_label, confidence_threshold=threshold)
    for item, row in zip(items, rows, strict=True):
        said = predicted_labels(item.scores, multi_label=multi_label, confidence_threshold=threshold)
        expected = sdk_classification_row(item.gt_labels, said, multi_label=multi_label)
        assert {k: (m.tp, m.fp, m.tn, m.fn, m.iou) for k, m in row.items()} == expected, item


def test_single_label_answers() -> None:
    right = ClassificationItem("a", frozenset({"cat"}), {"cat": 0.8, "dog": 0.1})
    wrong = ClassificationItem("b", frozenset({"cat"}), {"cat": 0.3, "dog": 0.6})
    unsure = ClassificationItem("c", frozenset({"cat"}), {"cat": 0.2, "dog": 0.3})
    rows = classification_row_metrics([right, wrong, unsure], multi_label=False, confidence_threshold=0.5)
    assert rows[0] == {"cat": FeatureMetric(1, 0, 0, 0, 1.0)}
    assert rows[1] == {"cat": FeatureMetric(0, 0, 0, 1, 0.0), "dog": FeatureMetric(0, 1, 0, 0, 0.0)}
    assert rows[2] == {"cat": FeatureMetric(0, 0, 0, 1, 0.0)}  # nothing scored high enough to be said


def test_multi_label_answers() -> None:
    item = ClassificationItem("a", frozenset({"cat", "dog"}), {"cat": 0.9, "dog": 0.2, "bird": 0.7})
    row = classification_row_metrics([item], multi_label=True, confidence_threshold=0.5)[0]
    assert row == {
        "bird": FeatureMetric(0, 1, 0, 0, 0.0),
        "cat": FeatureMetric(1, 0, 0, 0, 1.0),
        "dog": FeatureMetric(0, 0, 0, 1, 0.0),
    }
    nothing = ClassificationItem("b", frozenset(), {"cat": 0.1})
    assert classification_row_metrics([nothing], multi_label=True, confidence_threshold=0.5) == [{}]


def test_single_label_ties_go_to_the_first_name_whatever_the_dict_order() -> None:
    for scores in ({"dog": 0.6, "cat": 0.6}, {"cat": 0.6, "dog": 0.6}):
        assert predicted_labels(scores, multi_label=False, confidence_threshold=0.5) == {"cat"}


def test_single_label_with_two_ground_truths_is_an_error() -> None:
    item = ClassificationItem("a", frozenset({"cat", "dog"}), {"cat": 0.9})
    with pytest.raises(ValueError, match="single-label"):
        classification_row_metrics([item], multi_label=False, confidence_threshold=0.5)


def test_gt_labels_must_be_a_set_not_a_string() -> None:
    with pytest.raises(TypeError):
        ClassificationItem("a", "cat", {})  # type: ignore[arg-type]
