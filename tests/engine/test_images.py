"""Letterboxed input: the picture keeps its aspect, and boxes map between picture and input exactly."""

from __future__ import annotations

import io

import pytest
import torch
from PIL import Image, ImageDraw

from shared.engine.augment import normalize
from shared.engine.images import PAD_GREY, decode_image, letterbox_size


def _png(width: int, height: int, rect: tuple[int, int, int, int] | None = None) -> bytes:
    img = Image.new("RGB", (width, height), (0, 0, 0))
    if rect is not None:
        ImageDraw.Draw(img).rectangle((rect[0], rect[1], rect[2] - 1, rect[3] - 1), fill=(255, 255, 255))
    out = io.BytesIO()
    img.save(out, format="PNG")
    return out.getvalue()


def test_a_wide_picture_keeps_its_aspect_and_the_rest_is_grey_that_normalizes_to_zero() -> None:
    decoded = decode_image(_png(300, 100), 96)
    assert (decoded.width, decoded.height) == (300, 100)
    assert decoded.content == (96, 32)
    assert decoded.pixels.shape == (3, 96, 96)
    assert int(decoded.pixels[:, :32, :].max()) == 0  # the (black) picture fills the top rows
    assert bool((decoded.pixels[:, 32:, :] == PAD_GREY).all())  # grey below it
    assert float(normalize(decoded.pixels[None, :, 32:, :]).abs().max()) < 0.01


def test_a_tall_picture_is_padded_on_the_right() -> None:
    decoded = decode_image(_png(60, 240), 64)
    assert decoded.content == (16, 64)
    assert bool((decoded.pixels[:, :, 16:] == PAD_GREY).all())
    assert int(decoded.pixels[:, :, :16].max()) == 0


@pytest.mark.parametrize(
    ("width", "height", "size"), [(2048, 1365, 160), (1365, 2048, 512), (640, 480, 160), (64, 64, 64), (1001, 3, 32)]
)
def test_a_box_goes_to_the_input_and_back_unchanged(width: int, height: int, size: int) -> None:
    content = letterbox_size(width, height, size)
    decoded = decode_image(_png(width, height), size)
    assert decoded.content == content
    box = (0.1, 0.25, 0.7, 0.9)
    there = decoded.to_input(box)
    assert there[2] <= content[0] / size + 1e-12 and there[3] <= content[1] / size + 1e-12
    assert decoded.to_picture(there) == pytest.approx(box, abs=1e-12)


def test_a_drawn_rectangle_lands_in_the_input_where_to_input_puts_its_box() -> None:
    """The resize maps the whole picture onto the whole resized area, so the mapping is one scale."""
    width, height, size = 2048, 1365, 160
    rect = (512, 340, 1536, 1020)
    decoded = decode_image(_png(width, height, rect), size)
    bright = decoded.pixels[0] > 127
    ys, xs = torch.nonzero(bright, as_tuple=True)
    found = (int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1)
    expected = decoded.to_input((rect[0] / width, rect[1] / height, rect[2] / width, rect[3] / height))
    assert found == pytest.approx([v * size for v in expected], abs=1.0)


def test_a_box_reaching_into_the_padding_is_clipped_to_the_picture() -> None:
    decoded = decode_image(_png(300, 100), 96)  # the picture covers the top third
    assert decoded.to_picture((0.5, 0.2, 0.9, 0.6)) == pytest.approx((0.5, 0.6, 0.9, 1.0))
