"""Run-level metrics merged from shard partials: exactly the single pass's, for any cut into shards.

Most tests shrink the merge's blocks (`tiny_blocks`) so that every run spans many blocks, equal scores
straddle block and chunk boundaries, and the k-way merge takes many rounds, as it does on a real run.
"""

from __future__ import annotations

import io
import itertools
import tracemalloc
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import BinaryIO

import numpy as np
import pytest

from shared.metrics import merged
from shared.metrics.classification import evaluate_classification
from shared.metrics.detection_map import evaluate_detections
from shared.metrics.detections import ClassificationItem, ImageDetections
from shared.metrics.matching import greedy_pairs
from shared.metrics.merged import (
    classification_partial,
    detection_partial,
    id_keys,
    load_partial,
    merge_classification,
    merge_detections,
)
from shared.metrics.partial_io import PartialReader
from tests.metrics.oracles import coco_eval, random_image

# Ids that sort in awkward ways: prefixes, NUL, non-ASCII, lone surrogates, very long, the `~` stems.
ODD_IDS = [
    "",
    "a",
    "a\x00",
    "a\x00b",
    "a\x01",
    "ab",
    "img-1",
    "img-10",
    "img-2",
    "é",
    "e\u0301",
    "\ud800",
    "\ue000",
    "\U0001f600",
    "z" * 70,
    "~" + "0f" * 32,
    "ckx1a2b3c0000d4e5f6g7h8i9",
    "ckx1a2b3c0000d4e5f6g7h8j0",
]


def _opener(data: bytes) -> Callable[[], BinaryIO]:
    return lambda: io.BytesIO(data)


def _stored(partials: Sequence[merged.Partial]) -> list[Callable[[], BinaryIO]]:
    out = []
    for partial in partials:
        buffer = io.BytesIO()
        assert partial.write(buffer) == partial.nbytes()
        out.append(_opener(buffer.getvalue()))
    return out


def _cut(rng: np.random.Generator, rows: list, n_shards: int) -> list[list]:
    """Random cut points, repeats allowed: empty shards and one-row shards come up."""
    points = np.sort(rng.integers(0, len(rows) + 1, n_shards - 1)).tolist()
    bounds = [0, *points, len(rows)]
    return [rows[a:b] for a, b in itertools.pairwise(bounds)]


@pytest.fixture
def tiny_blocks(monkeypatch: pytest.MonkeyPatch) -> Callable[[np.random.Generator], int]:
    """Returns a function that picks tiny block sizes for the next merge (and the budget to pass)."""

    def pick(rng: np.random.Generator) -> int:
        monkeypatch.setattr(merged, "MIN_BLOCK", 1)
        monkeypatch.setattr(merged, "MAX_BLOCK", int(rng.choice([1, 2, 3, 7, 50])))
        monkeypatch.setattr(merged, "PIECE", int(rng.choice([1, 2, 5, 64])))
        monkeypatch.setattr(merged, "PAIR_CHUNK", int(rng.choice([1, 5, 1 << 20])))
        return 1

    return pick


def _random_images(rng: np.random.Generator, n: int, *, ids: Sequence[str] | None = None) -> list[ImageDetections]:
    grid = bool(rng.integers(0, 2))
    round_scores = bool(rng.integers(0, 2))
    max_boxes = int(rng.integers(1, 12))
    # Predictions also say "cat" (never ground truth); "dog" is rare, so many shards have none of it.
    images = []
    for i in range(n):
        gt_classes = ("car", "person", "dog") if rng.random() < 0.2 else ("car", "person")
        name = str(rng.choice(ids)) if ids is not None else f"img-{i}"
        images.append(
            random_image(rng, name, grid=grid, gt_classes=gt_classes, max_boxes=max_boxes, round_scores=round_scores)
        )
    return images


def _assert_detections(shards: list[list[ImageDetections]], threshold: float, budget: int) -> dict:
    """The merge of the shards' partials == the single pass over their images in shard order (the order
    matters only where two images share an id: then the earlier comes first)."""
    images = [image for shard in shards for image in shard]
    classes = sorted({lbl for d in images for lbl in d.gt_labels})
    want = evaluate_detections(images, classes, confidence_threshold=threshold)
    got = merge_detections(_stored([detection_partial(s) for s in shards]), threshold, buffer_bytes=budget)
    assert got == want
    return got


