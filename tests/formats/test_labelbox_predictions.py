"""Labelbox prediction rows built from the REAL Vertex AutoML output, checked against hand-computed pixels
and against the row shape of the Labelbox SDK's own import fixtures."""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import pytest

from shared.domain.predictions import PredictedBox, PredictedLabel, VertexPrediction
from shared.formats.labelbox_predictions import (
    RowContext,
    bbox_prediction_rows,
    classification_prediction_rows,
)
from shared.formats.vertex_prediction import apply_limits, parse_prediction_line
from tests.vertex_fixture import fixture_row

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
REAL_OUTPUT = FIXTURES / "vertex_automl_bbox_batch_prediction_output.jsonl"
SEED = "run-42/inference"


def row_for(pred: VertexPrediction) -> RowContext:
    """The fixture's images are named <dataRowId>_<width>_<height>.jpg."""
    data_row_id, width, height = fixture_row(pred.content_uri)
    return RowContext(data_row_id=data_row_id, width=int(width), height=int(height))


def real_predictions() -> list[VertexPrediction]:
    preds = []
    for line in REAL_OUTPUT.read_text(encoding="utf-8").splitlines():
        pred = parse_prediction_line(line)
        assert isinstance(pred, VertexPrediction), pred
        preds.append(pred)
    return preds


def test_real_boxes_become_pixel_boxes_of_the_original_image() -> None:
    preds = real_predictions()
    first, fourth = preds[0], preds[3]
    assert row_for(first) == RowContext("cl2i7mznt02qg0zvb4vulgbsl", 2048, 1365)
    assert row_for(fourth) == RowContext("cl2i7mznu02rc0zvbfb6b9ky4", 2048, 1536)

    rows = bbox_prediction_rows(first, row_for(first), uuid_seed=SEED)
    tall = bbox_prediction_rows(fourth, row_for(fourth), uuid_seed=SEED)

    # [0.38324276, 0.5034302, 0.5132408, 0.6970171] on 2048x1365:
    # left = 0.38324276*2048 = 784.881, top = 0.5132408*1365 = 700.574,
    # width = 0.12018744*2048 = 246.144, height = 0.1837763*1365 = 250.855
    assert rows[0]["bbox"] == {"top": 700.57, "left": 784.88, "height": 250.85, "width": 246.14}
    assert rows[0]["confidence"] == pytest.approx(0.7680233)
    assert rows[0]["name"] == "Grapes"
    assert rows[0]["dataRow"] == {"id": "cl2i7mznt02qg0zvb4vulgbsl"}
    # [0.88652074, 1.0, 0.18388093, 0.73785216]: touches the right edge exactly.
    assert rows[39]["bbox"] == {"top": 251.0, "left": 1815.59, "height": 756.17, "width": 232.41}
    # [0.7640837, 0.8310062, 0.47502327, 0.6932621] on 2048x1536 (the taller images):
    assert tall[0]["bbox"] == {"top": 729.64, "left": 1564.84, "height": 335.21, "width": 137.06}
    # [0.63435954, 0.69388765, 0.41787842, 0.628616]:
    assert tall[5]["bbox"] == {"top": 641.86, "left": 1299.17, "height": 323.69, "width": 121.91}


def test_every_real_box_stays_inside_its_image_with_sorted_confidences() -> None:
    for pred in real_predictions():
        row = row_for(pred)

        rows = bbox_prediction_rows(pred, row, uuid_seed=SEED)

        assert len(rows) == 40
        confidences = [r["confidence"] for r in rows]
        assert confidences == sorted(confidences, reverse=True)
        for r in rows:
            box = r["bbox"]
            assert 0 <= r["confidence"] <= 1
            assert box["left"] >= 0 and box["top"] >= 0
            assert box["width"] > 0 and box["height"] > 0
            assert box["left"] + box["width"] <= row.width + 1e-9
            assert box["top"] + box["height"] <= row.height + 1e-9


def test_rows_have_the_keys_of_labelbox_bbox_import_rows() -> None:
    sdk_rows = json.loads((FIXTURES / "labelbox-python__ndjson_image_import.json").read_text(encoding="utf-8"))
    sdk_bbox = next(r for r in sdk_rows if "bbox" in r)
    pred = real_predictions()[0]

    row = bbox_prediction_rows(pred, row_for(pred), uuid_seed=SEED)[0]

    # The SDK fixture is schemaId-based; ours are name-based. Labelbox requires exactly one of the two.
    optional = {"customMetrics", "classifications"}
    assert set(row) == (set(sdk_bbox) - optional - {"schemaId"}) | {"name"}
    assert set(row["bbox"]) == set(sdk_bbox["bbox"]) == {"top", "left", "height", "width"}
    assert set(row["dataRow"]) == set(sdk_bbox["dataRow"]) == {"id"}
    assert str(uuid.UUID(row["uuid"])) == row["uuid"]
    json.dumps(row)  # must be serializable as one NDJSON line


