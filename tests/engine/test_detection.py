"""Detector targets, decoding and NMS: the pieces that turn boxes into tensors and back."""

from __future__ import annotations

import torch

from shared.engine.detection import box_iou, build_targets, decode, detection_loss, nms

OUT = 40


def _perfect_outputs(boxes: list[torch.Tensor], labels: list[torch.Tensor], classes: int):
    """Head outputs a perfect detector would give for these boxes."""
    targets = build_targets(boxes, labels, classes, OUT)
    heat = torch.logit(targets.heatmap.clamp(1e-6, 1 - 1e-6))
    size = torch.zeros(len(boxes), 2, OUT, OUT)
    offset = torch.zeros(len(boxes), 2, OUT, OUT)
    image, cell = targets.index // (OUT * OUT), targets.index % (OUT * OUT)
    ys, xs = cell // OUT, cell % OUT
    size[image, :, ys, xs] = targets.size
    offset[image, :, ys, xs] = targets.offset
    return targets, heat, size, offset


def test_decoding_perfect_head_outputs_gives_back_the_boxes_and_labels() -> None:
    boxes = [torch.tensor([[0.1, 0.2, 0.35, 0.5], [0.6, 0.55, 0.9, 0.95]]), torch.tensor([[0.3, 0.3, 0.7, 0.6]])]
    labels = [torch.tensor([0, 2]), torch.tensor([1])]
    _targets, heat, size, offset = _perfect_outputs(boxes, labels, 3)
    found = decode(heat, size, offset, score_threshold=0.5, max_detections=10)
    for image, (b, lb) in enumerate(zip(boxes, labels, strict=True)):
        got = sorted(found[image], key=lambda d: d.box[0])
        assert [d.label for d in got] == lb.tolist()
        assert torch.allclose(torch.tensor([d.box for d in got]), b, atol=1e-4)
        assert all(d.score > 0.99 for d in got)


def test_targets_put_one_peak_per_object_and_loss_is_lowest_at_the_targets() -> None:
    boxes = [torch.tensor([[0.1, 0.1, 0.3, 0.3], [0.5, 0.5, 0.9, 0.8]])]
    labels = [torch.tensor([1, 1])]
    targets, heat, size, offset = _perfect_outputs(boxes, labels, 2)
    assert int((targets.heatmap == 1).sum()) == 2
    assert targets.heatmap[0, 0].max() == 0  # nothing of class 0
    perfect, _ = detection_loss(heat, size, offset, targets)
    wrong, _ = detection_loss(heat.flip(-1), size + 1, offset, targets)
    assert perfect * 10 < wrong


def test_decoding_honours_threshold_and_max_detections_and_sorts() -> None:
    heat = torch.full((1, 1, OUT, OUT), -10.0)
    for i, score in enumerate((0.9, 0.6, 0.3, 0.8)):
        heat[0, 0, 5 + 8 * i, 5] = torch.logit(torch.tensor(score))
    size, offset = torch.full((1, 2, OUT, OUT), 3.0), torch.zeros(1, 2, OUT, OUT)
    found = decode(heat, size, offset, score_threshold=0.5, max_detections=2)[0]
    assert [round(d.score, 3) for d in found] == [0.9, 0.8]
    found = decode(heat, size, offset, score_threshold=0.5, max_detections=10)[0]
    assert [round(d.score, 3) for d in found] == [0.9, 0.8, 0.6]


def test_nms_keeps_the_best_of_overlapping_boxes_of_one_class_only() -> None:
    boxes = torch.tensor([[0.1, 0.1, 0.5, 0.5], [0.12, 0.1, 0.52, 0.5], [0.1, 0.1, 0.5, 0.5], [0.6, 0.6, 0.9, 0.9]])
    scores = torch.tensor([0.8, 0.9, 0.7, 0.5])
    classes = torch.tensor([0, 0, 1, 0])
    keep = nms(boxes, scores, classes, 0.5)
    assert keep.tolist() == [1, 2, 3]  # box 0 loses to box 1 (same class); box 2 is another class


def test_class_agnostic_nms_keeps_one_box_per_object_whatever_its_class() -> None:
    """The report showed one shape predicted as both circle and square: across classes, the best wins."""
    boxes = torch.tensor([[0.1, 0.1, 0.5, 0.5], [0.12, 0.1, 0.52, 0.5], [0.1, 0.1, 0.5, 0.5], [0.6, 0.6, 0.9, 0.9]])
    scores = torch.tensor([0.8, 0.9, 0.7, 0.5])
    classes = torch.tensor([0, 0, 1, 0])
    assert nms(boxes, scores, classes, 0.5, class_agnostic=True).tolist() == [1, 3]


def test_decode_passes_class_agnostic_suppression_through() -> None:
    heat = torch.full((1, 2, OUT, OUT), -10.0)
    heat[0, 0, 5, 5], heat[0, 1, 5, 5] = 3.0, 2.0  # two classes peak on the same cell: one object
    size = torch.zeros((1, 2, OUT, OUT))
    size[:, :, 5, 5] = 4.0
    offset = torch.zeros((1, 2, OUT, OUT))
    both = decode(heat, size, offset, score_threshold=0.5, max_detections=10)[0]
    one = decode(heat, size, offset, score_threshold=0.5, max_detections=10, class_agnostic=True)[0]
    assert sorted(d.label for d in both) == [0, 1]
    assert [d.label for d in one] == [0]


def test_box_iou() -> None:
    a = torch.tensor([[0.0, 0.0, 0.5, 0.5]])
    b = torch.tensor([[0.0, 0.0, 0.5, 0.5], [0.25, 0.0, 0.75, 0.5], [0.6, 0.6, 1.0, 1.0]])
    assert torch.allclose(box_iou(a, b), torch.tensor([[1.0, 1 / 3, 0.0]]))


def test_a_negative_regressed_size_decodes_to_an_empty_box_never_an_inverted_one() -> None:
    """An inverted box would make the whole Vertex output line unreadable downstream."""
    heat = torch.full((1, 1, OUT, OUT), -10.0)
    heat[0, 0, 10, 10] = 3.0
    size = torch.full((1, 2, OUT, OUT), -0.4)
    found = decode(heat, size, torch.zeros(1, 2, OUT, OUT), score_threshold=0.1, max_detections=5)[0]
    assert found
    for d in found:
        x_min, y_min, x_max, y_max = d.box
        assert x_min <= x_max and y_min <= y_max