@pytest.mark.parametrize("seed", range(10))
def test_detection_merge_is_the_single_pass_for_any_cut(seed: int, tiny_blocks) -> None:
    rng = np.random.default_rng(seed)
    ids = ODD_IDS if seed % 2 else None  # odd seeds: odd ids, with repeats (two images may share an id)
    images = _random_images(rng, int(rng.integers(20, 70)), ids=ids)
    for _ in range(4):
        threshold = float(rng.choice([0.0, 0.3, 0.5, 0.95]))
        shards = _cut(rng, images, int(rng.integers(1, 21)))
        _assert_detections(shards, threshold, tiny_blocks(rng))


def test_detection_merge_with_ties_across_shards_and_one_image_a_shard(tiny_blocks) -> None:
    """Scores rounded to 0.1: every score is shared by many images of different shards; the order among
    them (image id, then shard, then box) moves COCO's precision curve."""
    rng = np.random.default_rng(100)
    for ids in (ODD_IDS, [f"img-{i:02d}" for i in range(40)]):  # ids shared by several images; unique ids
        images = [random_image(rng, str(rng.choice(ids)), grid=True, round_scores=True) for _ in range(40)]
        assert len({s for im in images for s in im.pred_scores.tolist()}) <= 11
        shards = [[im] for im in images] + [[]]
        got = _assert_detections(shards, 0.5, tiny_blocks(rng))
        again = _assert_detections(shards[::-1], 0.5, tiny_blocks(rng))
        if len({im.image_id for im in images}) == len(images):
            assert again == got  # with unique ids, the order of the shards changes nothing


def test_detection_merge_past_100_detections_an_image(tiny_blocks) -> None:
    rng = np.random.default_rng(42)
    images = [
        random_image(rng, f"img-{i}", grid=False, gt_classes=("car",), pred_classes=("car",), max_boxes=160)
        for i in range(6)
    ]
    assert max(len(im.pred_labels) for im in images) > 100
    for n_shards in (1, 3, 6):
        _assert_detections(_cut(rng, images, n_shards), 0.4, tiny_blocks(rng))


def test_detection_merge_of_edge_cases(tiny_blocks) -> None:
    rng = np.random.default_rng(5)
    nothing_predicted = [
        ImageDetections.from_lists(f"n{i}", gt_labels=["car"], gt_boxes=[[0, 0, 10, 10]]) for i in range(3)
    ]
    nothing_given = [
        ImageDetections.from_lists(
            "p", pred_labels=["car", "cat"], pred_scores=[0.9, 0.4], pred_boxes=[[0, 0, 5, 5]] * 2
        )
    ]
    for images in ([], nothing_predicted, nothing_given, nothing_given + nothing_predicted):
        _assert_detections([images], 0.5, tiny_blocks(rng))
        _assert_detections([[], images, []], 0.5, tiny_blocks(rng))
    assert merge_detections([], 0.5) == evaluate_detections([], [], confidence_threshold=0.5)


def test_odd_label_names_survive_the_partial_header(tiny_blocks) -> None:
    """Labels travel as JSON strings in the header: NUL, lone surrogates and accents come back as they were."""
    rng = np.random.default_rng(8)
    odd = ("\ud800", "a\x00", "é", "")
    images = [random_image(rng, f"i{i}", grid=True, gt_classes=odd, pred_classes=odd) for i in range(20)]
    _assert_detections(_cut(rng, images, 4), 0.5, tiny_blocks(rng))
    items = [
        ClassificationItem(f"i{i}", frozenset({odd[i % 4]}), {c: float(rng.random()) for c in odd}) for i in range(20)
    ]
    got = merge_classification(
        _stored(
            [classification_partial(items[:7], multi_label=False), classification_partial(items[7:], multi_label=False)]
        ),
        multi_label=False,
        confidence_threshold=0.5,
    )
    assert got == evaluate_classification(items, sorted(odd), multi_label=False, confidence_threshold=0.5)


