"""The boundary IoU (shared/metrics/_sdk_iou.py) is the SDK's own, bit for bit, on every kind of overlap."""

from __future__ import annotations

import numpy as np
import pytest
from labelbox.data.metrics.iou.calculation import _polygon_iou
from labelbox.types import Point, Rectangle

from shared.metrics.sdk_iou import sdk_iou


def _shapely_iou(first: list[float], second: list[float]) -> float:
    """What the SDK's vector IoU does with two Rectangles (geojson rounding included)."""
    a, b = (Rectangle(start=Point(x=v[0], y=v[1]), end=Point(x=v[2], y=v[3])).shapely for v in (first, second))
    return float(_polygon_iou(a, b))


def _geojson(box: list[float]) -> list[float]:
    return [round(v, 6) for v in box]  # what geojson does to every coordinate on its way to shapely


def _box(rng: np.random.Generator, units: int, scale: float | None) -> list[float]:
    v = rng.uniform(0, 300, 4) if scale is None else rng.integers(0, units, 4) / scale
    return [float(min(v[0], v[2])), float(min(v[1], v[3])), float(max(v[0], v[2])), float(max(v[1], v[3]))]


@pytest.mark.parametrize(
    ("units", "scale"),
    [(6, 1), (40, 1), (6, 10), (60, 10), (600, 100), (5000, 1000), (0, None)],
    ids=["tiny-ints", "ints", "tiny-0.1", "grid-0.1", "grid-0.01", "grid-0.001", "floats"],
)
def test_same_bits_as_shapely(units: int, scale: float | None) -> None:
    """Small grids give every degenerate overlap (shared edges, corners on edges, containment, equal boxes)."""
    rng = np.random.default_rng(units)
    compared = 0
    for _ in range(2000):
        first = _box(rng, units, scale)
        second = (
            _box(rng, units, scale) if rng.random() < 0.7 else [first[0], first[1], first[2] * 2 - first[0], first[3]]
        )
        if first[0] == first[2] or first[1] == first[3] or second[0] == second[2] or second[1] == second[3]:
            continue
        for a, b in ((first, second), (second, first)):
            assert sdk_iou(_geojson(a), _geojson(b)) == _shapely_iou(a, b), (a, b)
        compared += 1
    assert compared > 1000


def test_exact_halves_round_both_ways_in_the_sdk() -> None:
    """Why the metrics need this at all: on a 0.1 grid the SDK puts exact halves on either side of 0.5."""
    rng = np.random.default_rng(0)
    values = []
    for _ in range(300):
        x, y, third, h = rng.integers(0, 60), rng.integers(0, 60), rng.integers(1, 20), rng.integers(1, 60)
        g = [x, y, x + 3 * third, y + h]
        for p in ([x, y, x + 6 * third, y + h], [x + third, y, x + 4 * third, y + h]):  # doubled, shifted by 1/3
            values.append(_shapely_iou([v / 10 for v in p], [v / 10 for v in g]))
    assert sum(v > 0.5 for v in values) > 20 and sum(v <= 0.5 for v in values) > 200


def test_no_overlap_and_degenerate_boxes_are_zero() -> None:
    assert sdk_iou([0, 0, 10, 10], [10, 0, 20, 10]) == 0.0 == _shapely_iou([0, 0, 10, 10], [10, 0, 20, 10])
    assert sdk_iou([0, 0, 10, 10], [20, 20, 30, 30]) == 0.0
    assert sdk_iou([5, 0, 5, 10], [0, 0, 10, 10]) == 0.0 == _shapely_iou([5, 0, 5, 10], [0, 0, 10, 10])
