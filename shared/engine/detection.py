"""CenterNet-style training targets, losses and decoding, in plain torch.

An object is a peak in its class's heatmap at the cell holding its centre; the box head regresses the
box size (in output cells) and the centre's sub-cell offset at that cell. Decoding keeps local maxima
(3x3 max-pool), then a class-wise NMS removes the rare duplicate peaks of one object.
Boxes are normalized [x_min, y_min, x_max, y_max] throughout, like Vertex.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor
from torch.nn import functional as F

GAUSSIAN_ALPHA = 0.54  # TTFNet's ratio of Gaussian spread to box size


@dataclass
class Targets:
    heatmap: Tensor  # [B, C, H, W], 1 at object centres, Gaussian falloff around them
    index: Tensor  # [M] flat index b*H*W + y*W + x of each object's centre cell
    size: Tensor  # [M, 2] box width, height in cells
    offset: Tensor  # [M, 2] centre offset within its cell


def build_targets(boxes: list[Tensor], labels: list[Tensor], num_classes: int, out_size: int) -> Targets:
    """`boxes[i]` is [N_i, 4] normalized boxes of image i, `labels[i]` their class indices."""
    batch = len(boxes)
    heat = torch.zeros(batch * num_classes, out_size, out_size)
    all_boxes = torch.cat([b.reshape(-1, 4) for b in boxes]) if batch else torch.zeros(0, 4)
    all_labels = torch.cat([lb.reshape(-1) for lb in labels]).long() if batch else torch.zeros(0).long()
    image = torch.cat([torch.full((len(b),), i, dtype=torch.long) for i, b in enumerate(boxes)])
    if len(all_boxes) == 0:
        empty = torch.zeros(0, 2)
        return Targets(heat.view(batch, num_classes, out_size, out_size), torch.zeros(0).long(), empty, empty)
    cells = all_boxes * out_size
    centre = (cells[:, :2] + cells[:, 2:]) / 2
    size = (cells[:, 2:] - cells[:, :2]).clamp(min=1e-3)
    peak = centre.floor().clamp(0, out_size - 1)
    sigma = (GAUSSIAN_ALPHA * size / 6).clamp(min=0.5)
    grid = torch.arange(out_size, dtype=torch.float32)
    gx = torch.exp(-((grid[None, :] - peak[:, :1]) ** 2) / (2 * sigma[:, :1] ** 2))
    gy = torch.exp(-((grid[None, :] - peak[:, 1:]) ** 2) / (2 * sigma[:, 1:] ** 2))
    gaussians = gy[:, :, None] * gx[:, None, :]
    rows = (image * num_classes + all_labels)[:, None].expand(-1, out_size * out_size)
    heat.view(batch * num_classes, -1).scatter_reduce_(0, rows, gaussians.reshape(len(rows), -1), "amax")
    px, py = peak[:, 0].long(), peak[:, 1].long()
    return Targets(
        heatmap=heat.view(batch, num_classes, out_size, out_size),
        index=image * out_size * out_size + py * out_size + px,
        size=size,
        offset=centre - peak,
    )


def focal_loss(logits: Tensor, target: Tensor) -> Tensor:
    """CenterNet's penalty-reduced pixel-wise focal loss, normalized by the number of objects."""
    pred = torch.sigmoid(logits).clamp(1e-4, 1 - 1e-4)
    positive = target.eq(1).float()
    negative_weight = (1 - target).pow(4)
    pos_loss = torch.log(pred) * (1 - pred).pow(2) * positive
    neg_loss = torch.log(1 - pred) * pred.pow(2) * negative_weight * (1 - positive)
    count = positive.sum().clamp(min=1)
    return -(pos_loss.sum() + neg_loss.sum()) / count


def detection_loss(heat: Tensor, size: Tensor, offset: Tensor, targets: Targets) -> tuple[Tensor, dict[str, float]]:
    hm = focal_loss(heat, targets.heatmap.to(heat.device))
    if len(targets.index):
        index = targets.index.to(heat.device)
        pred_size = size.permute(0, 2, 3, 1).reshape(-1, 2)[index]
        pred_offset = offset.permute(0, 2, 3, 1).reshape(-1, 2)[index]
        size_loss = F.l1_loss(pred_size, targets.size.to(heat.device))
        offset_loss = F.l1_loss(pred_offset, targets.offset.to(heat.device))
    else:
        size_loss = offset_loss = heat.sum() * 0
    total = hm + 0.1 * size_loss + offset_loss
    parts = {"heatmap": float(hm.detach()), "size": float(size_loss.detach()), "offset": float(offset_loss.detach())}
    return total, parts


