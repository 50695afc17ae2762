"""What "label these next" ranks a model run's unlabeled rows by. Stdlib only: the configuration of every
function (the `models` function has no numpy) names these."""

from __future__ import annotations

import re
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


DEFAULT_STRATEGY = Strategy.ENTROPY.value  # a run's default where neither it nor the deployment chose
DEFAULT_LABEL_NEXT_COUNT = 20
MAX_LABEL_NEXT = 1000  # rows listed at most: the run record and the report carry each one

# Model-assisted labeling: the rows to label next go to a labeling project as one batch.
BATCH_PRIORITIES = (1, 5)  # Labelbox's batch priority: 1 is the highest, 5 (its default) the lowest
DEFAULT_BATCH_PRIORITY = 5
_PROJECT_ID = re.compile(r"[A-Za-z0-9_-]{1,128}")  # a Labelbox cuid, or a local project folder's name


def project_id_problem(value: object) -> str | None:
    """Why `value` cannot be a labeling project id, or None; "" is allowed and means "send nothing"."""
    if not isinstance(value, str):
        return f"must be a project id (a string), not {value!r}"
    if value and not _PROJECT_ID.fullmatch(value):
        return f"must be a project id (letters, digits, - and _), not {value!r}"
    return None


def label_next_batch_name(run_id: str, restarts: int) -> str:
    """The batch's name, the same for every delivery of one pass of a run (idempotency rides on it), a
    new one for a restarted run (whose rows already in the project are then skipped)."""
    return f"lbchain-{run_id}-r{restarts}-label-next"
