"""The IoU of two boxes exactly as the Labelbox SDK computes it, to the last bit, without shapely.

The SDK's IoU is ``first.intersection(second).area / first.union(second).area`` on shapely polygons
(GEOS: OverlayNG with floating noding, then the shoelace formula). In exact arithmetic that is our IoU;
in floating point the union's area depends on the vertices of the union ring and their order, so an IoU
that is exactly 1/2 for boxes on a 0.1 grid lands above 1/2 in the SDK for some pairs and below for
others, and equal IoUs may compare either way. Where such rounding decides a match (a pair at the
threshold, or a tie), the metrics take this value instead of the vectorised one.

What is reproduced, for two boxes of positive area (the only ones that can overlap):

* the rings: geojson's ``(x1, y1), (x1, y2), (x2, y2), (x2, y1)``, clockwise, as the SDK's Rectangle has them;
* the noding: each ring is cut where it meets the other ring (crossings, touching corners, ends of
  shared runs), into pieces from its first vertex on; all these points are input coordinates, exactly;
* the result edges: the first ring's pieces outside the second box or on its boundary running the same
  way, then the second ring's pieces outside the first box (the others merge into the first ring's);
* the ring GEOS builds: from the first result edge, skipping that edge's first point (OverlayEdge's
  addCoordinates), following the boundary clockwise, then closed;
* the area: GEOS's ``Area::ofRingSigned``, shoelace with x taken relative to the ring's first x.

The intersection of two boxes is a rectangle of four vertices, whose shoelace area is exactly
``fl(fl(dx) * fl(dy))`` whichever vertex comes first, so it needs no ring. Checked bit for bit against
shapely 2.x (GEOS 3.14) in tests/metrics/test_sdk_iou.py.
"""

from __future__ import annotations

from collections.abc import Sequence

Point = tuple[float, float]
Box = Sequence[float]  # x1, y1, x2, y2


def sdk_iou(first: Box, second: Box) -> float:
    """The SDK's ``_polygon_iou(first.shapely, second.shapely)``: confusion matrices pass the prediction
    first, the mIoU passes the ground truth first. Coordinates must already be rounded as the SDK rounds them."""
    fx1, fy1, fx2, fy2 = (float(v) for v in first)
    sx1, sy1, sx2, sy2 = (float(v) for v in second)
    width = min(fx2, sx2) - max(fx1, sx1)
    height = min(fy2, sy2) - max(fy1, sy1)
    if width <= 0 or height <= 0 or fx2 <= fx1 or fy2 <= fy1 or sx2 <= sx1 or sy2 <= sy1:
        return 0.0  # apart, touching, or a degenerate box (shapely: invalid, buffered to nothing)
    a, b = (fx1, fy1, fx2, fy2), (sx1, sy1, sx2, sy2)
    return (width * height) / _ring_area(_union_ring(a, b))


def _ring(box: tuple[float, float, float, float]) -> list[Point]:
    x1, y1, x2, y2 = box
    return [(x1, y1), (x1, y2), (x2, y2), (x2, y1), (x1, y1)]


def _on_segment(p: Point, a: Point, b: Point) -> bool:
    """p on the closed axis-parallel segment a-b."""
    if a[0] == b[0]:
        return p[0] == a[0] and min(a[1], b[1]) <= p[1] <= max(a[1], b[1])
    return p[1] == a[1] and min(a[0], b[0]) <= p[0] <= max(a[0], b[0])


def _meeting_points(a: Point, b: Point, c: Point, d: Point) -> list[Point]:
    """Where segments a-b and c-d meet: shared ends, an end on the other, ends of a collinear overlap, or
    the crossing of a vertical and a horizontal one (whose coordinates are inputs, so exact)."""
    points = [p for p in (a, b) if _on_segment(p, c, d)] + [p for p in (c, d) if _on_segment(p, a, b)]
    if (a[0] == b[0]) != (c[0] == d[0]):
        cross = (a[0], c[1]) if a[0] == b[0] else (c[0], a[1])
        if _on_segment(cross, a, b) and _on_segment(cross, c, d):
            points.append(cross)
    return points


def _pieces(ring: list[Point], nodes: set[Point]) -> list[list[Point]]:
    """`ring` cut at the `nodes` on it (the points where it meets the other ring), in ring order from its
    first vertex."""
    pieces: list[list[Point]] = []
    current = [ring[0]]
    for i in range(4):
        a, b = ring[i], ring[i + 1]
        inner = [p for p in nodes if p != a and p != b and _on_segment(p, a, b)]
        if len(inner) > 1:
            inner.sort(key=lambda p: abs(p[0] - a[0]) + abs(p[1] - a[1]))
        for p in inner:
            current.append(p)
            pieces.append(current)
            current = [p]
        current.append(b)
        if i < 3 and b in nodes:
            pieces.append(current)
            current = [b]
    pieces.append(current)
    return pieces


def _side(a: Point, b: Point, box: tuple[float, float, float, float]) -> str:
    """Where the open segment a-b (a piece's first, which no node cuts) lies: "in", "on" the boundary, "out"."""
    x1, y1, x2, y2 = box
    lo_x, hi_x = min(a[0], b[0]), max(a[0], b[0])
    lo_y, hi_y = min(a[1], b[1]), max(a[1], b[1])
    if not (x1 <= lo_x and hi_x <= x2 and y1 <= lo_y and hi_y <= y2):
        return "out"
    if a[0] == b[0]:
        return "on" if a[0] in (x1, x2) else "in"
    return "on" if a[1] in (y1, y2) else "in"


def _same_way(a: Point, b: Point, box: tuple[float, float, float, float]) -> bool:
    """Whether the segment a-b, on `box`'s boundary, runs the way `box`'s clockwise ring runs there (both
    boxes on the same side of it, so it is on the union's boundary)."""
    left, top = box[0], box[3]
    if a[0] == b[0]:  # vertical: the ring goes up on the left side, down on the right one
        return (b[1] > a[1]) == (a[0] == left)
    return (b[0] > a[0]) == (a[1] == top)  # horizontal: right along the top, left along the bottom


def _union_ring(first: tuple[float, float, float, float], second: tuple[float, float, float, float]) -> list[Point]:
    ring_a, ring_b = _ring(first), _ring(second)
    nodes = {
        p
        for i in range(4)
        for j in range(4)
        for p in _meeting_points(ring_a[i], ring_a[i + 1], ring_b[j], ring_b[j + 1])
    }
    edges = [
        piece
        for piece in _pieces(ring_a, nodes)
        if (side := _side(piece[0], piece[1], second)) == "out"
        or (side == "on" and _same_way(piece[0], piece[1], second))
    ]
    edges += [piece for piece in _pieces(ring_b, nodes) if _side(piece[0], piece[1], first) == "out"]
    by_start = {piece[0]: piece for piece in edges}  # one result edge leaves each node of a simple ring
    start = edges[0]
    coords = list(start[1:])
    piece = by_start[start[-1]]
    while piece is not start:
        coords.extend(p for p in piece[1:])
        piece = by_start[piece[-1]]
    if coords[-1] != coords[0]:
        coords.append(coords[0])
    return coords


def _ring_area(coords: list[Point]) -> float:
    """GEOS Area::ofRing: the shoelace sum with x relative to the first vertex, in this order."""
    x0 = coords[0][0]
    total = 0.0
    for i in range(1, len(coords) - 1):
        total += (coords[i][0] - x0) * (coords[i - 1][1] - coords[i + 1][1])
    return abs(total / 2.0)
