"""How unsure the model is about a row it has no label for, and which rows to label next. Pure.

Active learning asks a person to label first the rows the model is least sure of. Three standard
measures, each in [0, 1]:
- least confidence: 1 - p(top); high is unsure;
- margin: p(top) - p(second); LOW is unsure (the two best answers are close);
- entropy: the answer distribution's entropy over its maximum (log of the number of answers); high is
  unsure.

Classification, single label: over the classes' softmax confidences. Batch prediction leaves out the
classes below its scan threshold, so their remaining mass (1 - the sum given) counts as one more
answer: the entropy is then a lower bound, never an invented spread.
Classification, multi label: each class is its own yes/no answer; the row's figure is the mean over the
classes (a class the output leaves out counts as a confident no).
Detection: each box is a yes/no answer ("is this an object of this class?", with its confidence); the
row's figure is the mean over its boxes at or above `floor` (boxes below it are background the model
is sure of, and would swamp the mean), with their count. A row with no box at or above the upload
threshold has `no_detection` set: an empty picture, or objects the model cannot see yet.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from shared.domain.label_next import Strategy

__all__ = ["DETECTION_FLOOR", "Strategy", "Uncertainty", "detection", "label_next", "multi_label", "single_label"]

DETECTION_FLOOR = 0.1  # boxes below this confidence are left out of a row's detection uncertainty


@dataclass(frozen=True)
class Uncertainty:
    least_confidence: float
    margin: float
    entropy: float
    boxes: int | None = None  # detection: boxes at or above the floor
    no_detection: bool | None = None  # detection: no box at or above the upload threshold

    def score(self, strategy: Strategy, key: str = "") -> float:
        """Higher means label it sooner. `random` is a hash of `key` (the data row id): the same order
        on every run, as a seeded draw would give, without a draw to keep."""
        if strategy is Strategy.LEAST_CONFIDENCE:
            return self.least_confidence
        if strategy is Strategy.MARGIN:
            return 1.0 - self.margin
        if strategy is Strategy.ENTROPY:
            return self.entropy
        digest = hashlib.sha256(key.encode()).digest()
        return int.from_bytes(digest[:8], "big") / 2**64


def _binary_entropy(p: float) -> float:
    """In bits, so that p = 0.5 gives 1."""
    if p <= 0.0 or p >= 1.0:
        return 0.0
    return -(p * math.log2(p) + (1 - p) * math.log2(1 - p))


def _clip(p: float) -> float:
    if not math.isfinite(p):
        raise ValueError(f"confidence {p} is not a number")
    return min(1.0, max(0.0, p))


def _yes_no(confidences: Sequence[float]) -> Uncertainty:
    """The mean over independent yes/no answers; certain (0, 1, 0) when there are none."""
    if not confidences:
        return Uncertainty(0.0, 1.0, 0.0)
    lc = [1.0 - max(p, 1.0 - p) for p in confidences]
    margin = [abs(2.0 * p - 1.0) for p in confidences]
    entropy = [_binary_entropy(p) for p in confidences]
    n = len(confidences)
    # least confidence of a yes/no answer is at most 0.5: scaled to [0, 1] like the other two
    return Uncertainty(2.0 * sum(lc) / n, sum(margin) / n, sum(entropy) / n)


def single_label(scores: Mapping[str, float], num_classes: int) -> Uncertainty:
    """`scores`: the classes' softmax confidences as predicted (some may be missing)."""
    probs = sorted((_clip(p) for p in scores.values()), reverse=True)
    rest = max(0.0, 1.0 - sum(probs))
    if rest > 1e-9:
        probs = sorted([*probs, rest], reverse=True)
    top = probs[0] if probs else 0.0
    second = probs[1] if len(probs) > 1 else 0.0
    answers = max(num_classes, len(probs))
    h = -sum(p * math.log(p) for p in probs if p > 0)
    entropy = h / math.log(answers) if answers > 1 else 0.0
    return Uncertainty(1.0 - top, top - second, min(1.0, entropy))


def multi_label(scores: Mapping[str, float], classes: Iterable[str]) -> Uncertainty:
    """`scores`: each class's sigmoid confidence as predicted; `classes`: every class of the model."""
    return _yes_no([_clip(scores.get(name, 0.0)) for name in sorted(set(classes) | set(scores))])


def detection(confidences: Sequence[float], *, threshold: float, floor: float = DETECTION_FLOOR) -> Uncertainty:
    """`confidences`: every predicted box's confidence; `threshold`: the upload threshold."""
    scores = [_clip(c) for c in confidences]
    kept = [c for c in scores if c >= floor]
    mean = _yes_no(kept)
    return Uncertainty(
        mean.least_confidence,
        mean.margin,
        mean.entropy,
        boxes=len(kept),
        no_detection=not any(c >= threshold for c in scores),
    )


def label_next(uncertainties: Mapping[str, Uncertainty], strategy: Strategy, top_k: int) -> list[tuple[str, float]]:
    """The `top_k` data rows to label first, most uncertain first: (data row id, score). Ties by id, so
    the list is the same on every run and however the rows were cut into shards."""
    ranked = sorted(((row, u.score(strategy, row)) for row, u in uncertainties.items()), key=lambda x: (-x[1], x[0]))
    return ranked[: max(0, top_k)]