def test_merged_map_equals_pycocotools(tiny_blocks) -> None:
    """The oracle itself, on a merge of 7 shards: the same tolerance as test_detection_map's."""
    rng = np.random.default_rng(3)
    images = [random_image(rng, f"img-{i:03d}", grid=i % 2 == 0, round_scores=True) for i in range(60)]
    got = _assert_detections(_cut(rng, images, 7), 0.5, tiny_blocks(rng))
    classes = sorted({lbl for d in images for lbl in d.gt_labels})
    coco = coco_eval(images, classes)
    assert got["map50_95"] == pytest.approx(coco.stats[0], abs=1e-6)
    assert got["map50"] == pytest.approx(coco.stats[1], abs=1e-6)
    precision = coco.eval["precision"][:, :, :, 0, 2]
    for k, name in enumerate(classes):
        assert got["per_class"][name]["ap50"] == pytest.approx(np.mean(precision[0, :, k]), abs=1e-6)
        assert got["per_class"][name]["ap50_95"] == pytest.approx(np.mean(precision[:, :, k]), abs=1e-6)


def _random_items(rng: np.random.Generator, n: int, *, multi_label: bool) -> list[ClassificationItem]:
    """Scores that tie (two decimals), are 0.0, negative or missing; "e" is scored but never given; "d" is
    given rarely, so most shards do not know it is a class; some single-label items have no label."""
    items = []
    for i in range(n):
        if multi_label:
            gt = frozenset(c for c in "abcd" if rng.random() < (0.05 if c == "d" else 0.4))
        else:
            gt = (
                frozenset()
                if rng.random() < 0.1
                else frozenset({str(rng.choice(list("abcd"), p=[0.4, 0.3, 0.25, 0.05]))})
            )
        scores = {}
        for c in "abcde":
            kind = rng.random()
            if kind < 0.15:
                continue
            scores[c] = 0.0 if kind < 0.25 else -0.5 if kind < 0.3 else float(np.round(rng.random(), 2))
        if rng.random() < 0.05:
            scores = {}
        items.append(ClassificationItem(image_id=f"item-{i}", gt_labels=gt, scores=scores))
    return items


@pytest.mark.parametrize("multi_label", [False, True])
@pytest.mark.parametrize("seed", range(5))
def test_classification_merge_is_the_single_pass_for_any_cut(seed: int, multi_label: bool, tiny_blocks) -> None:
    rng = np.random.default_rng(seed)
    items = _random_items(rng, int(rng.integers(30, 120)), multi_label=multi_label)
    classes = sorted({lbl for i in items for lbl in i.gt_labels})
    for _ in range(4):
        threshold = float(rng.choice([-1.0, 0.0, 0.3, 0.5, 0.95]))
        shards = _cut(rng, items, int(rng.integers(1, 21)))
        partials = [classification_partial(s, multi_label=multi_label) for s in shards]
        want = evaluate_classification(items, classes, multi_label=multi_label, confidence_threshold=threshold)
        got = merge_classification(
            _stored(partials), multi_label=multi_label, confidence_threshold=threshold, buffer_bytes=tiny_blocks(rng)
        )
        assert got == want


def test_single_label_items_settled_by_the_merge() -> None:
    """Shard 1 has no ground truth "b" and shard 2 none "a": each shard cannot tell whether its best-scored
    label is a class; and items scored only 0.0 or below can have an unmentioned class on top."""
    one = [
        ClassificationItem("x1", frozenset({"a"}), {"b": 0.9, "a": 0.2}),
        ClassificationItem("x2", frozenset({"a"}), {"a": 0.0}),
        ClassificationItem("x3", frozenset({"a"}), {"a": -0.1, "b": -0.2}),
    ]
    two = [
        ClassificationItem("y1", frozenset({"b"}), {"a": 0.7, "b": 0.7}),
        ClassificationItem("y2", frozenset({"b"}), {}),
    ]
    partials = [classification_partial(s, multi_label=False) for s in (one, two)]
    assert [load_partial(io.BytesIO(_bytes(p))).arrays["i.resolved"].tolist() for p in partials] == [[0, 0, 0], [0, 0]]
    for threshold in (-0.5, 0.0, 0.5):
        got = merge_classification(_stored(partials), multi_label=False, confidence_threshold=threshold)
        assert got == evaluate_classification(one + two, ["a", "b"], multi_label=False, confidence_threshold=threshold)


