"""Run-level detection metrics: mAP identical to pycocotools, the rest against brute force."""

from __future__ import annotations

import json

import numpy as np
import pytest

from shared.metrics.detection_map import evaluate_detections
from shared.metrics.detections import ImageDetections
from tests.metrics.oracles import brute_matches, coco_eval, random_image

CLASSES = ["car", "person", "dog"]


def _random_run(seed: int, n_images: int, *, grid: bool, **kwargs) -> list[ImageDetections]:
    rng = np.random.default_rng(seed)
    return [random_image(rng, f"img-{i}", grid=grid, **kwargs) for i in range(n_images)]


def _assert_same_as_coco(images: list[ImageDetections], classes: list[str]) -> dict:
    ours = evaluate_detections(images, classes, confidence_threshold=0.5)
    coco = coco_eval(images, classes)
    assert ours["map50_95"] == pytest.approx(coco.stats[0], abs=1e-6)
    assert ours["map50"] == pytest.approx(coco.stats[1], abs=1e-6)
    precision = coco.eval["precision"][:, :, :, 0, 2]  # area "all", 100 detections
    for k, name in enumerate(classes):
        per_class = ours["per_class"][name]
        if (precision[:, :, k] > -1).any():
            assert per_class["ap50"] == pytest.approx(np.mean(precision[0, :, k]), abs=1e-6), name
            assert per_class["ap50_95"] == pytest.approx(np.mean(precision[:, :, k]), abs=1e-6), name
        else:
            assert per_class["ap50"] is None and per_class["ap50_95"] is None
    return ours


@pytest.mark.parametrize("seed", range(6))
def test_map_equals_pycocotools_on_random_detections(seed: int) -> None:
    # Even seeds: grid boxes and scores rounded to 0.1, so IoU and score ties are everywhere.
    grid = seed % 2 == 0
    images = _random_run(seed, 40, grid=grid, round_scores=grid)
    ours = _assert_same_as_coco(images, CLASSES)
    assert 0.0 < ours["map50"] <= 1.0


def test_map_does_not_depend_on_the_order_of_the_images_when_scores_tie() -> None:
    """Scores rounded to 0.1 tie across images; which tied detection comes first moves the precision curve.
    The order is by image id, whatever order the images come in (and pycocotools, numbering the images in
    that order, agrees)."""
    images = _random_run(3, 40, grid=True, round_scores=True)
    baseline = _assert_same_as_coco(images, CLASSES)
    rng = np.random.default_rng(0)
    for _ in range(5):
        shuffled = [images[i] for i in rng.permutation(len(images))]
        again = _assert_same_as_coco(shuffled, CLASSES)
        assert again == baseline


def test_map_equals_pycocotools_past_100_detections_per_image() -> None:
    """COCO keeps the 100 best detections per image and class; the rest do not count in mAP."""
    images = _random_run(42, 4, grid=False, gt_classes=("car",), pred_classes=("car",), max_boxes=160)
    assert max(len(im.pred_labels) for im in images) > 100
    _assert_same_as_coco(images, ["car"])


def test_classes_without_ground_truth_are_left_out_of_the_mean() -> None:
    images = _random_run(7, 20, grid=False, gt_classes=("car", "person"))  # predictions also say dog and cat
    ours = _assert_same_as_coco(images, ["car", "person", "dog", "zebra"])
    assert ours["per_class"]["dog"]["ap50"] is None and ours["per_class"]["zebra"]["ap50"] is None
    assert ours["per_class"]["dog"]["pred_count"] > 0


def test_ground_truth_without_predictions_scores_zero() -> None:
    images = [
        ImageDetections.from_lists(
            "a",
            gt_labels=["car", "dog"],
            gt_boxes=[[0, 0, 10, 10], [20, 20, 40, 40]],
            pred_labels=["car"],
            pred_scores=[0.9],
            pred_boxes=[[0, 0, 10, 10]],
        )
    ]
    ours = _assert_same_as_coco(images, ["car", "dog"])
    assert ours["per_class"]["car"]["ap50"] == pytest.approx(1.0)
    assert ours["per_class"]["dog"]["ap50"] == 0.0
    assert ours["map50"] == pytest.approx(0.5)


def test_no_ground_truth_at_all_gives_no_map() -> None:
    """COCOeval reports -1 here; a report would show -100 %, so we say None."""
    images = [ImageDetections.from_lists("a", pred_labels=["car"], pred_scores=[0.9], pred_boxes=[[0, 0, 10, 10]])]
    assert coco_eval(images, ["car"]).stats[0] == -1
    ours = evaluate_detections(images, ["car"], confidence_threshold=0.5)
    assert ours["map50"] is None and ours["map50_95"] is None
    assert ours["precision"] == 0.0 and ours["recall"] == 0.0


def test_iou_of_exactly_one_half_counts_at_05_in_coco() -> None:
    """COCO matches at IoU >= t (Labelbox's per-row metrics at > t): a known difference, kept on purpose."""
    image = ImageDetections.from_lists(
        "a",
        gt_labels=["car"],
        gt_boxes=[[0, 0, 100, 100]],
        pred_labels=["car"],
        pred_scores=[0.9],
        pred_boxes=[[0, 0, 100, 200]],
    )
    ours = _assert_same_as_coco([image], ["car"])
    assert ours["map50"] == pytest.approx(1.0) and ours["recall"] == 1.0


