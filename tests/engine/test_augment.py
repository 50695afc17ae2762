"""Training-time augmentation: boxes move with the image, and a seed repeats it exactly."""

from __future__ import annotations

import torch

from shared.engine.augment import Jitter, augment


def test_augmented_boxes_still_frame_the_object() -> None:
    """A white square on black: after any flip/zoom/shift the moved box must cover the white pixels."""
    image = torch.zeros(1, 3, 64, 64, dtype=torch.uint8)
    image[:, :, 16:32, 8:24] = 255  # y 0.25..0.5, x 0.125..0.375
    box = torch.tensor([[0.125, 0.25, 0.375, 0.5]])
    gen = torch.Generator().manual_seed(3)
    checked = 0
    for _ in range(20):
        out, moved, kept = augment(image, [box], Jitter(colour=0.0), gen)
        assert moved is not None and kept is not None
        if not kept[0].all():
            continue
        white = (out[0, 0] > 0.5).nonzero()
        ys, xs = white[:, 0].float(), white[:, 1].float()
        x0, y0, x1, y1 = (moved[0][0] * 64).tolist()
        assert abs(xs.min() - x0) <= 2 and abs(xs.max() + 1 - x1) <= 2
        assert abs(ys.min() - y0) <= 2 and abs(ys.max() + 1 - y1) <= 2
        checked += 1
    assert checked >= 10


def test_augmentation_is_repeatable_for_a_seed() -> None:
    image = torch.randint(0, 255, (4, 3, 32, 32), dtype=torch.uint8)
    boxes = [torch.tensor([[0.1, 0.1, 0.6, 0.6]])] * 4
    first = augment(image, boxes, Jitter(), torch.Generator().manual_seed(5))
    second = augment(image, boxes, Jitter(), torch.Generator().manual_seed(5))
    assert torch.equal(first[0], second[0])
    assert all(torch.equal(a, b) for a, b in zip(first[1], second[1], strict=True))
