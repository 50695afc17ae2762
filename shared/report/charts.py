"""Inline SVG drawn in Python: precision-recall curves and boxes over sample images.

SVG rather than a plotting library or JavaScript, so the report needs nothing but a browser, prints, and
shows the same offline. Every piece of text that reaches the markup goes through `esc`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from html import escape
from typing import Any

GROUND_TRUTH_COLOUR = "#0284c7"  # blue and orange stay apart for colour-blind readers
PREDICTION_COLOUR = "#ea580c"
PALETTE = (
    "#2563eb",
    "#dc2626",
    "#16a34a",
    "#9333ea",
    "#ea580c",
    "#0891b2",
    "#ca8a04",
    "#db2777",
    "#4b5563",
    "#65a30d",
)


def esc(value: object) -> str:
    return escape(str(value), quote=True)


@dataclass(frozen=True)
class Curve:
    """A precision-recall curve: (recall, precision) points, both in [0, 1]."""

    label: str
    points: tuple[tuple[float, float], ...]
    colour: str = PALETTE[0]


def curve_from(label: str, pr_curve: object, colour: str = PALETTE[0]) -> Curve:
    """The finite points of a {"recall": [...], "precision": [...]} mapping; nothing if it is malformed."""
    if not isinstance(pr_curve, Mapping):
        return Curve(label, (), colour)
    recall, precision = pr_curve.get("recall"), pr_curve.get("precision")
    if not isinstance(recall, Sequence) or not isinstance(precision, Sequence):
        return Curve(label, (), colour)
    points = []
    for r, p in zip(recall, precision, strict=False):
        if _is_number(r) and _is_number(p):
            points.append((_unit(r), _unit(p)))
    return Curve(label, tuple(points), colour)


# Plot geometry, in SVG user units.
_W, _H = 320, 240
_LEFT, _RIGHT, _TOP, _BOTTOM = 44, 12, 12, 36


def pr_chart(curves: Sequence[Curve], *, title: str, mark_best_f1: bool = True) -> str:
    """One chart; several curves overlay (the all-classes chart), one gets its best-F1 point marked."""
    plot_w, plot_h = _W - _LEFT - _RIGHT, _H - _TOP - _BOTTOM

    def x(recall: float) -> float:
        return _LEFT + recall * plot_w

    def y(precision: float) -> float:
        return _TOP + (1 - precision) * plot_h

    parts = [
        f'<svg class="pr" viewBox="0 0 {_W} {_H}" width="{_W}" height="{_H}" role="img" aria-label="{esc(title)}">',
        f"<title>{esc(title)}</title>",
        f'<rect x="{_LEFT}" y="{_TOP}" width="{plot_w}" height="{plot_h}" fill="#fff" stroke="#cbd5e1"/>',
    ]
    for step in range(1, 5):
        gx, gy = x(step / 5), y(step / 5)
        parts.append(f'<line x1="{gx:.1f}" y1="{_TOP}" x2="{gx:.1f}" y2="{_TOP + plot_h}" class="grid"/>')
        parts.append(f'<line x1="{_LEFT}" y1="{gy:.1f}" x2="{_LEFT + plot_w}" y2="{gy:.1f}" class="grid"/>')
    for step in range(6):
        value = step / 5
        parts.append(
            f'<text x="{x(value):.1f}" y="{_TOP + plot_h + 14}" text-anchor="middle" class="tick">{value:.1f}</text>'
        )
        parts.append(f'<text x="{_LEFT - 6}" y="{y(value) + 4:.1f}" text-anchor="end" class="tick">{value:.1f}</text>')
    parts.append(f'<text x="{_LEFT + plot_w / 2:.1f}" y="{_H - 4}" text-anchor="middle" class="axis">Recall</text>')
    parts.append(
        f'<text x="12" y="{_TOP + plot_h / 2:.1f}" text-anchor="middle" class="axis" '
        f'transform="rotate(-90 12 {_TOP + plot_h / 2:.1f})">Precision</text>'
    )
    drawn = [curve for curve in curves if curve.points]
    if not drawn:
        parts.append(
            f'<text x="{_LEFT + plot_w / 2:.1f}" y="{_TOP + plot_h / 2:.1f}" text-anchor="middle" '
            'class="empty">no curve recorded</text>'
        )
    for curve in drawn:
        path = " ".join(f"{x(r):.1f},{y(p):.1f}" for r, p in curve.points)
        parts.append(
            f'<polyline points="{path}" fill="none" stroke="{curve.colour}" stroke-width="2" '
            f'stroke-linejoin="round"><title>{esc(curve.label)}</title></polyline>'
        )
    if mark_best_f1 and len(drawn) == 1:
        r, p = max(drawn[0].points, key=lambda point: _f1(*point))
        parts.append(
            f'<circle cx="{x(r):.1f}" cy="{y(p):.1f}" r="4" fill="{drawn[0].colour}" stroke="#fff">'
            f"<title>best F1 {_f1(r, p):.3f} (recall {r:.3f}, precision {p:.3f})</title></circle>"
        )
    parts.append("</svg>")
    return "".join(parts)


def sample_overlay(
    data_uri: str | None,
    width: int,
    height: int,
    ground_truth: Sequence[tuple[str, float, float, float, float]],
    predictions: Sequence[tuple[str, float, float, float, float, float]],
    *,
    title: str,
) -> str:
    """The image in its original pixel coordinates with boxes on top: ground truth solid blue with the
    label at the bottom edge, predictions dashed orange with "label confidence" at the top edge."""
    # Text about 11 px on screen: a card shows the image about 300 px wide and at most 360 px high.
    font = max(width, height / 1.2) / 27
    parts = [
        f'<svg class="sample" viewBox="0 0 {width} {height}" role="img" aria-label="{esc(title)}">',
        f"<title>{esc(title)}</title>",
    ]
    if data_uri is None:
        parts.append(f'<rect width="{width}" height="{height}" fill="#e2e8f0"/>')
        parts.append(
            f'<text x="{width / 2:.1f}" y="{height / 2:.1f}" font-size="{font:.1f}" text-anchor="middle" '
            'fill="#475569">image could not be read</text>'
        )
    else:
        parts.append(
            f'<image href="{esc(data_uri)}" x="0" y="0" width="{width}" height="{height}" preserveAspectRatio="none"/>'
        )
    for label, left, top, box_w, box_h in ground_truth:
        parts.append(_box(left, top, box_w, box_h, GROUND_TRUTH_COLOUR, dashed=False, kind="gt", label=label))
        parts.append(_tag(label, left, top + box_h, font, GROUND_TRUTH_COLOUR, width, height, above=False))
    for label, confidence, left, top, box_w, box_h in predictions:
        text = f"{label} {confidence:.2f}"
        parts.append(_box(left, top, box_w, box_h, PREDICTION_COLOUR, dashed=True, kind="pred", label=text))
        parts.append(_tag(text, left, top, font, PREDICTION_COLOUR, width, height, above=True))
    parts.append("</svg>")
    return "".join(parts)


def _box(left: float, top: float, w: float, h: float, colour: str, *, dashed: bool, kind: str, label: str) -> str:
    dash = ' stroke-dasharray="6 4"' if dashed else ""
    return (
        f'<rect class="box {kind}" x="{left:.1f}" y="{top:.1f}" width="{max(w, 0):.1f}" height="{max(h, 0):.1f}" '
        f'fill="none" stroke="{colour}" stroke-width="2.5" vector-effect="non-scaling-stroke"{dash}>'
        f"<title>{esc(label)}</title></rect>"
    )


def _tag(text: str, left: float, edge: float, font: float, colour: str, width: int, height: int, *, above: bool) -> str:
    """A filled label on a box edge, kept inside the image so it is never cut off."""
    tag_w = min(len(text) * font * 0.6 + font * 0.5, float(width))
    tag_h = font * 1.3
    x = min(max(left, 0.0), width - tag_w)
    y = edge - tag_h if above else edge
    y = min(max(y, 0.0), height - tag_h)
    return (
        f'<g class="tag"><rect x="{x:.1f}" y="{y:.1f}" width="{tag_w:.1f}" height="{tag_h:.1f}" fill="{colour}" '
        f'opacity="0.85"/><text x="{x + font * 0.25:.1f}" y="{y + font * 1.0:.1f}" font-size="{font:.1f}" '
        f'fill="#fff">{esc(text)}</text></g>'
    )


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _unit(value: float) -> float:
    return min(1.0, max(0.0, float(value)))


def _f1(recall: float, precision: float) -> float:
    return 0.0 if recall + precision == 0 else 2 * recall * precision / (recall + precision)
