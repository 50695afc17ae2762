"""Metric rows sent to Labelbox: the fixture shapes, the SDK's own serialization, names it accepts, stable ids."""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import pytest
from labelbox.data.annotation_types.metrics.scalar import RESERVED_METRIC_NAMES, ScalarMetricAggregation
from labelbox.data.serialization import NDJsonConverter
from labelbox.types import ConfusionMatrixMetric, GenericDataRowData, Label, ScalarMetric

from shared.formats.labelbox_metrics import (
    UNCERTAINTY_METRIC_NAMES,
    FeatureMetric,
    metric_import_rows,
    uncertainty_import_rows,
)
from shared.metrics.uncertainty import Uncertainty
from tests.metrics.oracles import sdk_confusion_metric_name

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
DATA_ROW = "ckrmdnqj4000007msh9p2a27r"
METRICS = {"car": FeatureMetric(2, 1, 0, 3, 0.61), "person": FeatureMetric(0, 0, 0, 1, 0.0)}


def _fixture_rows(name: str) -> list[dict]:
    return json.loads((FIXTURES / name).read_text())


@pytest.mark.parametrize(
    ("fixture", "aggregation"),
    [
        ("labelbox-python__ndjson_custom_confusion_matrix_import.json", "CONFUSION_MATRIX"),
        ("labelbox-python__ndjson_custom_scalar_import.json", "ARITHMETIC_MEAN"),
    ],
)
def test_rows_have_the_fixture_shape(fixture: str, aggregation: str) -> None:
    # The fixture row with a feature and no subclass is the kind of row we send.
    reference = next(r for r in _fixture_rows(fixture) if "featureName" in r and "subclassName" not in r)
    ours = [r for r in metric_import_rows(DATA_ROW, METRICS, uuid_seed="run-1") if r["aggregation"] == aggregation]
    assert len(ours) == 2
    for row in ours:
        assert row.keys() == reference.keys()
        assert row["dataRow"].keys() == reference["dataRow"].keys()
        assert type(row["metricValue"]) is type(reference["metricValue"])
        if aggregation == "CONFUSION_MATRIX":
            assert len(row["metricValue"]) == 4 and all(type(v) is int for v in row["metricValue"])


def test_rows_are_what_the_sdk_serializes_for_the_same_metrics() -> None:
    rows = metric_import_rows(DATA_ROW, METRICS, uuid_seed="run-1")
    annotations = []
    for row in rows:
        kind = ConfusionMatrixMetric if row["aggregation"] == "CONFUSION_MATRIX" else ScalarMetric
        annotations.append(
            kind(
                metric_name=row["metricName"],
                feature_name=row["featureName"],
                value=tuple(row["metricValue"]) if kind is ConfusionMatrixMetric else row["metricValue"],
                extra={"uuid": row["uuid"]},
            )
        )
    serialized = list(
        NDJsonConverter.serialize([Label(data=GenericDataRowData(uid=DATA_ROW), annotations=annotations)])
    )
    assert json.loads(json.dumps(serialized)) == rows
    assert [(r["featureName"], r["metricName"]) for r in rows] == [
        ("car", "50pct_iou"),
        ("car", "custom_iou"),
        ("person", "50pct_iou"),
        ("person", "custom_iou"),
    ]
    assert rows[0]["metricValue"] == [2, 1, 0, 3] and rows[1]["metricValue"] == 0.61


@pytest.mark.parametrize("threshold", [0.1, 0.25, 0.29, 0.5, 0.57, 0.75, 0.95])
def test_confusion_metric_name_is_the_sdks_and_never_reserved(threshold: float) -> None:
    rows = metric_import_rows(DATA_ROW, METRICS, iou_threshold=threshold, uuid_seed="s")
    names = {r["metricName"] for r in rows}
    assert names == {sdk_confusion_metric_name(threshold), "custom_iou"}
    assert not {n.lower() for n in names} & set(RESERVED_METRIC_NAMES)


