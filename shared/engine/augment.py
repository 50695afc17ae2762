"""Light, batched augmentation: horizontal flip, scale/crop jitter and colour jitter.

The geometric part is one affine warp per image (`affine_grid` + `grid_sample` over the whole batch),
and the same affine maps the boxes, so images and targets can never drift apart. All randomness comes
from the generator passed in, which is what makes step-bounded training repeatable for a seed.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor
from torch.nn import functional as F

MEAN = 0.45
STD = 0.25
MIN_VISIBLE = 0.4  # a cropped box keeps its label only if this much of it is still in the image


@dataclass(frozen=True)
class Jitter:
    scale: tuple[float, float] = (0.75, 1.3)  # zoom factor; >1 crops in, <1 shrinks into a padded frame
    shift: float = 0.15  # extra translation, as a fraction of the image
    colour: float = 0.25  # brightness, contrast and saturation vary by up to this factor
    flip: bool = True


def normalize(images: Tensor) -> Tensor:
    """uint8 [B,3,H,W] -> float, centred; padding with zeros after this means padding with grey."""
    return (images.float() / 255.0 - MEAN) / STD


def _colour(images: Tensor, amount: float, gen: torch.Generator) -> Tensor:
    """Works on [0,1] floats."""
    batch = images.shape[0]

    def factor() -> Tensor:
        return (1 + (torch.rand(batch, 1, 1, 1, generator=gen) * 2 - 1) * amount).to(images.device)

    images = images * factor()
    mean = images.mean(dim=(1, 2, 3), keepdim=True)
    images = (images - mean) * factor() + mean
    grey = images.mean(dim=1, keepdim=True)
    images = (images - grey) * factor() + grey
    return images.clamp(0, 1)


def augment(
    images: Tensor, boxes: list[Tensor] | None, jitter: Jitter, gen: torch.Generator
) -> tuple[Tensor, list[Tensor] | None, list[Tensor] | None]:
    """Returns normalized augmented images, the moved boxes, and for each image the mask of boxes kept.

    `boxes[i]` is an [N_i, 4] tensor of normalized (x_min, y_min, x_max, y_max).
    """
    batch = images.shape[0]
    device = images.device
    pixels = _colour(images.float() / 255.0, jitter.colour, gen) if jitter.colour else images.float() / 255.0
    pixels = (pixels - MEAN) / STD

    low, high = jitter.scale
    zoom = low + torch.rand(batch, generator=gen) * (high - low)
    half_range = (1 - 1 / zoom).abs() + jitter.shift
    tx = (torch.rand(batch, generator=gen) * 2 - 1) * half_range
    ty = (torch.rand(batch, generator=gen) * 2 - 1) * half_range
    flip = torch.rand(batch, generator=gen) < 0.5 if jitter.flip else torch.zeros(batch, dtype=torch.bool)
    sx = torch.where(flip, -1 / zoom, 1 / zoom)
    sy = 1 / zoom
    theta = torch.zeros(batch, 2, 3)
    theta[:, 0, 0], theta[:, 0, 2] = sx, tx
    theta[:, 1, 1], theta[:, 1, 2] = sy, ty
    grid = F.affine_grid(theta.to(device), list(pixels.shape), align_corners=False)
    warped = F.grid_sample(pixels, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    if boxes is None:
        return warped, None, None

    moved: list[Tensor] = []
    kept: list[Tensor] = []
    for i, b in enumerate(boxes):
        if len(b) == 0:
            moved.append(b.reshape(0, 4))
            kept.append(torch.zeros(0, dtype=torch.bool))
            continue
        # input coordinate u_in = s * u_out + t, in [-1, 1] units; invert for the boxes
        xs = ((b[:, [0, 2]] * 2 - 1) - tx[i]) / sx[i]
        ys = ((b[:, [1, 3]] * 2 - 1) - ty[i]) / sy[i]
        xs, ys = (xs + 1) / 2, (ys + 1) / 2
        x0, x1 = xs.min(dim=1).values, xs.max(dim=1).values
        y0, y1 = ys.min(dim=1).values, ys.max(dim=1).values
        full = (x1 - x0) * (y1 - y0)
        cx0, cx1, cy0, cy1 = x0.clamp(0, 1), x1.clamp(0, 1), y0.clamp(0, 1), y1.clamp(0, 1)
        visible = (cx1 - cx0).clamp(min=0) * (cy1 - cy0).clamp(min=0)
        keep = visible >= MIN_VISIBLE * full.clamp(min=1e-9)
        moved.append(torch.stack([cx0, cy0, cx1, cy1], dim=1)[keep])
        kept.append(keep)
    return warped, moved, kept
