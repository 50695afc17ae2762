"""Evaluation metrics written back to Labelbox: per-data-row diagnostics and run-level figures. Pure numpy."""

from shared.metrics.classification import evaluate_classification
from shared.metrics.detection_map import evaluate_detections
from shared.metrics.detections import ClassificationItem, ImageDetections
from shared.metrics.row_metrics import (
    FeatureMetric,
    classification_row_metrics,
    detection_row_metrics,
    metric_import_rows,
)

__all__ = [
    "ClassificationItem",
    "FeatureMetric",
    "ImageDetections",
    "classification_row_metrics",
    "detection_row_metrics",
    "evaluate_classification",
    "evaluate_detections",
    "metric_import_rows",
]
