"""The engine's Vertex file formats: import lines in, AutoML batch-prediction lines out."""

from __future__ import annotations

import datetime as dt
import json
import re
from pathlib import Path

import pytest

from shared.domain.predictions import VertexPrediction
from shared.engine.vertex_io import (
    class_id,
    classification_line,
    detection_line,
    error_line,
    parse_import_line,
    predictions_file_name,
)
from shared.formats.vertex_output import output_directory_name
from shared.formats.vertex_prediction import PredictionLineError, parse_prediction_line

FIXTURE = Path(__file__).parents[1] / "fixtures" / "vertex_automl_bbox_batch_prediction_output.jsonl"
INSTANCE = {"content": "gs://local-bucket/runs/r/images/abc.jpg", "mimeType": "image/jpeg"}


def test_detection_line_has_vertex_shape_sorted_by_confidence_with_xmin_xmax_ymin_ymax_boxes() -> None:
    detections = [
        ("disc", 0.4, (0.1, 0.2, 0.3, 0.4)),
        ("square", 0.9, (0.5, 0.6, 0.7, 0.8)),
        ("disc", 0.7, (0.0, 0.0, 1.0, 1.0)),
    ]
    line = detection_line(INSTANCE, detections, confidence_threshold=0.0, max_predictions=10)
    assert line == {
        "instance": INSTANCE,
        "prediction": {
            "ids": [class_id("square"), class_id("disc"), class_id("disc")],
            "displayNames": ["square", "disc", "disc"],
            "confidences": [0.9, 0.7, 0.4],
            "bboxes": [[0.5, 0.7, 0.6, 0.8], [0.0, 1.0, 0.0, 1.0], [0.1, 0.3, 0.2, 0.4]],
        },
    }


def test_detection_line_honours_threshold_and_max_predictions() -> None:
    detections = [(f"c{i}", i / 10, (0.1, 0.1, 0.2, 0.2)) for i in range(10)]
    line = detection_line(INSTANCE, detections, confidence_threshold=0.35, max_predictions=3)
    assert line["prediction"]["confidences"] == [0.9, 0.8, 0.7]
    line = detection_line(INSTANCE, detections, confidence_threshold=0.85, max_predictions=3)
    assert line["prediction"]["displayNames"] == ["c9"]
    empty = detection_line(INSTANCE, detections, confidence_threshold=0.95, max_predictions=3)
    assert empty["prediction"] == {"ids": [], "displayNames": [], "confidences": [], "bboxes": []}


def test_detection_line_clips_boxes_into_the_image() -> None:
    line = detection_line(INSTANCE, [("a", 0.5, (-0.1, 0.2, 1.2, 0.4))], confidence_threshold=0, max_predictions=1)
    assert line["prediction"]["bboxes"] == [[0.0, 1.0, 0.2, 0.4]]


def test_our_detection_line_has_the_keys_and_types_of_a_real_automl_output_line() -> None:
    real = json.loads(FIXTURE.read_text().splitlines()[0])
    ours = detection_line(INSTANCE, [("Grapes", 0.77, (0.1, 0.2, 0.3, 0.4))], confidence_threshold=0, max_predictions=5)
    assert ours.keys() == real.keys()
    assert ours["instance"].keys() == real["instance"].keys()
    assert ours["prediction"].keys() == real["prediction"].keys()
    for key in ("ids", "displayNames", "confidences"):
        assert type(ours["prediction"][key][0]) is type(real["prediction"][key][0])
    assert len(ours["prediction"]["bboxes"][0]) == len(real["prediction"]["bboxes"][0]) == 4


def test_the_chains_own_vertex_parser_reads_our_lines() -> None:
    line = detection_line(INSTANCE, [("disc", 0.66, (0.1, 0.2, 0.3, 0.4))], confidence_threshold=0, max_predictions=5)
    parsed = parse_prediction_line(json.dumps(line))
    assert isinstance(parsed, VertexPrediction)
    box = parsed.boxes[0]
    assert (box.label, box.confidence, box.x_min, box.x_max, box.y_min, box.y_max) == ("disc", 0.66, 0.1, 0.3, 0.2, 0.4)
    error = parse_prediction_line(json.dumps(error_line(INSTANCE, "gone")))
    assert isinstance(error, PredictionLineError)
    assert error.content_uri == INSTANCE["content"]


