"""A run's metrics in the shapes the chain shows them: run-level, per split, headline, compact. Pure."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from shared.domain.model_types import Task
from shared.metrics.classification import evaluate_classification
from shared.metrics.detection_map import evaluate_detections
from shared.metrics.detections import ClassificationItem, ImageDetections
from shared.metrics.merged import Opener, merge_classification, merge_detections

SPLIT_FIGURES = ("map50", "map50_95", "precision", "recall", "f1", "accuracy", "exact_match", "macro_f1", "images")


def run_metrics(
    task: Task,
    detections: Sequence[ImageDetections],
    classifications: Sequence[ClassificationItem],
    threshold: float,
) -> dict[str, Any]:
    """mAP, PR curves, best F1 and per-class figures (detection), or accuracy and friends (classification)."""
    if task is Task.OBJECT_DETECTION:
        classes = sorted({lbl for d in detections for lbl in d.gt_labels})
        return evaluate_detections(list(detections), classes, confidence_threshold=threshold)
    classes = sorted({lbl for i in classifications for lbl in i.gt_labels})
    return evaluate_classification(
        list(classifications),
        classes,
        multi_label=task is Task.MULTI_LABEL_CLASSIFICATION,
        confidence_threshold=threshold,
    )


def by_split(
    task: Task,
    detections: Sequence[ImageDetections],
    classifications: Sequence[ClassificationItem],
    split_of: Mapping[str, str],
    threshold: float,
) -> dict[str, dict[str, Any]]:
    """The headline figures on each held-out split alone (the test split is the one to quote)."""
    out: dict[str, dict[str, Any]] = {}
    for split in sorted(set(split_of.values())):
        full = run_metrics(
            task,
            [d for d in detections if split_of[d.image_id] == split],
            [i for i in classifications if split_of[i.image_id] == split],
            threshold,
        )
        out[split] = split_figures(full)
    return out


def split_figures(metrics: Mapping[str, Any]) -> dict[str, Any]:
    """The figures `by_split` keeps of one split's full metrics."""
    return {k: metrics[k] for k in SPLIT_FIGURES if k in metrics}


def merged_run_metrics(task: Task, partials: Sequence[Opener], threshold: float) -> dict[str, Any]:
    """`run_metrics` of the rows of every stored partial together (shards' partials, see `merged`):
    each opener opens one partial. With none at all, the figures of no rows, as `run_metrics` gives."""
    if not partials:
        return run_metrics(task, [], [], threshold)
    if task is Task.OBJECT_DETECTION:
        return merge_detections(partials, threshold)
    return merge_classification(
        partials, multi_label=task is Task.MULTI_LABEL_CLASSIFICATION, confidence_threshold=threshold
    )


def headline(metrics: Mapping[str, Any], task: Task) -> dict[str, str]:
    """The few figures a model run's status shows, as the strings Labelbox keeps."""
    keys = ("map50", "map50_95", "precision", "recall", "f1", "best_f1", "best_f1_threshold")
    if task.is_classification:
        keys = ("accuracy", "exact_match", "precision", "recall", "f1", "macro_f1", "best_f1_threshold")
    return {k: f"{metrics[k]:.4f}" for k in keys if isinstance(metrics.get(k), (int, float))}


def compact(metrics: Mapping[str, Any]) -> dict[str, Any]:
    """The metrics without curves, for Labelbox's model-run config."""
    out = {k: v for k, v in metrics.items() if k not in {"per_class", "confusion_matrix"}}
    out["per_class"] = {
        c: {k: v for k, v in m.items() if k != "pr_curve"} for c, m in (metrics.get("per_class") or {}).items()
    }
    return out
