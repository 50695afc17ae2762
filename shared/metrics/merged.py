"""Run-level metrics from shards: each shard reduces its rows to a partial, a last step merges the partials.

Why: a model run can hold a million held-out rows, too many for one process to keep every prediction in
memory. Each shard (about 10,000 rows) computes `detection_partial` / `classification_partial` from its own
rows alone, stores it (`Partial.write`), and `merge_detections` / `merge_classification` stream the stored
partials into exactly the dict `evaluate_detections` / `evaluate_classification` return for all the rows,
with the classes the chain uses: the sorted ground-truth labels of all rows.

What a shard cannot know: the run's classes (a label predicted here may have ground truth only in another
shard) and, so that a partial serves any threshold, the confidence threshold. Labels are therefore coded in
a partial-local table (`meta["labels"]`) of every label the shard saw, and everything that depends on the
threshold or on the class set is kept in a form the merge finishes:

Detection partial (`kind` "detection"; all arrays 1-D, see `partial_io` for the container):

- meta: `images`, `labels` (sorted), `gt_counts` per label, `label_starts` (where each label's records
  begin in the `c.*` columns), `id_width` (bytes of the widest encoded image id).
- `c.*`, one record per prediction, grouped by label, each group in the run's order (score descending,
  then image id, then position of the image in the shard, then box index; see `detection_map`):
  `c.score` <f8, `c.flags` <u2 (bit t: matched at IoU threshold t, t = 0..9, by COCO's per-image greedy
  matching; bit 10: among the 100 best of its image and class), `c.id` |S{id_width} (the image id, see
  below), `c.image` (position of the image in the shard), `c.box` (index of the box in its image).
- `i.*`, `g.*`, `p.*`, `r.*`, in image order, for the confusion matrix (threshold-dependent, and its
  cross-class matching depends on which predicted labels are classes): per image `i.n_gt`, `i.n_pred`,
  `i.n_pairs`; per ground truth `g.cls` (label code); per prediction `p.score`, `p.cls`, `p.gt50` (1 +
  the ground truth it matched at IoU 0.5 within its image, 0 for none); per (ground truth, prediction) pair
  of the same image with IoU >= 0.5, any labels, `r.gt`, `r.pred` (indices in the image) and `r.iou`
  (pycocotools' arithmetic, bit for bit what `_confusion_matrix` computes).
  Integer columns use the narrowest unsigned type that holds their values.

Image ids travel in the records so that equal scores from different shards can be ordered by image id
without a table of every image: an id is stored as its UTF-8 bytes (lone surrogates allowed) each plus one,
zero-padded to the partial's `id_width`. UTF-8 orders byte strings as Python orders the code points, no
UTF-8 byte exceeds 0xF4 so adding one never wraps, and since no stored byte is zero, padding sorts a prefix
before its extensions: comparing the padded keys as bytes is comparing the ids as `str`, for any length
(the width follows the longest id of the shard; 25 bytes for cuids).

Classification partial (`kind` "classification"; meta `multi_label`, `items` (kept items), `skipped`,
`first_bad`, `labels`, `gt_counts`, `label_starts`): per item the labels it mentions (scored or given),
`i.count`, `e.code`, `e.score`, `e.truth`; per label the mentioned scores sorted descending, `l.score`,
`l.truth` (an unmentioned label scores 0.0 and is not given: those are counted, not stored). Single-label,
an item's top label is settled in the shard when its best-scored label (ties: first name) has ground truth
in the shard (so it is a class whatever the other shards hold) and a score above 0 (so no unmentioned
class, at 0.0, can beat it): such items' (top score, correct) go to `t.score`, `t.correct`, sorted; the
others (`i.resolved` 0) are settled by the merge, which holds those few in memory.

Exactness: the per-image parts are the very functions the single pass runs (`flatten_boxes`, `coco_matches`,
`iou_coco`), on the same images, in the same within-image order. The merge then replays the single pass's
arithmetic on the same values in the same order: detections of a class are merged across shards in the
single pass's order (score, image id, shard, position, box); cumulative counts are integers; recall,
precision and F1 are the same element-wise expressions; COCO's interpolated precision at recall r is the
largest precision at any rank with recall >= r, a maximum, so it is carried chunk to chunk; curve points sit
at the last occurrence of a score (a group of equal scores may span chunks: its point waits for the next
score); the PR curve keeps the points `ThresholdCurve.report` keeps, which needs the number of distinct
scores, counted in a first pass; the step-wise AP of classification is `np.sum` over all points, replayed
with numpy's own pairwise summation (`_PairwiseSum`) as the points stream by; means over classes are taken
on the same small arrays. The confusion matrix's greedy cross-class matching takes pairs in `greedy_pairs`'
order (IoU descending, then ground truth, then prediction), by rounds of mutually-best pairs, which on a
strict order accept exactly what the sequential greedy accepts.

Memory: a merge holds one block of every run it merges (a run: one label of one partial), sized so that
all blocks together stay near `buffer_bytes` (at least 256 records a run), plus chunks of at most `PIECE`
records being worked on, plus per-class counters: nothing grows with the number of predictions. Each
class's records are read twice (pass 1 only their scores and flags). Limits: every partial is open at once
(seekable streams: files, `BytesIO`, GCS `blob.open("rb")`); an image's own records (its boxes, its pairs)
are read at once; a shard holds fewer than 2**32 images; single-label classification holds the (score,
correct) of the items not settled in their shard (none when every shard has ground truth of every class the
model scores highest and scores are above 0).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, BinaryIO

import numpy as np

from shared.metrics._curves import ThresholdCurve, class_figures, f1_score, kept_points, ratio
from shared.metrics.classification import NO_PREDICTION
from shared.metrics.detection_map import (
    BACKGROUND,
    IOU_THRESHOLDS,
    MAX_DETECTIONS,
    RECALL_THRESHOLDS,
    coco_matches,
    flatten_boxes,
    mean_present,
)
from shared.metrics.detections import ClassificationItem, ImageDetections
from shared.metrics.matching import iou_coco
from shared.metrics.partial_io import Partial, PartialReader

FORMAT_VERSION = 1
DETECTION, CLASSIFICATION = "detection", "classification"
MERGE_BUFFER_BYTES = 32 << 20  # leaf blocks of one merge, all runs together
MIN_BLOCK, MAX_BLOCK = 256, 1 << 16  # records per leaf block
PIECE = 1 << 12  # records a consumer works on at once (x 10 IoU thresholds x a few temporaries)
PAIR_CHUNK = 1 << 20  # (ground truth, prediction) pairs whose IoU a shard computes at once
CAPPED_BIT = 1 << len(IOU_THRESHOLDS)  # flags bit: within the 100 best of its image and class
_THRESHOLD_BITS = np.arange(len(IOU_THRESHOLDS), dtype=np.uint16)

Chunk = dict[str, np.ndarray]
Opener = Callable[[], BinaryIO]


class DetectionPartial(Partial):
    """One shard's detection rows, reduced to what the run-level metrics need (layout: module docstring)."""


