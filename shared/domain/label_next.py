"""What "label these next" ranks a model run's unlabeled rows by. Stdlib only: the configuration of every
function (the `models` function has no numpy) names these."""

from __future__ import annotations

from enum import StrEnum


class Strategy(StrEnum):
    """`random` is the baseline every other strategy must beat (see bench/active_learning_bench.py)."""

    LEAST_CONFIDENCE = "least_confidence"
    MARGIN = "margin"
    ENTROPY = "entropy"
    RANDOM = "random"


UNASSIGNED = "unassigned"


def in_pool(split: str, labeled: bool) -> bool:
    """A row to rank for labeling: nobody labeled it, or it is in no split (so it was never trained on
    nor scored)."""
    return not labeled or split == UNASSIGNED


MAX_LABEL_NEXT = 1000  # rows listed at most: the run record and the report carry each one