def test_classification_rows() -> None:
    rows = metric_import_rows(DATA_ROW, {"cat": FeatureMetric(1, 0, 0, 0, 1.0)}, kind="classification", uuid_seed="s")
    assert [(r["metricName"], r["metricValue"]) for r in rows] == [
        ("classification", [1, 0, 0, 0]),
        ("custom_iou", 1.0),
    ]
    assert not {r["metricName"] for r in rows} & set(RESERVED_METRIC_NAMES)
    with pytest.raises(ValueError, match="kind"):
        metric_import_rows(DATA_ROW, {}, kind="segmentation", uuid_seed="s")


def test_uuids_are_stable_per_run_and_distinct() -> None:
    first = metric_import_rows(DATA_ROW, METRICS, uuid_seed="run-1")
    again = metric_import_rows(DATA_ROW, dict(reversed(METRICS.items())), uuid_seed="run-1")
    other_run = metric_import_rows(DATA_ROW, METRICS, uuid_seed="run-2")
    other_row = metric_import_rows("ckrmdnqj4000007msh9p2a27s", METRICS, uuid_seed="run-1")
    ids = [r["uuid"] for r in first]
    assert ids == [r["uuid"] for r in again]
    assert len(set(ids)) == len(ids)
    assert not set(ids) & {r["uuid"] for r in other_run + other_row}
    assert all(uuid.UUID(i).version == 5 for i in ids)


def test_at_most_20_metrics_per_data_row_keeping_the_busiest_classes() -> None:
    metrics = {f"class{i:02d}": FeatureMetric(tp=i % 3, fp=i % 5, tn=0, fn=1, iou=0.5) for i in range(13)}
    rows = metric_import_rows(DATA_ROW, metrics, uuid_seed="s")
    assert len(rows) == 20
    kept = {r["featureName"] for r in rows}
    busy = sorted(metrics, key=lambda n: (-(2 * metrics[n].tp + metrics[n].fp + metrics[n].fn), n))
    assert kept == set(busy[:10])
    dropped = set(metrics) - kept
    assert all(
        2 * metrics[d].tp + metrics[d].fp <= min(2 * metrics[k].tp + metrics[k].fp for k in kept) for d in dropped
    )


def test_impossible_values_are_refused() -> None:
    with pytest.raises(ValueError, match="impossible"):
        metric_import_rows(DATA_ROW, {"car": FeatureMetric(1, -1, 0, 0, 0.5)}, uuid_seed="s")
    with pytest.raises(ValueError, match="impossible"):
        metric_import_rows(DATA_ROW, {"car": FeatureMetric(1, 0, 0, 0, 1.5)}, uuid_seed="s")


def test_uncertainty_rows_are_data_row_scalars_as_the_sdk_serializes_them() -> None:
    rows = uncertainty_import_rows(DATA_ROW, Uncertainty(0.25, 0.5, 0.8125, boxes=3, no_detection=False), uuid_seed="r")
    assert [r["metricName"] for r in rows] == list(UNCERTAINTY_METRIC_NAMES)
    assert [r["metricValue"] for r in rows] == [0.25, 0.5, 0.8125, 3.0, 0.0]
    reference = next(
        r for r in _fixture_rows("labelbox-python__ndjson_custom_scalar_import.json") if "featureName" not in r
    )
    assert set(rows[0]) == set(reference)
    annotations = [
        ScalarMetric(
            metric_name=r["metricName"],
            value=r["metricValue"],
            aggregation=ScalarMetricAggregation.ARITHMETIC_MEAN,
            extra={"uuid": r["uuid"]},
        )
        for r in rows
    ]
    serialized = list(
        NDJsonConverter.serialize([Label(data=GenericDataRowData(uid=DATA_ROW), annotations=annotations)])
    )
    assert json.loads(json.dumps(serialized)) == rows
    assert not {n.lower() for n in UNCERTAINTY_METRIC_NAMES} & set(RESERVED_METRIC_NAMES)
    classification = uncertainty_import_rows(DATA_ROW, Uncertainty(0.1, 0.2, 0.3), uuid_seed="r")
    assert [r["metricName"] for r in classification] == ["al_least_confidence", "al_margin", "al_entropy"]
    assert uncertainty_import_rows(DATA_ROW, Uncertainty(0.1, 0.2, 0.3), uuid_seed="r") == classification  # stable ids