@pytest.mark.parametrize("threshold", [0.0, 0.35, 0.8])
def test_figures_at_the_confidence_threshold_match_brute_force(threshold: float) -> None:
    images = _random_run(21, 30, grid=True)
    ours = evaluate_detections(images, CLASSES, confidence_threshold=threshold)
    totals = np.zeros(3, dtype=int)
    for name in CLASSES:
        tp, n_pred, n_gt = np.sum([brute_matches(im, name, threshold) for im in images], axis=0)
        totals += (tp, n_pred, n_gt)
        got = ours["per_class"][name]
        assert (got["gt_count"], got["pred_count"]) == (n_gt, n_pred)
        assert got["precision"] == pytest.approx(tp / n_pred if n_pred else 0.0)
        assert got["recall"] == pytest.approx(tp / n_gt)
        assert got["f1"] == pytest.approx(2 * tp / (n_pred + n_gt))
    tp, n_pred, n_gt = totals
    assert ours["precision"] == pytest.approx(tp / n_pred)
    assert ours["recall"] == pytest.approx(tp / n_gt)
    assert ours["f1"] == pytest.approx(2 * tp / (n_pred + n_gt))
    assert ours["confidence_threshold"] == threshold


def test_best_f1_is_the_best_over_all_thresholds() -> None:
    images = _random_run(5, 25, grid=True, round_scores=True)
    ours = evaluate_detections(images, CLASSES, confidence_threshold=0.5)
    scores = sorted({s for im in images for s in im.pred_scores.tolist()}, reverse=True)
    f1_at = {}
    for s in scores:
        tp, n_pred, n_gt = np.sum([brute_matches(im, c, s) for im in images for c in CLASSES], axis=0)
        f1_at[s] = 2 * tp / (n_pred + n_gt)
    best = max(f1_at.values())
    assert ours["best_f1"] == pytest.approx(best)
    assert ours["best_f1_threshold"] == max(s for s, f in f1_at.items() if f == pytest.approx(best))


def test_confusion_matrix() -> None:
    image = ImageDetections.from_lists(
        "a",
        gt_labels=["car", "car", "dog", "person"],
        gt_boxes=[[0, 0, 100, 100], [200, 0, 300, 100], [0, 200, 100, 300], [400, 400, 450, 500]],
        pred_labels=["car", "truck", "person", "dog", "car"],
        pred_scores=[0.9, 0.9, 0.8, 0.7, 0.1],
        # car right; "truck" (not evaluated) ignored; a person where the dog is; a dog on nothing; car too unsure.
        pred_boxes=[[0, 0, 100, 90], [200, 0, 300, 100], [0, 200, 100, 290], [600, 600, 700, 700], [200, 0, 300, 100]],
    )
    ours = evaluate_detections([image], ["car", "dog", "person"], confidence_threshold=0.5)
    assert ours["confusion_matrix"] == {
        "labels": ["car", "dog", "person", "background"],
        "matrix": [
            [1, 0, 0, 1],  # car: one found, one missed
            [0, 0, 1, 0],  # dog taken for a person
            [0, 0, 0, 1],  # person missed
            [0, 1, 0, 0],  # a dog where there is nothing
        ],
    }


def test_confusion_matrix_agrees_with_the_per_class_counts() -> None:
    images = _random_run(9, 40, grid=True)
    ours = evaluate_detections(images, CLASSES, confidence_threshold=0.3)
    matrix = np.array(ours["confusion_matrix"]["matrix"])
    for k, name in enumerate(CLASSES):
        per_class = ours["per_class"][name]
        assert matrix[k, k] == round(per_class["precision"] * per_class["pred_count"])  # diagonal = TP
        assert matrix[k].sum() == per_class["gt_count"]
        assert matrix[:, k].sum() == per_class["pred_count"]
    assert matrix[-1, -1] == 0
    assert (matrix[:-1, :-1].sum() - np.trace(matrix)) > 0  # some cross-class confusion in this data


def test_report_is_json_and_curves_are_thinned() -> None:
    images = _random_run(13, 30, grid=False, gt_classes=("car",), pred_classes=("car",), max_boxes=12)
    ours = evaluate_detections(images, ["car"], confidence_threshold=0.5)
    assert json.loads(json.dumps(ours)) == ours
    curve = ours["per_class"]["car"]["pr_curve"]
    n_scores = sum(len(im.pred_labels) for im in images)
    assert n_scores > 101 and len(curve["recall"]) == len(curve["precision"]) == len(curve["thresholds"]) == 101
    assert curve["thresholds"] == sorted(curve["thresholds"], reverse=True)
    assert curve["thresholds"][-1] == min(s for im in images for s in im.pred_scores.tolist())
    assert np.all(np.diff(curve["recall"]) >= 0)
    assert ours["images"] == 30


def test_empty_run() -> None:
    ours = evaluate_detections([], ["car"], confidence_threshold=0.5)
    assert ours["map50"] is None and ours["images"] == 0 and ours["best_f1_threshold"] is None
    assert ours["confusion_matrix"]["matrix"] == [[0, 0], [0, 0]]


def test_equal_ious_go_to_the_later_ground_truth_as_in_coco() -> None:
    """The first detection overlaps both ground truths by 9/11; COCO gives it the later one, which leaves the
    second detection only the earlier one at IoU 7/13, enough at 0.5 but not from 0.55 on."""
    image = ImageDetections.from_lists(
        "a",
        gt_labels=["car", "car"],
        gt_boxes=[[0, 0, 100, 100], [0, 20, 100, 120]],
        pred_labels=["car", "car"],
        pred_scores=[0.9, 0.8],
        pred_boxes=[[0, 10, 100, 110], [0, 30, 100, 130]],
    )
    ours = _assert_same_as_coco([image], ["car"])
    assert ours["map50"] == pytest.approx(1.0)
    assert ours["map50_95"] == pytest.approx((1.0 + 6 * 0.5 + 3 * 0.0) / 10, abs=1e-2)
