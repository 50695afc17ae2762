"""Per-data-row metrics -> Labelbox metric import rows (NDJSON). Pure.

Labelbox shows custom metrics per data row and feature in the model run, where a reviewer sorts and
filters by them. The rows follow the SDK's own serialisation of `ConfusionMatrixMetric` and
`ScalarMetric` (the tests compare them), under names Labelbox does not reserve.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # shared.metrics imports this module
    from shared.metrics.uncertainty import Uncertainty

# Metric names Labelbox refuses (labelbox.data.annotation_types.metrics.scalar.RESERVED_METRIC_NAMES).
RESERVED_METRIC_NAMES = frozenset(
    {
        "true_positive_count",
        "false_positive_count",
        "true_negative_count",
        "false_negative_count",
        "precision",
        "recall",
        "f1",
        "iou",
    }
)


@dataclass(frozen=True)
class FeatureMetric:
    """One feature (class) on one data row: confusion counts and mean IoU, as Labelbox defines them."""

    tp: int
    fp: int
    tn: int
    fn: int
    iou: float


MAX_METRICS_PER_DATA_ROW = 20
IOU_METRIC_NAME = "custom_iou"
CLASSIFICATION_METRIC_NAME = "classification"
# Fixed namespace so that the same run, row, feature and metric always get the same uuid.
_UUID_NAMESPACE = uuid.UUID("0b6f7c2e-5d1a-5f0e-9a43-3c1e8f6d2b71")


def confusion_metric_name(iou_threshold: float) -> str:
    """The SDK's name, quirk included: int(iou * 100) truncates, so 0.29 gives "28pct_iou"."""
    return f"{int(iou_threshold * 100)}pct_iou"


def _row_uuid(uuid_seed: str, data_row_id: str, feature: str, metric_name: str) -> str:
    return str(uuid.uuid5(_UUID_NAMESPACE, "\x1f".join((uuid_seed, data_row_id, feature, metric_name))))


def metric_import_rows(
    data_row_id: str,
    metrics: Mapping[str, FeatureMetric],
    *,
    iou_threshold: float = 0.5,
    kind: str = "detection",
    uuid_seed: str,
) -> list[dict]:
    """Labelbox NDJSON metric rows for one data row: per feature a confusion-matrix row and an IoU row.

    Labelbox keeps at most 20 metrics per data row, so at most 10 features are sent: those with the most
    ground-truth plus predicted objects (2*TP + FP + FN), ties by name. Busy classes are what a reviewer
    sorts and filters by; a class dropped here still counts in the run-level metrics. Uuids are uuid5 of
    (`uuid_seed`, data row, feature, metric name), so a re-run upserts the same rows instead of adding new.
    """
    if kind == "detection":
        confusion_name = confusion_metric_name(iou_threshold)
    elif kind == "classification":
        confusion_name = CLASSIFICATION_METRIC_NAME
    else:
        raise ValueError(f"kind must be 'detection' or 'classification', got {kind!r}")
    for name in (confusion_name, IOU_METRIC_NAME):
        if name.strip().lower() in RESERVED_METRIC_NAMES:
            raise ValueError(f"{name!r} is a metric name Labelbox reserves")

    per_feature = 2
    ranked = sorted(metrics.items(), key=lambda item: (-(2 * item[1].tp + item[1].fp + item[1].fn), item[0]))
    kept = sorted(ranked[: MAX_METRICS_PER_DATA_ROW // per_feature])
    rows: list[dict] = []
    for feature, metric in kept:
        counts = [metric.tp, metric.fp, metric.tn, metric.fn]
        if min(counts) < 0 or not 0.0 <= metric.iou <= 1.0:
            raise ValueError(f"{data_row_id}/{feature}: impossible metric {metric}")
        rows.append(
            {
                "uuid": _row_uuid(uuid_seed, data_row_id, feature, confusion_name),
                "dataRow": {"id": data_row_id},
                "metricValue": [int(count) for count in counts],
                "featureName": feature,
                "metricName": confusion_name,
                "aggregation": "CONFUSION_MATRIX",
            }
        )
        rows.append(
            {
                "uuid": _row_uuid(uuid_seed, data_row_id, feature, IOU_METRIC_NAME),
                "dataRow": {"id": data_row_id},
                "metricValue": float(metric.iou),
                "featureName": feature,
                "metricName": IOU_METRIC_NAME,
                "aggregation": "ARITHMETIC_MEAN",
            }
        )
    return rows


# Per-row uncertainty of a row the model has no label for, as data-row scalars (no feature): a reviewer
# sorts the model run by one of them to find what to label next. Prefixed so none is a reserved name.
UNCERTAINTY_METRIC_NAMES = ("al_least_confidence", "al_margin", "al_entropy", "al_boxes", "al_no_detection")


def uncertainty_import_rows(data_row_id: str, uncertainty: Uncertainty, *, uuid_seed: str) -> list[dict]:
    """Labelbox NDJSON scalar rows for one row's uncertainty (detection adds its box count and flag)."""
    values: dict[str, float] = {
        "al_least_confidence": uncertainty.least_confidence,
        "al_margin": uncertainty.margin,
        "al_entropy": uncertainty.entropy,
    }
    if uncertainty.boxes is not None:
        values["al_boxes"] = float(uncertainty.boxes)
    if uncertainty.no_detection is not None:
        values["al_no_detection"] = float(uncertainty.no_detection)
    return [
        {
            "uuid": _row_uuid(uuid_seed, data_row_id, "", name),
            "dataRow": {"id": data_row_id},
            "metricValue": round(float(value), 6),
            "metricName": name,
            "aggregation": "ARITHMETIC_MEAN",
        }
        for name, value in values.items()
    ]
