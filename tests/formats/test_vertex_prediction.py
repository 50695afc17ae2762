"""Vertex batch-prediction output lines, parsed from a REAL AutoML object-detection output and from broken
lines a user's run could contain."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from shared.domain.predictions import PredictedBox, PredictedLabel, VertexPrediction
from shared.formats.vertex_prediction import PredictionLineError, apply_limits, parse_prediction_line

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
REAL_OUTPUT = FIXTURES / "vertex_automl_bbox_batch_prediction_output.jsonl"


def real_lines() -> list[str]:
    return REAL_OUTPUT.read_text(encoding="utf-8").splitlines()


def test_every_line_of_the_real_output_parses_into_boxes() -> None:
    lines = real_lines()
    assert len(lines) == 50

    parsed = [parse_prediction_line(line) for line in lines]

    assert all(isinstance(p, VertexPrediction) for p in parsed)
    for pred in parsed:
        assert isinstance(pred, VertexPrediction)
        assert pred.content_uri.startswith("gs://matt-vertex-jobs/training/images/")
        assert pred.mime_type == "text/plain"
        assert len(pred.boxes) == 40
        assert pred.labels == ()
        assert {box.label for box in pred.boxes} == {"Grapes"}
        confidences = [box.confidence for box in pred.boxes]
        assert confidences == sorted(confidences, reverse=True)
        for box in pred.boxes:
            assert 0.0 <= box.x_min <= box.x_max <= 1.0
            assert 0.0 <= box.y_min <= box.y_max <= 1.0
            assert 0.0 <= box.confidence <= 1.0


def test_real_line_keeps_box_order_coordinates_and_confidence() -> None:
    first = parse_prediction_line(real_lines()[0].encode("utf-8"))

    assert isinstance(first, VertexPrediction)
    assert first.content_uri.endswith("/cl2i7mznt02qg0zvb4vulgbsl_2048_1365.jpg")
    # Vertex writes [xMin, xMax, yMin, yMax]; the fields must not be swapped.
    assert first.boxes[0] == PredictedBox(
        label="Grapes",
        confidence=0.7680233,
        x_min=0.38324276,
        x_max=0.5034302,
        y_min=0.5132408,
        y_max=0.6970171,
    )
    assert first.boxes[39].x_max == 1.0
    assert first.boxes[39].confidence == pytest.approx(0.06866201)


def test_classification_line_gives_labels_and_no_boxes() -> None:
    line = json.dumps(
        {
            "instance": {"content": "gs://b/runs/r1/images/row1.png", "mimeType": "image/png"},
            "prediction": {"ids": ["1", "2"], "displayNames": ["cat", "dog"], "confidences": [0.9, 0.1]},
        }
    )

    pred = parse_prediction_line(line)

    assert pred == VertexPrediction(
        content_uri="gs://b/runs/r1/images/row1.png",
        mime_type="image/png",
        boxes=(),
        labels=(PredictedLabel("cat", 0.9), PredictedLabel("dog", 0.1)),
    )


def test_failed_instance_is_reported_with_its_code_not_raised() -> None:
    line = json.dumps(
        {
            "instance": {"content": "gs://b/runs/r1/images/broken.jpg", "mimeType": "image/jpeg"},
            "error": {"code": 3, "message": "Image decoding failed"},
        }
    )

    result = parse_prediction_line(line)

    assert isinstance(result, PredictionLineError)
    assert result.content_uri == "gs://b/runs/r1/images/broken.jpg"
    assert result.reason == "vertex error 3"
    assert "Image decoding failed" in result.detail


def _line(prediction: dict[str, object]) -> str:
    return json.dumps({"instance": {"content": "gs://b/img.jpg", "mimeType": "image/jpeg"}, "prediction": prediction})


def _one_box(bbox: list[object]) -> str:
    return _line({"displayNames": ["a"], "confidences": [0.5], "bboxes": [bbox]})


@pytest.mark.parametrize(
    ("line", "reason"),
    [
        ('{"instance": {"content": "gs://b/img.jpg"}, "prediction": {', "malformed json"),
        (b"\xff\xfe not utf-8", "not utf-8"),
        ("   ", "empty line"),
        ("[1, 2]", "not a json object"),
        ('{"prediction": {"displayNames": [], "confidences": []}}', "missing instance content"),
        ('{"instance": {"content": "gs://b/img.jpg"}}', "missing prediction"),
        (_line({"displayNames": ["a", "b"], "confidences": [0.5]}), "mismatched array lengths"),
        (
            _line({"ids": ["1"], "displayNames": ["a"], "confidences": [0.5], "bboxes": [[0, 1, 0, 1]] * 2}),
            "mismatched array lengths",
        ),
        (_line({"displayNames": ["a"]}), "missing confidences"),
        (
            _one_box([0.1, 1.5, 0.0, 0.5]),
            "bbox coordinate out of range",
        ),
        (
            _one_box([0.1, 0.2, -0.3, 0.5]),
            "bbox coordinate out of range",
        ),
        (
            _one_box([0.5, 0.2, 0.0, 0.5]),
            "bbox min after max",
        ),
        (
            _one_box([0.1, 0.2, 0.3]),
            "bbox is not 4 numbers",
        ),
        (
            _one_box([0.1, "x", 0.3, 0.4]),
            "non-numeric value",
        ),
        (_line({"displayNames": ["a"], "confidences": [1.7]}), "confidence out of range"),
        (_line({"displayNames": [""], "confidences": [0.5]}), "invalid display name"),
    ],
)
def test_broken_lines_give_a_countable_reason(line: str | bytes, reason: str) -> None:
    result = parse_prediction_line(line)

    assert isinstance(result, PredictionLineError)
    assert result.reason == reason


def test_nan_coordinates_are_rejected() -> None:
    # json.dumps writes NaN as a bare token, which Python's json (and Vertex's writers) accept.
    line = _one_box([math.nan, 0.2, 0.1, 0.3])
    assert "NaN" in line

    result = parse_prediction_line(line)

    assert isinstance(result, PredictionLineError)
    assert result.reason == "non-finite value"
    assert result.content_uri == "gs://b/img.jpg"


def test_float_rounding_just_outside_the_image_is_clipped() -> None:
    line = _line({"displayNames": ["a"], "confidences": [1.0000001], "bboxes": [[-0.0004, 1.003, 0.2, 0.5]]})

    pred = parse_prediction_line(line)

    assert isinstance(pred, VertexPrediction)
    assert pred.boxes == (PredictedBox("a", 1.0, 0.0, 1.0, 0.2, 0.5),)


def test_apply_limits_keeps_the_most_confident_above_threshold() -> None:
    pred = VertexPrediction(
        content_uri="gs://b/img.jpg",
        mime_type=None,
        boxes=(
            PredictedBox("a", 0.2, 0, 1, 0, 1),
            PredictedBox("b", 0.9, 0, 1, 0, 1),
            PredictedBox("c", 0.5, 0, 1, 0, 1),
            PredictedBox("d", 0.7, 0, 1, 0, 1),
        ),
        labels=(PredictedLabel("x", 0.3), PredictedLabel("y", 0.8), PredictedLabel("z", 0.1)),
    )

    limited = apply_limits(pred, confidence_threshold=0.3, max_predictions=2)

    assert [b.label for b in limited.boxes] == ["b", "d"]
    assert [label.label for label in limited.labels] == ["y", "x"]
    assert limited.content_uri == pred.content_uri
    assert apply_limits(pred, confidence_threshold=0.0, max_predictions=0).boxes == ()


def test_apply_limits_on_the_real_output_caps_each_image() -> None:
    for line in real_lines()[:5]:
        pred = parse_prediction_line(line)
        assert isinstance(pred, VertexPrediction)

        limited = apply_limits(pred, confidence_threshold=0.3, max_predictions=10)

        assert 0 < len(limited.boxes) <= 10
        assert all(box.confidence >= 0.3 for box in limited.boxes)
        assert limited.boxes == tuple(
            sorted((b for b in pred.boxes if b.confidence >= 0.3), key=lambda b: -b.confidence)[:10]
        )