def box_iou(a: Tensor, b: Tensor) -> Tensor:
    """Pairwise IoU of [N,4] and [M,4] boxes (x_min, y_min, x_max, y_max)."""
    area_a = (a[:, 2] - a[:, 0]).clamp(min=0) * (a[:, 3] - a[:, 1]).clamp(min=0)
    area_b = (b[:, 2] - b[:, 0]).clamp(min=0) * (b[:, 3] - b[:, 1]).clamp(min=0)
    lt = torch.maximum(a[:, None, :2], b[None, :, :2])
    rb = torch.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = (rb - lt).clamp(min=0).prod(dim=2)
    union = area_a[:, None] + area_b[None, :] - inter
    return inter / union.clamp(min=1e-12)


def nms(
    boxes: Tensor, scores: Tensor, classes: Tensor, iou_threshold: float, *, class_agnostic: bool = False
) -> Tensor:
    """Greedy NMS; returns the indices kept, by descending score.

    Class-wise by default: boxes of different classes are shifted apart so they never overlap, which
    turns class-wise NMS into one pass. `class_agnostic` suppresses across classes too, so one object
    is never predicted as two classes at once (where classes cannot overlap, as in most detection
    sets). Only rows that overlap something need the greedy loop.
    """
    if len(boxes) == 0:
        return torch.zeros(0, dtype=torch.long)
    order = torch.argsort(scores, descending=True, stable=True)
    shift = 0.0 if class_agnostic else 2.0
    shifted = boxes[order] + classes[order, None].to(boxes.dtype) * shift
    overlaps = box_iou(shifted, shifted).triu_(diagonal=1) > iou_threshold
    keep = torch.ones(len(order), dtype=torch.bool)
    for i in torch.nonzero(overlaps.any(dim=1)).flatten().tolist():
        if keep[i]:
            keep &= ~overlaps[i]
    return order[keep]


@dataclass(frozen=True)
class Detection:
    label: int
    score: float
    box: tuple[float, float, float, float]  # normalized x_min, y_min, x_max, y_max


def decode(
    heat: Tensor,
    size: Tensor,
    offset: Tensor,
    *,
    score_threshold: float,
    max_detections: int,
    iou_threshold: float = 0.5,
    candidates: int = 100,
    class_agnostic: bool = False,
) -> list[list[Detection]]:
    """Turns head outputs into per-image detections sorted by descending score."""
    batch, num_classes, h, w = heat.shape
    probs = torch.sigmoid(heat)
    peaks = probs * (F.max_pool2d(probs, 3, stride=1, padding=1) == probs)
    k = min(max(candidates, max_detections), num_classes * h * w)
    scores, flat = peaks.reshape(batch, -1).topk(k)
    cls = flat // (h * w)
    cell = flat % (h * w)
    ys, xs = (cell // w).float(), (cell % w).float()
    size_flat = size.reshape(batch, 2, -1)
    off_flat = offset.reshape(batch, 2, -1)
    bw = size_flat[:, 0].gather(1, cell).clamp(min=0)  # an untrained or low peak can regress a negative size
    bh = size_flat[:, 1].gather(1, cell).clamp(min=0)
    cx = xs + off_flat[:, 0].gather(1, cell)
    cy = ys + off_flat[:, 1].gather(1, cell)
    boxes = torch.stack([(cx - bw / 2) / w, (cy - bh / 2) / h, (cx + bw / 2) / w, (cy + bh / 2) / h], dim=2)
    boxes = boxes.clamp(0, 1)
    results: list[list[Detection]] = []
    for i in range(batch):
        mask = scores[i] >= score_threshold
        b, s, c = boxes[i][mask], scores[i][mask], cls[i][mask]
        keep = nms(b, s, c, iou_threshold, class_agnostic=class_agnostic)[:max_detections]
        results.append(
            [
                Detection(int(label), float(score), tuple(float(v) for v in box))  # type: ignore[arg-type]
                for label, score, box in zip(c[keep].tolist(), s[keep].tolist(), b[keep].tolist(), strict=True)
            ]
        )
    return results