def test_uuids_are_stable_across_reruns_and_distinct_within_a_run() -> None:
    preds = real_predictions()[:3]

    first = [bbox_prediction_rows(p, row_for(p), uuid_seed=SEED) for p in preds]
    again = [bbox_prediction_rows(p, row_for(p), uuid_seed=SEED) for p in preds]
    other_run = bbox_prediction_rows(preds[0], row_for(preds[0]), uuid_seed="run-43/inference")

    assert first == again
    all_uuids = [r["uuid"] for rows in first for r in rows]
    assert len(set(all_uuids)) == len(all_uuids) == 120
    assert {r["uuid"] for r in other_run}.isdisjoint(all_uuids)


def test_feature_names_are_mapped_and_boxes_clipped_to_the_image() -> None:
    pred = VertexPrediction(
        content_uri="gs://b/runs/r/images/row-9.png",
        mime_type="image/png",
        boxes=(
            PredictedBox("grape_bunch", 0.5, 0.9, 1.0, 0.0, 0.5),
            PredictedBox("leaf", 0.4, 1.0, 1.0, 0.1, 0.2),  # no width left: dropped
            PredictedBox("stem", 0.3, 0.0, 0.25, 0.5, 1.0),
        ),
    )
    row = RowContext("row-9", width=10, height=20)

    rows = bbox_prediction_rows(pred, row, uuid_seed=SEED, name_for={"grape_bunch": "Grape bunch"})

    assert [r["name"] for r in rows] == ["Grape bunch", "stem"]
    assert rows[0]["bbox"] == {"top": 0.0, "left": 9.0, "height": 10.0, "width": 1.0}
    assert rows[1]["bbox"] == {"top": 10.0, "left": 0.0, "height": 10.0, "width": 2.5}


def test_a_row_without_image_size_is_refused() -> None:
    pred = VertexPrediction("gs://b/x.jpg", None, boxes=(PredictedBox("a", 0.5, 0, 1, 0, 1),))

    with pytest.raises(ValueError, match="image size"):
        bbox_prediction_rows(pred, RowContext("x", 0, 10), uuid_seed=SEED)


CLASSIFIED = VertexPrediction(
    content_uri="gs://b/runs/r/images/row-1.jpg",
    mime_type="image/jpeg",
    labels=(PredictedLabel("dog", 0.35), PredictedLabel("cat", 0.6), PredictedLabel("bird", 0.05)),
)


def test_single_label_gives_one_radio_row_with_the_top_answer() -> None:
    sdk_rows = json.loads((FIXTURES / "labelbox-python__ndjson_classification_import.json").read_text(encoding="utf-8"))
    sdk_radio = next(r for r in sdk_rows if isinstance(r["answer"], dict))

    rows = classification_prediction_rows(
        CLASSIFIED, RowContext("row-1", 640, 480), question="animal", multi_label=False, uuid_seed=SEED
    )

    assert len(rows) == 1
    radio = rows[0]
    assert radio["name"] == "animal"
    assert radio["dataRow"] == {"id": "row-1"}
    assert radio["answer"] == {"name": "cat", "confidence": 0.6}
    assert set(radio) == (set(sdk_radio) - {"schemaId"}) | {"name"}
    assert set(radio["answer"]) == (set(sdk_radio["answer"]) - {"schemaId", "customMetrics"}) | {"name"}


def test_multi_label_gives_one_checklist_row_of_labels_over_the_threshold() -> None:
    sdk_rows = json.loads((FIXTURES / "labelbox-python__ndjson_classification_import.json").read_text(encoding="utf-8"))
    sdk_checklist = next(r for r in sdk_rows if isinstance(r["answer"], list))
    limited = apply_limits(CLASSIFIED, confidence_threshold=0.3, max_predictions=10)

    rows = classification_prediction_rows(
        limited, RowContext("row-1", 640, 480), question="tags", multi_label=True, uuid_seed=SEED
    )

    assert len(rows) == 1
    assert rows[0]["answer"] == [{"name": "cat", "confidence": 0.6}, {"name": "dog", "confidence": 0.35}]
    assert set(rows[0]) == (set(sdk_checklist) - {"schemaId"}) | {"name"}
    assert rows == classification_prediction_rows(
        limited, RowContext("row-1", 640, 480), question="tags", multi_label=True, uuid_seed=SEED
    )


def test_no_label_over_the_threshold_gives_no_row() -> None:
    nothing = apply_limits(CLASSIFIED, confidence_threshold=0.9, max_predictions=10)

    for multi_label in (True, False):
        rows = classification_prediction_rows(
            nothing, RowContext("row-1", 640, 480), question="tags", multi_label=multi_label, uuid_seed=SEED
        )
        assert rows == []
