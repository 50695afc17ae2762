"""Evaluation metrics written back to Labelbox: per-data-row diagnostics and run-level figures. Pure numpy."""

from shared.formats.labelbox_metrics import FeatureMetric
from shared.metrics.classification import evaluate_classification
from shared.metrics.detection_map import evaluate_detections
from shared.metrics.detections import ClassificationItem, ImageDetections
from shared.metrics.merged import (
    classification_partial,
    detection_partial,
    load_partial,
    merge_classification,
    merge_detections,
)
from shared.metrics.row_metrics import (
    classification_row_metrics,
    detection_row_metrics,
)

__all__ = [
    "ClassificationItem",
    "FeatureMetric",
    "ImageDetections",
    "classification_partial",
    "classification_row_metrics",
    "detection_partial",
    "detection_row_metrics",
    "evaluate_classification",
    "evaluate_detections",
    "load_partial",
    "merge_classification",
    "merge_detections",
]
