"""Evaluation metrics written back to Labelbox: per-data-row diagnostics and run-level figures. Pure numpy."""

from shared.formats.labelbox_metrics import FeatureMetric
from shared.metrics.classification import evaluate_classification
from shared.metrics.detection_map import evaluate_detections
from shared.metrics.detections import ClassificationItem, ImageDetections
from shared.metrics.row_metrics import (
    classification_row_metrics,
    detection_row_metrics,
)

__all__ = [
    "ClassificationItem",
    "FeatureMetric",
    "ImageDetections",
    "classification_row_metrics",
    "detection_row_metrics",
    "evaluate_classification",
    "evaluate_detections",
]