def _bytes(partial: merged.Partial) -> bytes:
    buffer = io.BytesIO()
    partial.write(buffer)
    return buffer.getvalue()


def test_classification_errors_are_the_single_pass_errors() -> None:
    items = [
        ClassificationItem("ok", frozenset({"a"}), {"a": 1.0}),
        ClassificationItem("bad", frozenset({"a", "b"}), {}),
    ]
    with pytest.raises(ValueError, match="more than one") as single:
        evaluate_classification(items, ["a", "b"], multi_label=False, confidence_threshold=0.5)
    partials = _stored(
        [classification_partial(items[:1], multi_label=False), classification_partial(items[1:], multi_label=False)]
    )
    with pytest.raises(ValueError, match="more than one") as merged_error:
        merge_classification(partials, multi_label=False, confidence_threshold=0.5)
    assert str(merged_error.value) == str(single.value)
    with pytest.raises(ValueError, match="multi_label"):
        merge_classification(partials, multi_label=True, confidence_threshold=0.5)
    with pytest.raises(ValueError, match="detection partial"):
        merge_detections(partials, 0.5)


def test_single_label_merge_without_any_class() -> None:
    """A run whose items carry no known class: both paths report an empty run, not an argmax error."""
    items = [ClassificationItem("a", frozenset(), {"x": 0.5})]
    got = merge_classification(
        _stored([classification_partial(items, multi_label=False)]), multi_label=False, confidence_threshold=0.5
    )
    assert got["images"] == 0 and got["skipped"] == 1 and got["accuracy"] == 0.0 and got["per_class"] == {}
    single = evaluate_classification(items, [], multi_label=False, confidence_threshold=0.5)
    assert single["skipped"] == 1 and single["accuracy"] == 0.0 and single["per_class"] == {}


def test_partial_round_trip_and_format_checks() -> None:
    rng = np.random.default_rng(9)
    partial = detection_partial([random_image(rng, str(i), grid=False) for i in ODD_IDS])
    data = _bytes(partial)
    back = load_partial(io.BytesIO(data))
    assert type(back) is merged.DetectionPartial and back.meta == partial.meta
    assert set(back.arrays) == set(partial.arrays)
    for name, array in partial.arrays.items():
        assert back.arrays[name].dtype == array.dtype and np.array_equal(back.arrays[name], array), name
    with pytest.raises(ValueError, match="truncated"):
        load_partial(io.BytesIO(data[:-9]))
    with pytest.raises(ValueError, match="magic"):
        PartialReader(io.BytesIO(b"not a partial at all"))


def test_id_keys_sort_as_the_ids() -> None:
    rng = np.random.default_rng(1)
    alphabet = ["\x00", "\x01", "a", "b", "é", "\ud800", "\udfff", "\ue000", "\uffff", "\U0010ffff", "~"]
    ids = ODD_IDS + ["".join(rng.choice(alphabet, int(rng.integers(0, 6)))) for _ in range(300)]
    keys = id_keys(ids)
    by_key = np.argsort(keys, kind="stable")
    assert [ids[i] for i in by_key] == sorted(ids)
    equal = keys[:, None] == keys[None, :]
    assert (equal == (np.array(ids, dtype=object)[:, None] == np.array(ids, dtype=object)[None, :])).all()


@pytest.mark.parametrize("n", [0, 1, 7, 8, 9, 127, 128, 129, 136, 1000, 8192, 8193, 100_003])
def test_pairwise_sum_is_numpys_sum(n: int) -> None:
    rng = np.random.default_rng(n)
    values = rng.random(n) * 10.0 ** rng.integers(-8, 8, n)
    total = merged._PairwiseSum(n)
    cuts = np.sort(rng.integers(0, n + 1, 20))
    for piece in np.split(values, cuts):
        total.add(piece)
    assert total.total() == np.sum(values)


