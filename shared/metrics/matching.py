"""Ragged per-(image, class) box lists turned into padded blocks, so numpy works on thousands of groups at once.

Groups are binned by their padded size (next power of two on each side) and cut into blocks of bounded
memory; padding then wastes at most 4x and one crowded image does not inflate every other group.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

DENSE_GREEDY_CELLS = 64 * 64  # above this many pairs per matrix, greedy matching scans sorted pairs instead
MAX_BLOCK_CELLS = 1 << 21  # pair cells per block (x4 floats for boxes, x10 thresholds in mAP): bounded memory


@dataclass(frozen=True)
class Side:
    """One side (ground truth or predictions) grouped: items sorted by group, then by the caller's order."""

    order: np.ndarray  # item indices, grouped; within a group in the caller's order
    starts: np.ndarray  # (n_groups,) offset of each group in `order`
    counts: np.ndarray  # (n_groups,) items per group

    @classmethod
    def of(cls, group: np.ndarray, n_groups: int, *, then_by: np.ndarray | None = None) -> Side:
        """`then_by` orders items inside a group (stable: equal keys keep their input order)."""
        order = np.lexsort((group,) if then_by is None else (then_by, group))
        counts = np.bincount(group, minlength=n_groups)
        return cls(order=order, starts=np.cumsum(counts) - counts, counts=counts)

    def members(self, groups: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Items of `groups`, with their slot (position of the group in `groups`) and rank inside the group."""
        counts = self.counts[groups]
        total = int(counts.sum())
        first = np.repeat(np.cumsum(counts) - counts, counts)
        rank = np.arange(total) - first
        items = self.order[np.repeat(self.starts[groups], counts) + rank]
        slot = np.repeat(np.arange(len(groups)), counts)
        return items, slot, rank


def _pow2(n: np.ndarray) -> np.ndarray:
    return np.left_shift(1, np.ceil(np.log2(np.maximum(n, 1))).astype(np.int64))


def blocks(groups: np.ndarray, rows: np.ndarray, cols: np.ndarray) -> Iterator[tuple[np.ndarray, int, int]]:
    """Yield (groups, padded rows, padded cols) blocks covering `groups` (each with rows[g] x cols[g] cells)."""
    if len(groups) == 0:
        return
    bins = _pow2(rows[groups]) * (1 << 32) + _pow2(cols[groups])
    for value in np.unique(bins):
        members = groups[bins == value]
        height, width = int(rows[members].max()), int(cols[members].max())
        per_block = max(1, MAX_BLOCK_CELLS // max(1, height * width))
        for start in range(0, len(members), per_block):
            yield members[start : start + per_block], height, width


def pad(values: np.ndarray, slot: np.ndarray, rank: np.ndarray, shape: tuple[int, ...], fill: float) -> np.ndarray:
    out = np.full(shape + values.shape[1:], fill, dtype=values.dtype)
    out[slot, rank] = values
    return out


def iou_corners(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """IoU of (B, R, 4) against (B, C, 4) boxes as x1, y1, x2, y2 -> (B, R, C); 0 where the union is empty.

    Also returns, where the boxes overlap, a margin past which no other float evaluation of the same IoU can
    be (e.g. the SDK's, whose union area is a shoelace sum over the union's vertices): both are off by a few
    ulps of the boxes' hull area at most, below 1e-10 * hull / union by orders of magnitude. The hull is
    bounded by (wa + wb) * (ha + hb), which costs fewer passes over the block; elsewhere the margin is
    meaningless (mask it with the overlap).
    """
    ax1, ay1, ax2, ay2 = (a[:, :, None, k] for k in range(4))
    bx1, by1, bx2, by2 = (b[:, None, :, k] for k in range(4))
    width = np.minimum(ax2, bx2)
    width -= np.maximum(ax1, bx1)
    np.maximum(width, 0.0, out=width)
    height = np.minimum(ay2, by2)
    height -= np.maximum(ay1, by1)
    np.maximum(height, 0.0, out=height)
    inter = width * height
    aw, ah, bw, bh = ax2 - ax1, ay2 - ay1, bx2 - bx1, by2 - by1
    union = aw * ah + bw * bh
    union -= inter
    overlap = (inter > 0) & (union > 0)
    with np.errstate(divide="ignore", invalid="ignore"):
        iou = np.divide(inter, union, out=np.zeros_like(inter), where=overlap)
        margin = (aw + bw) * (ah + bh)
        margin *= 1e-10
        margin /= union
    return iou, margin


def near_ties(score: np.ndarray, margin: np.ndarray, candidate: np.ndarray) -> np.ndarray:
    """Candidates of each (R, C) matrix of a (B, R, C) block whose score is within twice the matrix's largest
    margin of another candidate's: the pairs whose order another float evaluation might swap. (With one
    margin per matrix, two close scores are linked by a chain of close neighbours in sorted order.)"""
    n = score.shape[0]
    flat = np.where(candidate, score, -np.inf).reshape(n, -1)
    reach = 2.0 * np.where(candidate, margin, 0.0).reshape(n, -1).max(axis=1, keepdims=True)
    with np.errstate(invalid="ignore"):  # -inf - -inf between non-candidates: nan, never close
        some = (np.diff(np.sort(flat, axis=1), axis=1) <= reach).any(axis=1)
    out = np.zeros(flat.shape, dtype=bool)
    if some.any():  # the few matrices with a near tie: which cells
        sub, sub_reach = flat[some], reach[some]
        order = np.argsort(sub, axis=1)
        rows = np.arange(len(sub))[:, None]
        with np.errstate(invalid="ignore"):
            close = np.diff(sub[rows, order], axis=1) <= sub_reach
        tied = np.zeros(sub.shape, dtype=bool)
        tied[:, 1:] = close
        tied[:, :-1] |= close
        marked = np.empty_like(tied)
        marked[rows, order] = tied
        out[some] = marked
    return out.reshape(score.shape) & candidate


def iou_coco(d: np.ndarray, g: np.ndarray) -> np.ndarray:
    """IoU of (B, D, 4) against (B, G, 4) boxes as x, y, w, h, with pycocotools' arithmetic (maskApi.c bbIou,
    not crowd), so scores at a threshold's edge fall on the same side as in COCOeval."""
    d, g = d[:, :, None, :], g[:, None, :, :]
    w = np.minimum(d[..., 2] + d[..., 0], g[..., 2] + g[..., 0]) - np.maximum(d[..., 0], g[..., 0])
    h = np.minimum(d[..., 3] + d[..., 1], g[..., 3] + g[..., 1]) - np.maximum(d[..., 1], g[..., 1])
    inter = w * h
    union = d[..., 2] * d[..., 3] + g[..., 2] * g[..., 3] - inter
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where((w > 0) & (h > 0), inter / union, 0.0)


