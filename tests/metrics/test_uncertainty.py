"""Uncertainty of unlabeled rows, against values worked out by hand, and the "label these next" order."""

from __future__ import annotations

import math

import pytest

from shared.metrics.uncertainty import Strategy, Uncertainty, detection, label_next, multi_label, single_label


def _h(*probs: float) -> float:
    return -sum(p * math.log(p) for p in probs if p > 0)


def test_a_uniform_answer_is_as_unsure_as_can_be_and_a_certain_one_not_at_all() -> None:
    uniform = single_label({"a": 1 / 3, "b": 1 / 3, "c": 1 / 3}, 3)
    assert (uniform.least_confidence, uniform.margin, uniform.entropy) == pytest.approx((2 / 3, 0.0, 1.0))
    certain = single_label({"a": 1.0, "b": 0.0, "c": 0.0}, 3)
    assert (certain.least_confidence, certain.margin, certain.entropy) == pytest.approx((0.0, 1.0, 0.0))


def test_classes_left_out_of_the_output_count_as_one_more_answer_holding_the_rest() -> None:
    u = single_label({"a": 0.6}, 3)  # b and c below the scan threshold: 0.4 left between them
    assert u.least_confidence == pytest.approx(0.4)
    assert u.margin == pytest.approx(0.2)
    assert u.entropy == pytest.approx(_h(0.6, 0.4) / math.log(3))


def test_multi_label_is_the_mean_over_every_class_of_a_yes_no_answer() -> None:
    u = multi_label({"a": 0.5, "b": 1.0}, ["a", "b", "c"])  # c left out: a confident no
    assert u.least_confidence == pytest.approx((1.0 + 0.0 + 0.0) / 3)
    assert u.margin == pytest.approx((0.0 + 1.0 + 1.0) / 3)
    assert u.entropy == pytest.approx((1.0 + 0.0 + 0.0) / 3)


def test_detection_averages_the_boxes_above_the_floor_and_counts_them() -> None:
    u = detection([0.9, 0.5, 0.05], threshold=0.3, floor=0.1)
    assert u.boxes == 2 and u.no_detection is False
    assert u.least_confidence == pytest.approx(2 * (0.1 + 0.5) / 2)
    assert u.margin == pytest.approx((0.8 + 0.0) / 2)
    h09 = -(0.9 * math.log2(0.9) + 0.1 * math.log2(0.1))
    assert u.entropy == pytest.approx((h09 + 1.0) / 2)


def test_a_row_with_nothing_above_the_upload_threshold_is_flagged_no_detection() -> None:
    faint = detection([0.2, 0.02], threshold=0.3, floor=0.1)
    assert faint.no_detection is True and faint.boxes == 1
    empty = detection([], threshold=0.3)
    assert empty.no_detection is True and empty.boxes == 0
    assert (empty.least_confidence, empty.margin, empty.entropy) == (0.0, 1.0, 0.0)


def test_a_confidence_that_is_not_a_number_is_refused() -> None:
    with pytest.raises(ValueError, match="not a number"):
        detection([float("nan")], threshold=0.3)


def test_label_next_puts_the_most_uncertain_first_by_each_strategy() -> None:
    rows = {
        "r1": Uncertainty(0.1, 0.9, 0.2),
        "r2": Uncertainty(0.6, 0.1, 0.9),
        "r3": Uncertainty(0.4, 0.05, 0.5),
        "r4": Uncertainty(0.6, 0.3, 0.1),
    }
    assert [r for r, _s in label_next(rows, Strategy.LEAST_CONFIDENCE, 3)] == ["r2", "r4", "r3"]  # tie by id
    assert [r for r, _s in label_next(rows, Strategy.MARGIN, 2)] == ["r3", "r2"]
    assert [r for r, _s in label_next(rows, Strategy.ENTROPY, 1)] == ["r2"]
    assert label_next(rows, Strategy.ENTROPY, 0) == []


def test_random_is_the_same_order_every_time_and_not_the_uncertainty_order() -> None:
    rows = {f"row{i:03d}": Uncertainty(i / 100, 1 - i / 100, i / 100) for i in range(100)}
    first = label_next(rows, Strategy.RANDOM, 100)
    assert first == label_next(dict(reversed(rows.items())), Strategy.RANDOM, 100)
    assert sorted(r for r, _s in first) == sorted(rows)
    assert [r for r, _s in first] != [r for r, _s in label_next(rows, Strategy.ENTROPY, 100)]
