"""Labelbox model-run export row -> `Example`.

Export rows nest a data row's labels under `experiments[<model id>].runs[<model run id>]`. Rows are
parsed defensively: where the split lives is not documented (see the README), box numbers can be
missing or malformed, and one bad row must never stop an export of a million. A row that cannot be
used becomes a `Skipped` with a short reason that is counted and reported. Reasons name a kind of
problem, never a file or an id (so a thousand missing files make one count, not a thousand); what
tells one row from another goes into `detail`, which the counts keep a few examples of.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from shared.domain.examples import Example, PixelBox, Split
from shared.domain.model_types import Task

SPLIT_KEYS = ("split", "data_split", "dataSplit", "Data Split")
# Labelbox data row ids are 25-character cuids. 1024 characters is GCS's limit on a whole object name:
# anything longer is no id (and a manifest or run record holding it would grow for nothing).
MAX_DATA_ROW_ID_CHARS = 1024
UNKNOWN_SPLIT = "unknown split value"
NO_BOXES = "row without bounding boxes"


class SplitFallback(Protocol):
    """Where a row's split comes from when its export row lacks one (a dict, or the platform's lookup)."""

    def get(self, data_row_id: str, default: Split = Split.UNASSIGNED, /) -> Split: ...


@dataclass(frozen=True)
class Skipped:
    data_row_id: str | None  # None when the row has no usable id
    reason: str
    detail: str | None = None  # what tells this row's problem from another's of the same kind
    dropped_boxes: Counter[str] = field(default_factory=Counter)  # a row skipped for its boxes: why each went


@dataclass(frozen=True)
class Converted:
    example: Example
    dropped_boxes: Counter[str] = field(default_factory=Counter)
    # (reason, detail) of what is odd about a row that is still kept, e.g. an unknown split value
    warnings: tuple[tuple[str, str], ...] = ()


def no_usable_boxes_reason(dropped: Counter[str]) -> str:
    """Why a row with boxes kept none: the box problem by name when every box had the same one."""
    if not dropped:
        return NO_BOXES
    if len(dropped) == 1:
        return f"row without usable bounding boxes ({next(iter(dropped))})"
    return "row without usable bounding boxes (several box problems)"


def data_row_id_problem(data_row_id: str) -> str | None:
    """Why an id cannot name a data row's files and lines, or None. Printable (in Python's sense) means
    no control, format, lone surrogate or separator character other than the space: an id holding one
    (a NUL, a newline) comes from a broken export, not from Labelbox."""
    if len(data_row_id) > MAX_DATA_ROW_ID_CHARS:
        return f"data row id longer than {MAX_DATA_ROW_ID_CHARS} characters"
    if not data_row_id.isprintable():
        return "data row id is not printable"
    return None


def _run_of(row: Mapping[str, Any], model_run_id: str) -> Mapping[str, Any] | None:
    experiments = row.get("experiments")
    if not isinstance(experiments, Mapping):
        return None
    for experiment in experiments.values():
        runs = experiment.get("runs") if isinstance(experiment, Mapping) else None
        if isinstance(runs, Mapping) and isinstance(runs.get(model_run_id), Mapping):
            return runs[model_run_id]
    return None


def split_text(run: Mapping[str, Any]) -> str | None:
    """The split as written on the run object, under any of the keys Labelbox has used; None if absent."""
    for key in SPLIT_KEYS:
        value = run.get(key)
        if isinstance(value, Mapping):  # {"name": "training"} or {"value": ...}
            value = value.get("name") or value.get("value")
        if isinstance(value, str) and value.strip():
            return value
    return None


def split_of(run: Mapping[str, Any]) -> Split | None:
    """The split recorded on the run object (an unknown value is UNASSIGNED); None if absent."""
    text = split_text(run)
    return None if text is None else Split.parse(text)


def _positive_int(value: Any) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, (int, float)) and math.isfinite(value) and value > 0:
        return int(value)
    return None


def _box(obj: Mapping[str, Any]) -> PixelBox | str:
    """A pixel box from an export object, or the reason it cannot be one."""
    bbox = obj.get("bounding_box") or obj.get("bbox")
    name = obj.get("name") or obj.get("value")
    if not isinstance(name, str) or not name.strip():
        return "box without a feature name"
    if not isinstance(bbox, Mapping):
        return "box without coordinates"
    try:
        values = [float(bbox[k]) for k in ("left", "top", "width", "height")]
    except (KeyError, TypeError, ValueError):
        return "box with malformed coordinates"
    if not all(math.isfinite(v) for v in values):
        return "box with malformed coordinates"
    left, top, width, height = values
    if width <= 0 or height <= 0:
        return "box with zero or negative size"
    return PixelBox(name.strip(), left, top, width, height)


def _answers(classifications: Any, task: Task, question: str | None) -> tuple[str | None, list[str]]:
    """(question, answer names) for the first radio (single) or checklist (multi) question, or `question`."""
    if not isinstance(classifications, list):
        return None, []
    for c in classifications:
        if not isinstance(c, Mapping):
            continue
        name = c.get("name") or c.get("value")
        if question is not None and name != question:
            continue
        if task is Task.SINGLE_LABEL_CLASSIFICATION and isinstance(c.get("radio_answer"), Mapping):
            answer = c["radio_answer"].get("name") or c["radio_answer"].get("value")
            return name, [answer] if isinstance(answer, str) and answer else []
        if task is Task.MULTI_LABEL_CLASSIFICATION and isinstance(c.get("checklist_answers"), list):
            answers = [a.get("name") or a.get("value") for a in c["checklist_answers"] if isinstance(a, Mapping)]
            return name, sorted({a for a in answers if isinstance(a, str) and a})
    return None, []


def example_from_row(
    row: Mapping[str, Any],
    *,
    model_run_id: str,
    task: Task,
    split_fallback: SplitFallback | None = None,
    question: str | None = None,
) -> Converted | Skipped:
    """Converts one export row; `question` pins the classification question once the first row chose it."""
    if not isinstance(row, Mapping):
        return Skipped(None, "row is not a JSON object")
    if "_malformed" in row:  # the local platform's stand-in for an export line that did not parse
        return Skipped(None, "row is not valid JSON")
    data_row = row.get("data_row")
    data_row_id = data_row.get("id") if isinstance(data_row, Mapping) else None
    if not isinstance(data_row, Mapping) or not isinstance(data_row_id, str) or not data_row_id:
        return Skipped(None, "row without a data row id")
    id_problem = data_row_id_problem(data_row_id)
    if id_problem:
        return Skipped(None, id_problem, detail=data_row_id[:80])
    row_data = data_row.get("row_data")
    if not isinstance(row_data, str) or not row_data:
        return Skipped(data_row_id, "row without an image URL")
    if not row_data.isprintable():  # a NUL or a newline: no file or URL is named so
        return Skipped(data_row_id, "image URL is not printable", detail=row_data[:80])
    run = _run_of(row, model_run_id)
    if run is None:
        return Skipped(data_row_id, "row not in this model run")
    split, warnings = _split(run, data_row_id, split_fallback)
    media_attributes = row.get("media_attributes")
    media: Mapping[str, Any] = media_attributes if isinstance(media_attributes, Mapping) else {}
    mime = media.get("mime_type") or media.get("mimeType")
    global_key = data_row.get("global_key")

    def example(boxes: list[PixelBox], answers: list[str], *, labeled: bool = True) -> Example:
        return Example(
            data_row_id=data_row_id,
            media_url=row_data,
            mime_type=mime if isinstance(mime, str) else None,
            width=_positive_int(media.get("width")),
            height=_positive_int(media.get("height")),
            split=split,
            boxes=tuple(boxes),
            labels=tuple(answers),
            global_key=global_key if isinstance(global_key, str) else None,
            labeled=labeled,
        )

    labels = run.get("labels")
    if not isinstance(labels, list) or not labels:
        # nobody labeled it yet: kept to predict on, so it can be ranked for labeling (active learning)
        return Converted(example([], [], labeled=False), Counter(), warnings)
    if not isinstance(labels[0], Mapping):
        return Skipped(data_row_id, "label is not a JSON object")
    annotations = labels[0].get("annotations")
    if not isinstance(annotations, Mapping):
        return Skipped(data_row_id, "label without annotations")

    boxes: list[PixelBox] = []
    dropped: Counter[str] = Counter()
    labels_out: list[str] = []
    if task is Task.OBJECT_DETECTION:
        for obj in annotations.get("objects") or []:
            if not isinstance(obj, Mapping):
                dropped["box is not a JSON object"] += 1
                continue
            kind = obj.get("annotation_kind")
            if kind not in (None, "ImageBoundingBox") and "bounding_box" not in obj:
                continue  # polygons, masks, points: not for a box detector
            box = _box(obj)
            if isinstance(box, str):
                dropped[box] += 1
            else:
                boxes.append(box)
        if not boxes:
            return Skipped(data_row_id, no_usable_boxes_reason(dropped), dropped_boxes=dropped)
    else:
        _question, labels_out = _answers(annotations.get("classifications"), task, question)
        if not labels_out:
            return Skipped(data_row_id, "row without a classification answer")

    return Converted(example(boxes, labels_out), dropped, warnings)


def _split(
    run: Mapping[str, Any], data_row_id: str, fallback: SplitFallback | None
) -> tuple[Split, tuple[tuple[str, str], ...]]:
    """The row's split, and a warning when the run object names a split that does not exist.

    A row with an unknown split value ("VALIDATON") is kept, as UNASSIGNED (or with the platform's own
    split for the row, when it has one), and warned about: the user learns of the typo from the counts,
    and the row stays in the manifest. Skipping it would lose the row from the run altogether, which is
    worse than not training on it.
    """
    text = split_text(run)
    if text is None:
        return _fallback_split(fallback, data_row_id), ()
    split = Split.known(text)
    if split is not None:
        return split, ()
    return _fallback_split(fallback, data_row_id), ((UNKNOWN_SPLIT, repr(text.strip()[:40])),)


def _fallback_split(fallback: SplitFallback | None, data_row_id: str) -> Split:
    return fallback.get(data_row_id, Split.UNASSIGNED) if fallback else Split.UNASSIGNED


def classification_question(row: Mapping[str, Any], *, model_run_id: str, task: Task) -> str | None:
    """The question a classification run trains on: the first radio/checklist question of a row."""
    run = _run_of(row, model_run_id) if isinstance(row, Mapping) else None
    labels = run.get("labels") if run else None
    if not isinstance(labels, list) or not labels or not isinstance(labels[0], Mapping):
        return None
    annotations = labels[0].get("annotations")
    if not isinstance(annotations, Mapping):
        return None
    question, answers = _answers(annotations.get("classifications"), task, None)
    return question if answers else None