class ClassificationPartial(Partial):
    """One shard's classification items, reduced to what the run-level metrics need."""


def load_partial(stream: BinaryIO) -> DetectionPartial | ClassificationPartial:
    """A stored partial back whole (tests, tools); merges read slices through `PartialReader` instead."""
    reader = PartialReader(stream)
    cls = DetectionPartial if reader.kind == DETECTION else ClassificationPartial
    arrays = {name: reader.read(name).copy() for name in reader.names}
    return cls(reader.kind, reader.meta, arrays)


# ---------------------------------------------------------------------------------------------- encodings


def _uint(values: np.ndarray) -> np.ndarray:
    """The narrowest unsigned type that holds `values` (>= 0): a partial is stored, so bytes count."""
    top = int(values.max()) if len(values) else 0
    for dtype in (np.uint8, np.uint16, np.uint32):
        if top <= np.iinfo(dtype).max:
            return values.astype(dtype)
    return values.astype(np.uint64)


def id_keys(ids: Sequence[str]) -> np.ndarray:
    """Fixed-width byte keys that sort as the ids do as `str` (module docstring): UTF-8 + 1, zero-padded."""
    raw = [image_id.encode("utf-8", "surrogatepass") for image_id in ids]
    lengths = np.fromiter(map(len, raw), np.int64, len(raw))
    width = max(1, int(lengths.max()) if len(raw) else 0)
    flat = np.frombuffer(b"".join(raw), dtype=np.uint8).astype(np.uint16) + 1
    if len(flat) and int(flat.max()) > 0xFF:  # cannot happen: UTF-8 has no byte above 0xF4
        raise ValueError("an id encodes to a byte above 0xFE")
    out = np.zeros((len(raw), width), dtype=np.uint8)
    rows = np.repeat(np.arange(len(raw)), lengths)
    out[rows, np.arange(len(flat)) - np.repeat(np.cumsum(lengths) - lengths, lengths)] = flat
    return out.view(f"S{width}").reshape(-1)


def _score_key(score: np.ndarray) -> np.ndarray:
    """uint64 keys, ascending as the scores descend; -0.0 and 0.0 share a key, as they tie in the sorts."""
    bits = (np.asarray(score, dtype=np.float64) + 0.0).view(np.uint64)  # + 0.0 turns -0.0 into 0.0
    ascending = np.where(bits >> np.uint64(63), ~bits, bits | np.uint64(1 << 63))
    return ~ascending


def _composite(
    score: np.ndarray, ids: np.ndarray, width: int, shard: int, image: np.ndarray, box: np.ndarray
) -> np.ndarray:
    """Byte keys of the run's order for detections: score descending, id, shard, image position, box."""
    n = len(score)
    out = np.zeros((n, 8 + width + 12), dtype=np.uint8)
    out[:, :8] = _score_key(score).astype(">u8").view(np.uint8).reshape(n, 8)
    id_width = ids.dtype.itemsize
    out[:, 8 : 8 + id_width] = np.ascontiguousarray(ids).view(np.uint8).reshape(n, id_width)
    out[:, 8 + width : 12 + width] = np.frombuffer(np.uint32(shard).astype(">u4").tobytes(), np.uint8)
    out[:, 12 + width : 16 + width] = image.astype(">u4").view(np.uint8).reshape(n, 4)
    out[:, 16 + width :] = box.astype(">u4").view(np.uint8).reshape(n, 4)
    return out.view(f"S{out.shape[1]}").reshape(-1)