def greedy_pairs(score: np.ndarray, eligible: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Greedy one-to-one matching in every (R, C) matrix of a (B, R, C) block.

    The result of sorting all eligible pairs by descending score (stable, row-major on ties) and accepting a
    pair when neither end is taken yet. Small matrices: each step takes, in every matrix at once, the best
    free pair (argmax returns the first row-major maximum), then strikes out its row and column. Large ones
    (a crowded image) would need too many steps over mostly empty cells, so their few eligible pairs are
    sorted and scanned instead. Returns (block index, row, col, score) of the accepted pairs.
    """
    n, rows, cols = score.shape
    if rows * cols > DENSE_GREEDY_CELLS:
        return _greedy_sorted(score, eligible)
    work = np.where(eligible, score, -np.inf).reshape(n, rows * cols)
    live = np.arange(n)
    found: list[tuple[np.ndarray, ...]] = []
    for _ in range(min(rows, cols)):
        flat = work[live]
        best = flat.argmax(axis=1)
        value = flat[np.arange(len(live)), best]
        keep = value > -np.inf
        if not keep.any():
            break
        live, best, value = live[keep], best[keep], value[keep]
        row, col = best // cols, best % cols
        found.append((live, row, col, value))
        view = work.reshape(n, rows, cols)
        view[live, row, :] = -np.inf
        view[live, :, col] = -np.inf
    if not found:
        empty = np.zeros(0, dtype=np.int64)
        return empty, empty, empty, np.zeros(0)
    return tuple(np.concatenate(parts) for parts in zip(*found, strict=True))  # type: ignore[return-value]


def _greedy_sorted(score: np.ndarray, eligible: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    block, row, col = np.nonzero(eligible)
    value = score[block, row, col]
    order = np.lexsort((col, row, -value, block))
    n, rows, cols = score.shape
    row_taken, col_taken = bytearray(n * rows), bytearray(n * cols)
    accepted: list[int] = []
    for i, b, r, c in zip(order.tolist(), block[order].tolist(), row[order].tolist(), col[order].tolist(), strict=True):
        if not row_taken[b * rows + r] and not col_taken[b * cols + c]:
            row_taken[b * rows + r] = col_taken[b * cols + c] = 1
            accepted.append(i)
    chosen = np.array(accepted, dtype=np.int64)
    return block[chosen], row[chosen], col[chosen], value[chosen]
