"""The engine's own COCO mAP, which its training summary reports."""

from __future__ import annotations

import pytest

from shared.engine.metrics import ImageDetections, ImageTruth, coco_map


def test_coco_map_is_one_for_perfect_predictions_and_lower_for_misplaced_ones() -> None:
    truths = [ImageTruth(100, 100, [("a", (0.1, 0.1, 0.4, 0.4)), ("b", (0.5, 0.5, 0.9, 0.9))])]
    perfect = [ImageDetections([("a", 0.9, (0.1, 0.1, 0.4, 0.4)), ("b", 0.8, (0.5, 0.5, 0.9, 0.9))])]
    assert coco_map(truths, perfect) == (pytest.approx(1.0), pytest.approx(1.0))
    shifted = [ImageDetections([("a", 0.9, (0.15, 0.1, 0.45, 0.4)), ("b", 0.8, (0.1, 0.1, 0.2, 0.2))])]
    map50, map_coco = coco_map(truths, shifted)
    assert 0.0 < map50 < 1.0 and map_coco < map50
    assert coco_map(truths, [ImageDetections([])]) == (0.0, 0.0)
    assert coco_map([ImageTruth(10, 10, [])], [ImageDetections([])]) == (None, None)