def _groups(counts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(group of each member, start of each group) for members laid out group after group."""
    counts = counts.astype(np.int64)
    return np.repeat(np.arange(len(counts)), counts), np.cumsum(counts) - counts


# ---------------------------------------------------------------------------------------------- partials


def detection_partial(images: Sequence[ImageDetections]) -> DetectionPartial:
    """One shard's images reduced to per-image results (matching, ranks, IoU >= 0.5 pairs) and counts."""
    labels = sorted({lb for im in images for lb in (*im.gt_labels, *im.pred_labels)})
    code = {name: k for k, name in enumerate(labels)}
    n_images, n_labels = len(images), len(labels)
    if n_images >= 1 << 32 or max((len(im.pred_labels) for im in images), default=0) >= 1 << 32:
        raise ValueError("a shard holds fewer than 2**32 images, and an image fewer than 2**32 boxes")
    gt = flatten_boxes(images, code, predictions=False)
    pred = flatten_boxes(images, code, predictions=True)
    matches = coco_matches(gt, pred, max(n_labels, 1))
    _, gt_start = _groups(np.bincount(gt.image, minlength=n_images))
    pred_counts = np.bincount(pred.image, minlength=n_images)
    _, pred_start = _groups(pred_counts)
    box = np.arange(len(pred.cls)) - pred_start[pred.image]

    flags = (matches.hit.astype(np.uint16) << _THRESHOLD_BITS).sum(axis=1, dtype=np.uint16)
    flags |= np.where(matches.rank < MAX_DETECTIONS, CAPPED_BIT, 0).astype(np.uint16)
    image_rank = np.empty(n_images, dtype=np.int64)
    image_rank[sorted(range(n_images), key=lambda i: images[i].image_id)] = np.arange(n_images)
    order = np.lexsort((box, image_rank[pred.image], -pred.score, pred.cls))
    with_pred = np.flatnonzero(pred_counts)
    keys = id_keys([images[i].image_id for i in with_pred.tolist()])
    key_of = np.zeros(n_images, dtype=np.int64)
    key_of[with_pred] = np.arange(len(with_pred))

    pair_gt, pair_pred, pair_iou, n_pairs = _iou_pairs(gt, pred, gt_start, pred_start, pred_counts)
    gt50 = np.where(matches.gt_at_50 >= 0, matches.gt_at_50 - gt_start[pred.image] + 1, 0)
    arrays = {
        "c.score": pred.score[order],
        "c.flags": flags[order],
        "c.id": keys[key_of[pred.image[order]]],
        "c.image": _uint(pred.image[order]),
        "c.box": _uint(box[order]),
        "i.n_gt": _uint(np.bincount(gt.image, minlength=n_images)),
        "i.n_pred": _uint(pred_counts),
        "i.n_pairs": _uint(n_pairs),
        "g.cls": _uint(gt.cls),
        "p.score": pred.score,
        "p.cls": _uint(pred.cls),
        "p.gt50": _uint(gt50),
        "r.gt": _uint(pair_gt),
        "r.pred": _uint(pair_pred),
        "r.iou": pair_iou,
    }
    meta = {
        "version": FORMAT_VERSION,
        "images": n_images,
        "labels": labels,
        "gt_counts": np.bincount(gt.cls, minlength=n_labels).tolist(),
        "label_starts": np.searchsorted(pred.cls[order], np.arange(n_labels + 1)).tolist(),
        "id_width": keys.dtype.itemsize,
    }
    return DetectionPartial(DETECTION, meta, arrays)


def _iou_pairs(
    gt: Any, pred: Any, gt_start: np.ndarray, pred_start: np.ndarray, pred_counts: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Every (ground truth, prediction) pair of an image with IoU >= 0.5, any labels: the candidates of the
    confusion matrix's cross-class matching, with `_confusion_matrix`'s own IoU (ground truth first).
    Returns image-local indices, the IoUs, and the number of pairs per image; whole images at a time."""
    gt_counts = np.bincount(gt.image, minlength=len(pred_counts)).astype(np.int64)
    per_image = gt_counts * pred_counts
    total = np.cumsum(per_image)
    found: list[tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]] = []
    start = 0
    while start < len(per_image):
        before = int(total[start - 1]) if start else 0
        stop = max(start + 1, int(np.searchsorted(total, before + PAIR_CHUNK, side="right")))
        images = np.arange(start, stop)
        image, first = _groups(per_image[images])
        k = np.arange(len(image)) - first[image]
        image = images[image]
        local_gt, local_pred = k // pred_counts[image], k % pred_counts[image]
        g, p = gt_start[image] + local_gt, pred_start[image] + local_pred
        iou = iou_coco(gt.xywh[g][:, None, :], pred.xywh[p][:, None, :])[:, 0, 0]
        keep = iou >= 0.5
        found.append((local_gt[keep], local_pred[keep], iou[keep], image[keep]))
        start = stop
    ints, floats = np.zeros(0, dtype=np.int64), np.zeros(0)
    pair_gt = np.concatenate([ints, *(f[0] for f in found)])
    pair_pred = np.concatenate([ints, *(f[1] for f in found)])
    pair_iou = np.concatenate([floats, *(f[2] for f in found)])
    image = np.concatenate([ints, *(f[3] for f in found)])
    return pair_gt, pair_pred, pair_iou, np.bincount(image, minlength=len(per_image))


def classification_partial(items: Sequence[ClassificationItem], *, multi_label: bool) -> ClassificationPartial:
    """One shard's items: the labels each mentions with their scores, per-label sorted scores, counts."""
    first_bad: str | None = None
    skipped = 0
    if multi_label:
        kept = list(items)
    else:
        kept = []
        for item in items:
            if len(item.gt_labels) > 1 and first_bad is None:
                first_bad = item.image_id
            elif len(item.gt_labels) == 1:
                kept.append(item)
            elif not item.gt_labels:
                skipped += 1
    labels = sorted({lb for item in kept for lb in (*item.gt_labels, *item.scores)})
    code = {name: k for k, name in enumerate(labels)}
    counts: list[int] = []
    codes: list[int] = []
    scores: list[float] = []
    truths: list[bool] = []
    for item in kept:
        mentioned = sorted(code[lb] for lb in {*item.gt_labels, *item.scores})
        counts.append(len(mentioned))
        codes.extend(mentioned)
        scores.extend(float(item.scores.get(labels[c], 0.0)) for c in mentioned)
        truths.extend(labels[c] in item.gt_labels for c in mentioned)
    count = np.array(counts, dtype=np.int64)
    e_code = np.array(codes, dtype=np.int64)
    e_score = np.array(scores, dtype=np.float64)
    e_truth = np.array(truths, dtype=np.bool_)
    gt_counts = np.bincount(e_code[e_truth], minlength=len(labels))
    by_label = np.lexsort((-e_score, e_code))
    arrays = {
        "i.count": _uint(count),
        "e.code": _uint(e_code),
        "e.score": e_score,
        "e.truth": e_truth.astype(np.uint8),
        "l.score": e_score[by_label],
        "l.truth": e_truth[by_label].astype(np.uint8),
    }
    if not multi_label:
        owner, _ = _groups(count)
        best = np.lexsort((e_code, -e_score, owner))  # per item: score descending, then name
        first = np.ones(len(best), dtype=bool)
        first[1:] = owner[best][1:] != owner[best][:-1]
        top = best[first]  # one entry per item (every kept item mentions its ground truth)
        gt_code = e_code[e_truth]  # one per item, in item order
        resolved = (gt_counts[e_code[top]] > 0) & (e_score[top] > 0)
        correct = e_code[top] == gt_code
        settled = np.flatnonzero(resolved)
        by_score = settled[np.argsort(-e_score[top][settled], kind="stable")]
        arrays["i.resolved"] = resolved.astype(np.uint8)
        arrays["t.score"] = e_score[top][by_score]
        arrays["t.correct"] = correct[by_score].astype(np.uint8)
    meta = {
        "version": FORMAT_VERSION,
        "multi_label": multi_label,
        "items": len(kept),
        "skipped": skipped,
        "first_bad": first_bad,
        "labels": labels,
        "gt_counts": gt_counts.tolist(),
        "label_starts": np.searchsorted(e_code[by_label], np.arange(len(labels) + 1)).tolist(),
    }
    return ClassificationPartial(CLASSIFICATION, meta, arrays)


# ---------------------------------------------------------------------------------------------- merging


def _block(budget: int, runs: int, record_bytes: int) -> int:
    return int(np.clip(budget // max(1, runs * record_bytes), MIN_BLOCK, MAX_BLOCK))


def _leaf(load: Callable[[int, int], Chunk], start: int, stop: int, block: int) -> Iterator[Chunk]:
    """A run read one block at a time; `load(a, b)` returns records [a, b) with their sort keys."""
    for a in range(start, stop, block):
        yield load(a, min(a + block, stop))


def _take(chunk: Chunk, index: np.ndarray | slice) -> Chunk:
    return {name: column[index] for name, column in chunk.items()}


def _next(source: Iterator[Chunk]) -> Chunk | None:
    for chunk in source:
        if len(chunk["key"]):
            return chunk
    return None


class _Head:
    """A run's buffered block and how much of it the merge has emitted."""

    __slots__ = ("chunk", "keys", "last", "pos", "source")

    def __init__(self, chunk: Chunk, source: Iterator[Chunk]) -> None:
        self.chunk, self.keys, self.last, self.pos, self.source = chunk, chunk["key"], chunk["key"][-1], 0, source


def _merge(sources: Sequence[Iterator[Chunk]]) -> Iterator[Chunk]:
    """k-way merge of sorted runs by their "key" column, block by block: each round emits every buffered
    record up to the smallest last key among the buffers (nothing unread can come before it), sorted, in
    pieces of at most PIECE; that run's buffer is then used up and it reads its next block. (Keys are
    uint64, or fixed-width bytes compared as bytes: a numpy bytes scalar drops trailing NULs, which
    changes no order between keys of one width.)"""
    heads = []
    for source in sources:
        chunk = _next(source)
        if chunk is not None:
            heads.append(_Head(chunk, source))
    while heads:
        bound = min(head.last for head in heads)
        taken: list[tuple[Chunk, int, int]] = []
        live: list[_Head] = []
        for head in heads:
            cut = int(head.keys.searchsorted(bound, side="right"))
            if cut > head.pos:
                taken.append((head.chunk, head.pos, cut))
                head.pos = cut
            if cut < len(head.keys):
                live.append(head)
                continue
            chunk = _next(head.source)
            if chunk is not None:
                live.append(_Head(chunk, head.source))
        heads = live
        if len(taken) == 1:
            chunk, a, b = taken[0]
            merged = _take(chunk, slice(a, b))
        else:
            merged = {name: np.concatenate([c[name][a:b] for c, a, b in taken]) for name in taken[0][0]}
            merged = _take(merged, np.argsort(merged["key"], kind="stable"))
        for a in range(0, len(merged["key"]), PIECE):
            yield _take(merged, slice(a, a + PIECE))


def _counting(source: Iterator[Chunk], counts: np.ndarray, k: int) -> Iterator[Chunk]:
    """Pass a class's score-ordered chunks through, counting its distinct scores into counts[k]."""
    last: float | None = None
    for chunk in source:
        score = chunk["score"]
        counts[k] += int(np.count_nonzero(score[1:] != score[:-1])) + int(last is None or score[0] != last)
        last = score[-1]
        yield chunk


class _PairwiseSum:
    """`np.sum` of a float64 array of known length, fed in order piece by piece, bit for bit: numpy sums
    1-D float arrays pairwise (halves split at multiples of 8, down to blocks of at most 128 summed with 8
    accumulators), so a running total would round differently. Holds one block and a log-deep stack."""

    def __init__(self, n: int) -> None:
        self._stack: list[list[Any]] = []  # [size, left size, left sum or None]
        self._pieces: list[np.ndarray] = []
        self._need = self._got = 0
        self._total: float | None = 0.0 if n == 0 else None
        if n:
            self._descend(n)

    def _descend(self, n: int) -> None:
        while n > 128:
            half = n // 2
            half -= half % 8
            self._stack.append([n, half, None])
            n = half
        self._need, self._got, self._pieces = n, 0, []

    def add(self, values: np.ndarray) -> None:
        at = 0
        while at < len(values):
            if self._total is not None:
                raise ValueError("more values than announced")
            take = min(self._need - self._got, len(values) - at)
            self._pieces.append(values[at : at + take])
            self._got += take
            at += take
            if self._got == self._need:
                self._up(_block_sum(np.concatenate(self._pieces)))

    def _up(self, value: float) -> None:
        while self._stack:
            frame = self._stack[-1]
            if frame[2] is None:
                frame[2] = value
                self._descend(frame[0] - frame[1])
                return
            value = frame[2] + value
            self._stack.pop()
        self._total = value

    def total(self) -> float:
        if self._total is None:
            raise ValueError("fewer values than announced")
        return self._total


def _block_sum(a: np.ndarray) -> float:
    """numpy's pairwise_sum on at most 128 doubles."""
    n = len(a)
    if n < 8:
        total = -0.0
        for value in a.tolist():
            total += value
        return total
    r = a[:8].copy()
    end = n - n % 8
    for row in a[8:end].reshape(-1, 8):
        r += row
        # (numpy adds the eight accumulators lane by lane, as this does)
    s = r.tolist()
    total = ((s[0] + s[1]) + (s[2] + s[3])) + ((s[4] + s[5]) + (s[6] + s[7]))
    for value in a[end:].tolist():
        total += value
    return total


@dataclass(frozen=True)
class _ThinnedCurve(ThresholdCurve):
    """The kept points of a curve whose best F1 was found over all of its points."""

    best: tuple[float, float | None] = (0.0, None)

    def best_f1(self) -> tuple[float, float | None]:
        return self.best


class _Curve:
    """`ThresholdCurve` over records arriving in descending score order: the best F1, the points `report`
    keeps (given their number), and optionally the step-wise AP; a point is final once a lower score
    follows (equal scores may span chunks)."""

    def __init__(self, n_gt: int, n_points: int | None = None, *, ap: bool = False) -> None:
        self.n_gt = n_gt
        self._tp = self._n = 0
        self._pending: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None
        self._ordinal = 0
        self._best_value = -np.inf
        self.best: tuple[float, float | None] = (0.0, None)
        self._keep = None if n_points is None else kept_points(n_points)
        self._kept: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
        self._sum = _PairwiseSum(n_points) if ap and n_gt and n_points is not None else None
        self._last_recall = np.zeros(1)

    def add(self, score: np.ndarray, hit: np.ndarray, weight: np.ndarray | None = None) -> None:
        m = len(score)
        if not m:
            return
        tp = self._tp + np.cumsum(hit, dtype=np.int64)
        n = self._n + (np.arange(1, m + 1) if weight is None else np.cumsum(weight, dtype=np.int64))
        self._tp, self._n = int(tp[-1]), int(n[-1])
        if self._pending is not None and self._pending[0][0] != score[0]:
            self._final(*self._pending)
        last = np.flatnonzero(score[1:] != score[:-1])
        if len(last):
            self._final(score[last], tp[last], n[last])
        self._pending = (score[-1:], tp[-1:], n[-1:])

    def finish(self) -> _Curve:
        if self._pending is not None:
            self._final(*self._pending)
            self._pending = None
        return self

    def _final(self, thresholds: np.ndarray, tp: np.ndarray, n: np.ndarray) -> None:
        f1 = 2.0 * tp / np.maximum(n + self.n_gt, 1)  # ThresholdCurve.f1
        best = int(np.argmax(f1))
        if f1[best] > self._best_value:
            self._best_value = f1[best]
            self.best = (float(f1[best]), float(thresholds[best]))
        if self._keep is not None:
            ordinal = self._ordinal + np.arange(len(tp))
            chosen = np.isin(ordinal, self._keep)
            if chosen.any():
                self._kept.append((thresholds[chosen], tp[chosen], n[chosen]))
        if self._sum is not None:
            recall = tp / self.n_gt  # ThresholdCurve.average_precision, element by element
            gained = np.diff(np.concatenate([self._last_recall, recall]))
            self._sum.add(gained * (tp / np.maximum(n, 1)))
            self._last_recall = recall[-1:]
        self._ordinal += len(tp)

    def curve(self) -> _ThinnedCurve:
        thresholds, tp, n = ([np.zeros(0)], [np.zeros(0, np.int64)], [np.zeros(0, np.int64)])
        for kept in self._kept:
            thresholds.append(kept[0])
            tp.append(kept[1])
            n.append(kept[2])
        return _ThinnedCurve(
            thresholds=np.concatenate(thresholds),
            tp=np.concatenate(tp),
            n_pred=np.concatenate(n),
            n_gt=self.n_gt,
            best=self.best,
        )

    def average_precision(self) -> float | None:
        return None if self._sum is None else float(self._sum.total())


class _CocoPrecision:
    """COCOeval.accumulate for one class over hits arriving in global order: (T, R) precision at the recall
    thresholds. At recall r it is the largest precision at any rank with recall >= r (the suffix maximum
    at the first such rank), so each chunk's maxima fold into a running maximum.

    Recall tp / n_gt (as the single pass divides) grows with tp, so "recall >= r" is "tp >= need[r]", the
    least count whose recall reaches r: the first such rank of every threshold at once is one integer
    search over the cumulative counts, rows offset apart."""

    _ROW = 1 << 40  # above any count: rows of the (T, m) counts stay apart, and sorted, once offset

    def __init__(self, n_gt: int) -> None:
        self.n_gt = n_gt
        self._tp = np.zeros((len(IOU_THRESHOLDS), 1), dtype=np.int64)
        self._fp = np.zeros((len(IOU_THRESHOLDS), 1), dtype=np.int64)
        self.precision = np.zeros((len(IOU_THRESHOLDS), len(RECALL_THRESHOLDS)))
        if n_gt:
            near = np.ceil(RECALL_THRESHOLDS * n_gt).astype(np.int64)[:, None] + np.arange(-2, 3)
            near = np.clip(near, 0, n_gt)
            reaches = near.astype(float) / n_gt >= RECALL_THRESHOLDS[:, None]
            self._need = np.where(reaches, near, n_gt).min(axis=1)  # n_gt / n_gt = 1.0 reaches every r
            rows = np.arange(len(IOU_THRESHOLDS), dtype=np.int64)[:, None] * self._ROW
            self._targets = (self._need[None, :] + rows).ravel()

    def add(self, hits: np.ndarray) -> None:
        n_thresholds, m = hits.shape
        if not m:
            return
        tp = self._tp + np.cumsum(hits, axis=1)
        fp = self._fp + np.cumsum(~hits, axis=1)
        self._tp, self._fp = tp[:, -1:], fp[:, -1:]
        tp_sum, fp_sum = tp.astype(float), fp.astype(float)
        precision = tp_sum / (fp_sum + tp_sum + np.spacing(1))  # detection_map._interpolated_precision's
        precision = np.maximum.accumulate(precision[:, ::-1], axis=1)[:, ::-1]
        rows = np.arange(n_thresholds, dtype=np.int64)[:, None]
        found = np.searchsorted((tp + rows * self._ROW).ravel(), self._targets).reshape(n_thresholds, -1)
        index = found - rows * m  # first rank of the chunk with recall >= r, or m
        inside = index < m
        at = precision.ravel()[(rows * m + index)[inside]]
        self.precision[inside] = np.maximum(self.precision[inside], at)


class _Shards:
    """The partials of a merge, opened once each, their headers read, checked against each other."""

    def __init__(self, stack: contextlib.ExitStack, open_partials: Sequence[Opener], kind: str) -> None:
        self.readers = [PartialReader(stack.enter_context(opener())) for opener in open_partials]
        for reader in self.readers:
            if reader.kind != kind:
                raise ValueError(f"expected a {kind} partial, got {reader.kind}")
            if reader.meta.get("version") != FORMAT_VERSION:
                raise ValueError(f"partial format version {reader.meta.get('version')}, expected {FORMAT_VERSION}")
        self.classes = sorted(
            {lb for r in self.readers for lb, n in zip(r.meta["labels"], r.meta["gt_counts"], strict=True) if n}
        )
        index = {name: k for k, name in enumerate(self.classes)}
        # per shard: its label codes -> class index, or -1 for a label that is no class of the run
        self.class_of = [np.array([index.get(lb, -1) for lb in r.meta["labels"]], dtype=np.int64) for r in self.readers]
        self.gt_counts = np.zeros(len(self.classes), dtype=np.int64)
        for r, class_of in zip(self.readers, self.class_of, strict=True):
            known = class_of >= 0
            np.add.at(self.gt_counts, class_of[known], np.array(r.meta["gt_counts"], dtype=np.int64)[known])

    def runs(self, k: int) -> list[tuple[int, int, int]]:
        """(shard, start, stop) of class k's records in each partial that has some."""
        out = []
        for s, (r, class_of) in enumerate(zip(self.readers, self.class_of, strict=True)):
            starts = r.meta["label_starts"]
            for code in np.flatnonzero(class_of == k).tolist():
                if starts[code + 1] > starts[code]:
                    out.append((s, starts[code], starts[code + 1]))
        return out


def merge_detections(
    open_partials: Sequence[Opener], confidence_threshold: float, *, buffer_bytes: int = MERGE_BUFFER_BYTES
) -> dict:
    """`evaluate_detections` of all the shards' images together, with the chain's classes (the sorted
    ground-truth labels), from their partials; `open_partials[i]()` opens partial i (seekable binary)."""
    with contextlib.ExitStack() as stack:
        shards = _Shards(stack, open_partials, DETECTION)
        return _merge_detections(shards, float(confidence_threshold), buffer_bytes)


def _merge_detections(shards: _Shards, threshold: float, budget: int) -> dict:
    classes, readers = shards.classes, shards.readers
    n_classes = len(classes)
    runs = [shards.runs(k) for k in range(n_classes)]

    # Pass 1, by score alone: the best F1 over all classes, and each class's number of distinct scores.
    distinct = np.zeros(n_classes, dtype=np.int64)
    block = _block(budget, sum(map(len, runs)), 40)

    def by_score(reader: PartialReader) -> Callable[[int, int], Chunk]:
        def load(a: int, b: int) -> Chunk:
            score = reader.read("c.score", a, b)
            return {"key": _score_key(score), "score": score, "hit": (reader.read("c.flags", a, b) & 1).astype(bool)}

        return load

    per_class = [
        _counting(_merge([_leaf(by_score(readers[s]), a, b, block) for s, a, b in runs[k]]), distinct, k)
        for k in range(n_classes)
    ]
    overall = _Curve(int(shards.gt_counts.sum()))
    for chunk in _merge(per_class):
        overall.add(chunk["score"], chunk["hit"])
    best_f1, best_threshold = overall.finish().best

    # Pass 2, class by class in the run's order: COCO precision, the figures at the threshold, the curve.
    width = max([r.meta["id_width"] for r in readers], default=1)
    n_thresholds, n_recalls = len(IOU_THRESHOLDS), len(RECALL_THRESHOLDS)
    precision = -np.ones((n_thresholds, n_recalls, n_classes))
    figures: dict[str, dict] = {}
    tp_total = pred_total = 0
    for k, name in enumerate(classes):
        n_gt = int(shards.gt_counts[k])
        block = _block(budget, len(runs[k]), 2 * width + 72)
        coco = _CocoPrecision(n_gt)
        curve = _Curve(n_gt, int(distinct[k]))
        tp = n_pred = 0
        leaves = [_leaf(_in_order(readers[s], s, width), a, b, block) for s, a, b in runs[k]]
        for chunk in _merge(leaves):
            score, flags = chunk["score"], chunk["flags"]
            hit50 = (flags & 1).astype(bool)
            above = score >= threshold
            tp += int(np.count_nonzero(hit50 & above))
            n_pred += int(np.count_nonzero(above))
            curve.add(score, hit50)
            if n_gt:
                capped = flags[(flags & CAPPED_BIT) != 0]
                coco.add(((capped[None, :] >> _THRESHOLD_BITS[:, None]) & 1).astype(bool))
        if n_gt:
            precision[:, :, k] = coco.precision
        tp_total, pred_total = tp_total + tp, pred_total + n_pred
        figures[name] = {
            "ap50": float(np.mean(precision[0, :, k])) if n_gt else None,
            "ap50_95": float(np.mean(precision[:, :, k])) if n_gt else None,
            **class_figures(tp, n_pred, n_gt, curve.finish().curve()),
        }

    matrix = np.zeros((n_classes + 1, n_classes + 1), dtype=np.int64)
    for reader, class_of in zip(readers, shards.class_of, strict=True):
        _confusion_counts(reader, class_of, threshold, matrix, budget)
    n_gt_total = int(shards.gt_counts.sum())
    return {
        "map50": mean_present(precision[0]),
        "map50_95": mean_present(precision),
        "precision": ratio(tp_total, pred_total),
        "recall": ratio(tp_total, n_gt_total),
        "f1": f1_score(tp_total, pred_total, n_gt_total),
        "confidence_threshold": threshold,
        "best_f1": best_f1,
        "best_f1_threshold": best_threshold,
        "per_class": figures,
        "confusion_matrix": {"labels": [*classes, BACKGROUND], "matrix": matrix.tolist()},
        "images": sum(r.meta["images"] for r in readers),
    }


def _in_order(reader: PartialReader, shard: int, width: int) -> Callable[[int, int], Chunk]:
    def load(a: int, b: int) -> Chunk:
        score = reader.read("c.score", a, b)
        key = _composite(
            score, reader.read("c.id", a, b), width, shard, reader.read("c.image", a, b), reader.read("c.box", a, b)
        )
        return {"key": key, "score": score, "flags": reader.read("c.flags", a, b)}

    return load


def _confusion_counts(
    reader: PartialReader, class_of: np.ndarray, threshold: float, matrix: np.ndarray, budget: int
) -> None:
    """Add one shard's confusion matrix, a block of whole images at a time (`_confusion_matrix`'s steps)."""
    n_images = reader.length("i.n_gt")
    n_cells = matrix.shape[0]
    background = n_cells - 1
    records = max(MIN_BLOCK, budget // 64)
    at = g_at = p_at = r_at = 0
    while at < n_images:
        stop = min(n_images, at + records)
        n_gt = reader.read("i.n_gt", at, stop).astype(np.int64)
        n_pred = reader.read("i.n_pred", at, stop).astype(np.int64)
        n_pairs = reader.read("i.n_pairs", at, stop).astype(np.int64)
        stop = at + max(1, int(np.searchsorted(np.cumsum(n_gt + n_pred + n_pairs), records, side="right")))
        n = stop - at
        n_gt, n_pred, n_pairs = n_gt[:n], n_pred[:n], n_pairs[:n]
        g_count, p_count, r_count = int(n_gt.sum()), int(n_pred.sum()), int(n_pairs.sum())
        gt_cls = class_of[reader.read("g.cls", g_at, g_at + g_count).astype(np.int64)]
        score = reader.read("p.score", p_at, p_at + p_count)
        pred_cls = class_of[reader.read("p.cls", p_at, p_at + p_count).astype(np.int64)]
        gt50 = reader.read("p.gt50", p_at, p_at + p_count).astype(np.int64) - 1
        pair_image, _ = _groups(n_pairs)
        _, gt_start = _groups(n_gt)
        pred_image, pred_start = _groups(n_pred)
        pair_gt = gt_start[pair_image] + reader.read("r.gt", r_at, r_at + r_count).astype(np.int64)
        pair_pred = pred_start[pair_image] + reader.read("r.pred", r_at, r_at + r_count).astype(np.int64)
        pair_iou = reader.read("r.iou", r_at, r_at + r_count)
        at, g_at, p_at, r_at = stop, g_at + g_count, p_at + p_count, r_at + r_count

        cells = np.zeros(n_cells * n_cells, dtype=np.int64)
        above = (pred_cls >= 0) & (score >= threshold)
        same = (gt50 >= 0) & above
        cells += np.bincount(pred_cls[same] * (n_cells + 1), minlength=len(cells))
        gt_free = gt_cls >= 0
        gt_free[gt_start[pred_image[same]] + gt50[same]] = False
        pred_free = above & ~same
        open_ = gt_free[pair_gt] & pred_free[pair_pred]
        won = _greedy(pair_gt[open_], pair_pred[open_], pair_iou[open_])
        g_hit, p_hit = pair_gt[open_][won], pair_pred[open_][won]
        cells += np.bincount(gt_cls[g_hit] * n_cells + pred_cls[p_hit], minlength=len(cells))
        gt_free[g_hit] = False
        pred_free[p_hit] = False
        cells += np.bincount(gt_cls[gt_free] * n_cells + background, minlength=len(cells))
        cells += np.bincount(background * n_cells + pred_cls[pred_free], minlength=len(cells))
        matrix += cells.reshape(n_cells, n_cells)


def _greedy(gt: np.ndarray, pred: np.ndarray, iou: np.ndarray) -> np.ndarray:
    """Which pairs greedy one-to-one matching accepts, taking pairs by IoU descending, then ground truth,
    then prediction (`greedy_pairs`' order). Each round accepts every pair that comes first among the
    live pairs of both its ends: on a strict order such a pair is accepted by the sequential greedy too,
    and striking its ends leaves the same problem; every round accepts at least the first live pair."""
    accepted = np.zeros(len(gt), dtype=bool)
    order = np.lexsort((pred, gt, -iou))
    live = order
    while len(live):
        first_gt = np.zeros(len(live), dtype=bool)
        first_gt[np.unique(gt[live], return_index=True)[1]] = True
        first_pred = np.zeros(len(live), dtype=bool)
        first_pred[np.unique(pred[live], return_index=True)[1]] = True
        won = live[first_gt & first_pred]
        accepted[won] = True
        live = live[~(np.isin(gt[live], gt[won]) | np.isin(pred[live], pred[won]))]
    return accepted


# ---------------------------------------------------------------------------------------------- classification


def merge_classification(
    open_partials: Sequence[Opener],
    *,
    multi_label: bool,
    confidence_threshold: float,
    buffer_bytes: int = MERGE_BUFFER_BYTES,
) -> dict:
    """`evaluate_classification` of all the shards' items together, with the chain's classes (the sorted
    ground-truth labels), from their partials."""
    with contextlib.ExitStack() as stack:
        shards = _Shards(stack, open_partials, CLASSIFICATION)
        for reader in shards.readers:
            if reader.meta["multi_label"] != multi_label:
                raise ValueError(f"partial made with multi_label={reader.meta['multi_label']}, merging {multi_label}")
        if not multi_label:
            bad = next((r.meta["first_bad"] for r in shards.readers if r.meta["first_bad"] is not None), None)
            if bad is not None:
                raise ValueError(f"{bad}: single-label item has more than one ground-truth label")
        return _merge_classification(shards, multi_label, float(confidence_threshold), buffer_bytes)


def _merge_classification(shards: _Shards, multi_label: bool, threshold: float, budget: int) -> dict:
    classes, readers = shards.classes, shards.readers
    n_classes = len(classes)
    items = tuple(r.meta["items"] for r in readers)
    n_items = sum(items)

    # Pass 1, item by item: counts at the threshold, exact match or accuracy, the confusion matrix.
    tp_c = np.zeros(n_classes, dtype=np.int64)
    pred_c = np.zeros(n_classes, dtype=np.int64)
    exact = 0
    matrix = np.zeros((n_classes + 1, n_classes + 1), dtype=np.int64)
    unsettled: list[tuple[np.ndarray, np.ndarray]] = []
    by_name = np.argsort(np.array(classes, dtype=object), kind="stable")
    for reader, class_of in zip(readers, shards.class_of, strict=True):
        for scores, truth, resolved in _item_blocks(reader, class_of, n_classes, budget):
            if multi_label:
                said = scores >= threshold
                tp_c += (said & truth).sum(axis=0)
                pred_c += said.sum(axis=0)
                exact += int(np.count_nonzero(np.all(said == truth, axis=1)))
                continue
            rows = np.arange(len(scores))
            top = by_name[np.argmax(scores[:, by_name], axis=1)] if n_classes else np.zeros(len(scores), int)
            top_score = scores[rows, top] if n_classes else np.zeros(len(scores))
            predicted = np.where(top_score >= threshold, top, -1)
            gt = np.argmax(truth, axis=1)
            correct = predicted == gt
            tp_c += np.bincount(gt[correct], minlength=n_classes)
            pred_c += np.bincount(predicted[predicted >= 0], minlength=n_classes)
            exact += int(np.count_nonzero(correct))
            np.add.at(matrix, (gt, np.where(predicted >= 0, predicted, n_classes)), 1)
            if resolved is not None and not resolved.all():
                unsettled.append((top_score[~resolved], (top == gt)[~resolved]))

    # Pass 2, by score: each class's distinct scores, and (multi-label) the best F1 over all (item, class).
    runs = [shards.runs(k) for k in range(n_classes)]
    implicit = [n_items - sum(b - a for _, a, b in runs[k]) for k in range(n_classes)]  # unmentioned: 0.0, not given
    distinct = np.zeros(n_classes, dtype=np.int64)
    block = _block(budget, sum(map(len, runs)) + n_classes, 40)

    def class_sources(k: int, size: int) -> list[Iterator[Chunk]]:
        sources = [_leaf(_label_scores(readers[s]), a, b, size) for s, a, b in runs[k]]
        if implicit[k]:
            sources.append(iter([_zeros(implicit[k])]))
        return sources

    counted = [_counting(_merge(class_sources(k, block)), distinct, k) for k in range(n_classes)]
    if multi_label:
        overall = _Curve(int(shards.gt_counts.sum()))
        for chunk in _merge(counted):
            overall.add(chunk["score"], chunk["hit"], chunk["weight"])
    else:
        for source in counted:
            for _ in source:
                pass
        overall = _Curve(n_items)  # ThresholdCurve.of(top_score, top == gt, len(gt))
        tops = [_leaf(_top_scores(r), 0, r.length("t.score"), _block(budget, len(readers) + 1, 40)) for r in readers]
        if unsettled:
            score = np.concatenate([u[0] for u in unsettled])
            hit = np.concatenate([u[1] for u in unsettled])
            order = np.argsort(-score, kind="stable")
            tops.append(iter([{"key": _score_key(score[order]), "score": score[order], "hit": hit[order]}]))
        for chunk in _merge(tops):
            overall.add(chunk["score"], chunk["hit"])
    best_f1, best_threshold = overall.finish().best

    # Pass 3, class by class: its curve, best F1 and step-wise AP.
    per_class: dict[str, dict] = {}
    aps: dict[str, float | None] = {}
    f1s: list[float] = []
    for k, name in enumerate(classes):
        tp, n_pred, n_gt = int(tp_c[k]), int(pred_c[k]), int(shards.gt_counts[k])
        curve = _Curve(n_gt, int(distinct[k]), ap=True)
        for chunk in _merge(class_sources(k, _block(budget, len(runs[k]) + 1, 40))):
            curve.add(chunk["score"], chunk["hit"], chunk["weight"])
        ap = curve.finish().average_precision()
        per_class[name], aps[name] = {"ap": ap, **class_figures(tp, n_pred, n_gt, curve.curve())}, ap
        if n_gt or n_pred:
            f1s.append(per_class[name]["f1"])

    tp, n_pred, n_gt = int(tp_c.sum()), int(pred_c.sum()), int(shards.gt_counts.sum())
    defined = [ap for ap in aps.values() if ap is not None]
    result: dict = {}
    if multi_label:
        result["exact_match"] = float(np.float64(exact) / n_items) if n_items else 0.0
    else:
        result["accuracy"] = float(np.float64(exact) / n_items) if n_items else 0.0
    result.update(
        {
            "precision": ratio(tp, n_pred),
            "recall": ratio(tp, n_gt),
            "f1": f1_score(tp, n_pred, n_gt),
            "macro_f1": float(np.mean(f1s)) if f1s else None,
            "average_precision": {"mean": float(np.mean(defined)) if defined else None, "per_class": aps},
            "confidence_threshold": threshold,
            "best_f1": best_f1,
            "best_f1_threshold": best_threshold,
            "per_class": per_class,
        }
    )
    if not multi_label:
        result["confusion_matrix"] = {"labels": [*classes, NO_PREDICTION], "matrix": matrix.tolist()}
    result["images"] = n_items
    result["skipped"] = sum(r.meta["skipped"] for r in readers)
    return result


def _zeros(count: int) -> Chunk:
    """`count` (item, class) pairs the items never mention: score 0.0, not given; one weighted record."""
    return {
        "key": _score_key(np.zeros(1)),
        "score": np.zeros(1),
        "hit": np.zeros(1, dtype=bool),
        "weight": np.array([count], dtype=np.int64),
    }


def _label_scores(reader: PartialReader) -> Callable[[int, int], Chunk]:
    def load(a: int, b: int) -> Chunk:
        score = reader.read("l.score", a, b)
        return {
            "key": _score_key(score),
            "score": score,
            "hit": reader.read("l.truth", a, b).astype(bool),
            "weight": np.ones(b - a, dtype=np.int64),
        }

    return load


def _top_scores(reader: PartialReader) -> Callable[[int, int], Chunk]:
    def load(a: int, b: int) -> Chunk:
        score = reader.read("t.score", a, b)
        return {"key": _score_key(score), "score": score, "hit": reader.read("t.correct", a, b).astype(bool)}

    return load


def _item_blocks(
    reader: PartialReader, class_of: np.ndarray, n_classes: int, budget: int
) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray | None]]:
    """Dense (items, classes) scores and ground truth, as `classification._matrices` builds them, a block
    of items at a time; with, single-label, which items their shard settled."""
    n = reader.length("i.count")
    size = max(1, min(MAX_BLOCK, budget // (16 * max(1, n_classes) + 64)))
    at = entry = 0
    while at < n:
        stop = min(n, at + size)
        count = reader.read("i.count", at, stop).astype(np.int64)
        total = int(count.sum())
        codes = class_of[reader.read("e.code", entry, entry + total).astype(np.int64)]
        score = reader.read("e.score", entry, entry + total)
        truth = reader.read("e.truth", entry, entry + total).astype(bool)
        row, _ = _groups(count)
        known = codes >= 0
        scores = np.zeros((stop - at, n_classes))
        truths = np.zeros((stop - at, n_classes), dtype=bool)
        scores[row[known], codes[known]] = score[known]
        truths[row[known], codes[known]] = truth[known]
        resolved = reader.read("i.resolved", at, stop).astype(bool) if "i.resolved" in reader else None
        yield scores, truths, resolved
        at, entry = stop, entry + total