def test_classification_line_sorts_thresholds_and_has_no_bboxes() -> None:
    scores = {"cat": 0.2, "dog": 0.7, "bird": 0.1}
    line = classification_line(INSTANCE, scores, confidence_threshold=0.15, max_predictions=5)
    assert line == {
        "instance": INSTANCE,
        "prediction": {
            "ids": [class_id("dog"), class_id("cat")],
            "displayNames": ["dog", "cat"],
            "confidences": [0.7, 0.2],
        },
    }
    top = classification_line(INSTANCE, scores, confidence_threshold=0.0, max_predictions=1)
    assert top["prediction"]["displayNames"] == ["dog"]


def test_error_line_uses_vertex_invalid_argument_code() -> None:
    assert error_line(INSTANCE, "image missing") == {
        "instance": INSTANCE,
        "error": {"code": 3, "message": "image missing"},
    }


def test_class_ids_are_stable_numeric_strings_distinct_per_label() -> None:
    assert class_id("disc") == class_id("disc")
    assert class_id("disc") != class_id("square")
    assert class_id("disc").isdigit()


def test_output_folder_and_file_names_follow_automl() -> None:
    when = dt.datetime(2026, 3, 4, 5, 6, 7, 891000, tzinfo=dt.UTC)
    assert output_directory_name("lb run/7", when) == "prediction-lb_run_7-2026-03-04T05:06:07.891Z"
    assert predictions_file_name(1) == "predictions_00001.jsonl"
    assert predictions_file_name(12) == "predictions_00012.jsonl"


def test_import_line_for_detection_accepts_string_numbers_like_the_vertex_docs() -> None:
    line = (
        '{"imageGcsUri": "gs://b/x.jpeg", "boundingBoxAnnotations": [{"displayName": "Tomato", "xMin": "0.3", '
        '"yMin": "0.3", "xMax": "0.7", "yMax": "0.6"}], "dataItemResourceLabels": '
        '{"aiplatform.googleapis.com/ml_use": "test"}}'
    )
    row = parse_import_line(line, "object_detection")
    assert row.image_uri == "gs://b/x.jpeg"
    assert row.split == "test"
    assert row.boxes == (("Tomato", (0.3, 0.3, 0.7, 0.6)),)


def test_import_lines_for_classification() -> None:
    single = parse_import_line(
        {"imageGcsUri": "gs://b/1.jpg", "classificationAnnotation": {"displayName": "daisy"}},
        "single_label_classification",
    )
    assert (single.labels, single.split) == (("daisy",), None)
    multi = parse_import_line(
        {
            "imageGcsUri": "gs://b/1.jpg",
            "classificationAnnotations": [{"displayName": "full_shot"}, {"displayName": "daisy"}],
            "dataItemResourceLabels": {"aiplatform.googleapis.com/ml_use": "training"},
        },
        "multi_label_classification",
    )
    assert (multi.labels, multi.split) == (("daisy", "full_shot"), "training")


def _box_line(**box: object) -> str:
    return json.dumps({"imageGcsUri": "gs://b/x", "boundingBoxAnnotations": [box]})


@pytest.mark.parametrize(
    ("line", "reason"),
    [
        ("[1, 2]", "not a JSON object"),
        ('{"boundingBoxAnnotations": []}', "imageGcsUri is missing"),
        (_box_line(xMin=0, yMin=0, xMax=1, yMax=1), "no displayName"),
        (_box_line(displayName="a", xMin=0.5, yMin=0, xMax=0.4, yMax=1), "no area"),
        (_box_line(displayName="a", xMin="x", yMin=0, xMax=1, yMax=1), "not a number"),
        (_box_line(displayName="a", xMin=0, yMin=0, xMax=1.5, yMax=1), "outside [0, 1]"),
        ('{"imageGcsUri": "gs://b/x", "boundingBoxAnnotations": {"displayName": "a"}}', "not a list"),
        ('{"imageGcsUri": "gs://b/x", "boundingBoxAnnotations": "box"}', "not a list"),
    ],
)
def test_bad_import_lines_say_what_is_wrong(line: str, reason: str) -> None:
    with pytest.raises(ValueError, match=re.escape(reason)):
        parse_import_line(line, "object_detection")