def test_greedy_rounds_are_the_sequential_greedy() -> None:
    rng = np.random.default_rng(2)
    for _ in range(50):
        rows, cols = int(rng.integers(1, 9)), int(rng.integers(1, 9))
        score = np.round(rng.random((1, rows, cols)), 1)  # ties everywhere
        eligible = rng.random((1, rows, cols)) < 0.6
        _, row, col, _ = greedy_pairs(score, eligible)
        _, r, c = np.nonzero(eligible)
        won = merged._greedy(r, c, score[0, r, c])
        assert sorted(zip(r[won].tolist(), c[won].tolist(), strict=True)) == sorted(
            zip(row.tolist(), col.tolist(), strict=True)
        )


class _CountingReader(io.BytesIO):
    """Records the size of every read, to show that a merge reads partials a slice at a time."""

    def __init__(self, data: bytes, reads: list[int]) -> None:
        super().__init__(data)
        self.reads = reads

    def read(self, size: int | None = -1) -> bytes:
        out = super().read(size)
        self.reads.append(len(out))
        return out


def _synthetic(rng: np.random.Generator, n: int, start: int) -> list[ImageDetections]:
    """n images with 3 ground-truth boxes and 10 predictions, most of them near a ground truth."""
    xy = rng.uniform(0, 500, (n, 3, 2))
    gt = np.concatenate([xy, xy + rng.uniform(10, 80, (n, 3, 2))], axis=2)
    pred = gt[np.arange(n)[:, None], rng.integers(0, 3, (n, 10))] + rng.normal(0, 5, (n, 10, 4))
    pred[..., 2:] = np.maximum(pred[..., 2:], pred[..., :2])
    names = np.array(["car", "dog", "person"])
    gt_labels, pred_labels = names[rng.integers(0, 3, (n, 3))].tolist(), names[rng.integers(0, 3, (n, 10))].tolist()
    scores = np.round(rng.uniform(0.01, 1, (n, 10)), 3)
    return [
        ImageDetections(f"c{start + i:024d}", tuple(gt_labels[i]), gt[i], tuple(pred_labels[i]), scores[i], pred[i])
        for i in range(n)
    ]


def test_merge_reads_partials_in_blocks() -> None:
    rng = np.random.default_rng(4)
    datas = [_bytes(detection_partial(_synthetic(rng, 200, 200 * s))) for s in range(12)]
    reads: list[int] = []
    openers = [lambda d=d: _CountingReader(d, reads) for d in datas]
    merge_detections(openers, 0.5, buffer_bytes=64 << 10)
    smallest = min(map(len, datas))
    assert max(reads) < smallest / 8  # no partial, nor a column of one, is read whole
    assert sum(reads) < 4 * sum(map(len, datas))  # each record is read a few times at most


def _merge_peak(files: list[Path]) -> int:
    tracemalloc.start()
    try:
        merge_detections([lambda f=f: f.open("rb") for f in files], 0.5, buffer_bytes=256 << 10)
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_merge_memory_does_not_grow_with_the_predictions(tmp_path: Path) -> None:
    """Eight times the rows in as many shards: the same peak (the blocks), far below the partials' size."""
    rng = np.random.default_rng(6)
    peaks, totals = [], []
    for per_shard in (250, 2000):
        files = []
        for s in range(8):
            files.append(tmp_path / f"{per_shard}-{s}.bin")
            files[-1].write_bytes(_bytes(detection_partial(_synthetic(rng, per_shard, per_shard * s))))
        totals.append(sum(f.stat().st_size for f in files))
        peaks.append(_merge_peak(files))
    assert totals[1] > 8 << 20
    assert peaks[1] < 1.25 * peaks[0], peaks
    assert peaks[1] < totals[1] / 4, (peaks, totals)


def test_least_counts_reaching_each_recall_threshold() -> None:
    """`_CocoPrecision` replaces "tp / n_gt >= r" by "tp >= need[r]": check need against every count."""
    for n_gt in [*range(1, 400), 999, 1000, 1001, 12_345, 99_991, 1 << 20]:
        counts = np.arange(n_gt + 1)
        want = np.searchsorted(counts.astype(float) / n_gt, merged.RECALL_THRESHOLDS, side="left")
        assert np.array_equal(merged._CocoPrecision(n_gt)._need, want), n_gt
