"""A real Vertex AutoML batch-prediction output, joined to data rows through the staged image URIs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from shared.dataset.manifest import ManifestRow
from shared.domain.examples import Split
from shared.domain.model_types import Task
from shared.domain.predictions import PredictedBox, VertexPrediction
from shared.evaluation import Joined, chunk_by_rows, evaluate_rows, join_predictions
from shared.formats.vertex_prediction import parse_prediction_line

FIXTURE = Path(__file__).resolve().parent / "fixtures" / "vertex_automl_bbox_batch_prediction_output.jsonl"


def _real_lines() -> list[dict]:
    return [json.loads(line) for line in FIXTURE.read_text().splitlines() if line.strip()]


def _rows() -> dict[str, ManifestRow]:
    """What ETL's manifest would say for these images: their names carry <dataRowId>_<width>_<height>."""
    rows = {}
    for line in _real_lines():
        uri = line["instance"]["content"]
        data_row_id, width, height = uri.rsplit("/", 1)[1].rsplit(".", 1)[0].split("_")
        rows[uri] = ManifestRow(data_row_id, uri, "image/jpeg", int(width), int(height), Split.TEST)
    return rows


def test_every_real_prediction_joins_to_its_data_row_with_pixel_boxes() -> None:
    rows = _rows()
    joined = join_predictions(rows, (parse_prediction_line(line) for line in FIXTURE.read_text().splitlines()))
    assert not joined.problems and len(joined.predictions) == len(rows) == len(_real_lines())
    evaluated = evaluate_rows(
        list(rows.values()),
        joined,
        task=Task.OBJECT_DETECTION,
        feature_for={"Grapes": "grape"},
        question=None,
        confidence_threshold=0.0,
        max_predictions=500,
        uuid_seed="run-1",
    )
    first = _real_lines()[0]
    row = rows[first["instance"]["content"]]
    uploaded = [r for r in evaluated.upload_rows[row.data_row_id] if "bbox" in r]
    assert len(uploaded) == len(first["prediction"]["bboxes"])
    x_min, x_max, y_min, y_max = first["prediction"]["bboxes"][0]
    top = max(uploaded, key=lambda r: r["confidence"])
    assert top["confidence"] == pytest.approx(max(first["prediction"]["confidences"]))
    box = top["bbox"]
    assert box["left"] == pytest.approx(x_min * row.width, abs=0.01)
    assert box["top"] == pytest.approx(y_min * row.height, abs=0.01)
    assert box["width"] == pytest.approx((x_max - x_min) * row.width, abs=0.01)
    assert box["height"] == pytest.approx((y_max - y_min) * row.height, abs=0.01)
    assert top["name"] == "grape" and top["dataRow"] == {"id": row.data_row_id}
    for data_row_id, out in evaluated.upload_rows.items():
        held = next(r for r in rows.values() if r.data_row_id == data_row_id)
        for r in out:
            assert r["dataRow"] == {"id": data_row_id}
            if "bbox" in r:
                b = r["bbox"]
                assert b["left"] >= 0 and b["left"] + b["width"] <= held.width + 0.01
                assert b["top"] >= 0 and b["top"] + b["height"] <= held.height + 0.01
    # no ground truth here: every prediction is a false positive in the per-row diagnostics
    metric = next(r for r in evaluated.upload_rows[row.data_row_id] if r.get("metricName") == "50pct_iou")
    assert metric["metricValue"] == [0, len(uploaded), 0, 0]


def test_unjoinable_lines_and_rows_without_a_prediction_are_counted_not_fatal() -> None:
    rows = _rows()
    lines = FIXTURE.read_text().splitlines()
    stranger = json.loads(lines[1])
    stranger["instance"]["content"] = "gs://elsewhere/not-ours.jpg"
    feed = [lines[0], json.dumps(stranger), "{broken", lines[0]]
    joined = join_predictions(rows, (parse_prediction_line(line) for line in feed))
    assert joined.problems["prediction for an image not in the held-out set"] == 1
    assert joined.problems["prediction line skipped: malformed json"] == 1
    assert joined.problems["duplicate prediction for an image"] == 1
    assert joined.problems["held-out image without a prediction"] == len(rows) - 1


def test_upload_chunks_are_cut_the_same_way_every_time() -> None:
    upload = {f"row{i:03d}": [{"n": i}] for i in range(10)} | {"empty": []}
    first = chunk_by_rows(upload, 4)
    assert [len(c) for c in first] == [4, 4, 2]
    assert chunk_by_rows(dict(reversed(list(upload.items()))), 4) == first


