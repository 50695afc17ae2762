"""A real Vertex AutoML batch-prediction output, joined to data rows through the staged image URIs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from shared.evaluation import HeldOutRow, chunk_by_rows, evaluate_rows, join_predictions
from shared.formats.vertex_prediction import parse_prediction_line
from shared.model_types import Task

FIXTURE = Path(__file__).resolve().parent.parent / "fixtures" / "vertex_automl_bbox_batch_prediction_output.jsonl"


def _real_lines() -> list[dict]:
    return [json.loads(line) for line in FIXTURE.read_text().splitlines() if line.strip()]


def _rows() -> dict[str, HeldOutRow]:
    """What ETL's manifest would say for these images: their names carry <dataRowId>_<width>_<height>."""
    rows = {}
    for line in _real_lines():
        uri = line["instance"]["content"]
        data_row_id, width, height = uri.rsplit("/", 1)[1].rsplit(".", 1)[0].split("_")
        rows[uri] = HeldOutRow(data_row_id, uri, "image/jpeg", int(width), int(height), "test", (), ())
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