def _one_row(boxes: list[tuple[str, float, float, float, float, float]], *, max_predictions: int, size=(200, 200)):
    """One held-out row with a car at (0, 0, 100, 100) px, predicted `boxes` (label, confidence, normalized
    x_min, x_max, y_min, y_max); returns the uploaded bbox rows and the 50pct_iou rows by feature."""
    width, height = size
    row = ManifestRow(
        "dr1", "gs://b/runs/r/images/dr1.jpg", "image/jpeg", width, height, Split.TEST, (("car", 0, 0, 100, 100),), ()
    )
    prediction = VertexPrediction(
        row.image_uri, "image/jpeg", boxes=tuple(PredictedBox(label, c, *xy) for label, c, *xy in boxes)
    )
    evaluated = evaluate_rows(
        [row],
        Joined(predictions={"dr1": prediction}),
        task=Task.OBJECT_DETECTION,
        feature_for={},
        question=None,
        confidence_threshold=0.5,
        max_predictions=max_predictions,
        uuid_seed="run-1",
    )
    out = evaluated.upload_rows["dr1"]
    uploaded = [r for r in out if "bbox" in r]
    confusion = {r["featureName"]: r["metricValue"] for r in out if r.get("metricName") == "50pct_iou"}
    assert len(evaluated.detections[0].pred_labels) == len(boxes)  # run-level metrics keep every box
    return uploaded, confusion


def test_per_row_metrics_count_exactly_the_boxes_uploaded_under_the_cap() -> None:
    """PREDICT_MAX_PREDICTIONS=2 uploads the two most confident boxes; the diagnostics must not count the rest."""
    on_the_car = ("car", 0.9, 0.0, 0.5, 0.0, 0.5)
    elsewhere = [("car", c, 0.6, 0.9, 0.6, 0.9) for c in (0.8, 0.7, 0.6)] + [("dog", 0.55, 0.6, 0.9, 0.0, 0.3)]
    below_threshold = ("car", 0.2, 0.6, 0.9, 0.6, 0.9)
    uploaded, confusion = _one_row([*elsewhere, on_the_car, below_threshold], max_predictions=2)
    assert [(r["name"], r["confidence"]) for r in uploaded] == [("car", 0.9), ("car", 0.8)]
    assert confusion == {"car": [1, 1, 0, 0]}  # no "dog": it was not uploaded
    # The cap can also cut the box that matched: then the car is a miss in Labelbox, and here too.
    uploaded, confusion = _one_row([*elsewhere, ("car", 0.51, 0.0, 0.5, 0.0, 0.5)], max_predictions=3)
    assert [r["confidence"] for r in uploaded] == [0.8, 0.7, 0.6]
    assert confusion == {"car": [0, 3, 0, 1]}
    uploaded, confusion = _one_row([*elsewhere, on_the_car], max_predictions=500)
    assert len(uploaded) == 5 and confusion == {"car": [1, 3, 0, 0], "dog": [0, 1, 0, 0]}


def test_per_row_metrics_use_the_uploaded_geometry() -> None:
    """A box 199.996 px tall overlaps the car by a hair more than 1/2; Labelbox receives it rounded to
    200.00 px, exactly 1/2, which the SDK does not count as a match: neither may we."""
    uploaded, confusion = _one_row([("car", 0.9, 0.0, 1.0, 0.0, 0.99998)], max_predictions=10, size=(100, 200))
    assert uploaded[0]["bbox"] == {"top": 0.0, "left": 0.0, "height": 200.0, "width": 100.0}
    assert confusion == {"car": [0, 1, 0, 1]}


def test_on_real_predictions_the_diagnostics_count_the_uploads_of_every_row() -> None:
    """The real Vertex output has up to dozens of boxes per image: with a cap of 5, every row's 50pct_iou
    counts (no ground truth here, so all false positives) add up to what was uploaded for that row."""
    rows = _rows()
    joined = join_predictions(rows, (parse_prediction_line(line) for line in FIXTURE.read_text().splitlines()))
    evaluated = evaluate_rows(
        list(rows.values()),
        joined,
        task=Task.OBJECT_DETECTION,
        feature_for={"Grapes": "grape"},
        question=None,
        confidence_threshold=0.1,
        max_predictions=5,
        uuid_seed="run-1",
    )
    capped = 0
    for row in rows.values():
        out = evaluated.upload_rows[row.data_row_id]
        uploaded = [r for r in out if "bbox" in r]
        above = [b for b in joined.predictions[row.data_row_id].boxes if b.confidence >= 0.1]
        capped += len(above) > len(uploaded)
        counted = [r["metricValue"] for r in out if r.get("metricName") == "50pct_iou"]
        assert sum(tp + fp for tp, fp, _, _ in counted) == len(uploaded) <= 5, row.data_row_id
    assert capped  # the cap did cut something
