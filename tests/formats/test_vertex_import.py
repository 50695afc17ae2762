"""Examples -> Vertex AI image import lines, with Vertex's own box limits applied before the import."""

from __future__ import annotations

import json
import re
from collections import Counter

import pytest

from shared.domain.examples import Example, NormalizedBox, PixelBox, Split
from shared.domain.model_types import Task
from shared.formats.vertex_import import (
    ML_USE,
    LabelNames,
    TooManyBoxes,
    import_line,
    label_value,
    normalize_boxes,
)

URI = "gs://bucket/runs/r1/images/cdatarow1.jpg"


def example(split: Split = Split.TRAINING, labels: tuple[str, ...] = (), data_row_id: str = "cdatarow1") -> Example:
    return Example(
        data_row_id=data_row_id,
        media_url="https://example.com/a.jpg",
        mime_type="image/jpeg",
        width=200,
        height=100,
        split=split,
        labels=labels,
    )


# -- boxes ------------------------------------------------------------------------------------------------


def test_boxes_inside_the_image_are_normalized() -> None:
    kept, dropped = normalize_boxes((PixelBox("cat", 20, 10, 100, 50),), 200, 100)
    assert kept == [NormalizedBox("cat", 0.1, 0.1, 0.6, 0.6)]
    assert dropped == Counter()


def test_boxes_reaching_past_the_edges_are_clipped() -> None:
    kept, dropped = normalize_boxes(
        (PixelBox("cat", -50, -10, 100, 60), PixelBox("dog", 150, 50, 100, 100)),
        200,
        100,
    )
    assert kept == [NormalizedBox("cat", 0.0, 0.0, 0.25, 0.5), NormalizedBox("dog", 0.75, 0.5, 1.0, 1.0)]
    assert dropped == Counter()


@pytest.mark.parametrize(
    ("pixel_box", "reason"),
    [
        (PixelBox("x", 250, 10, 20, 20), "box outside the image"),
        (PixelBox("x", -40, 10, 30, 20), "box outside the image"),
        (PixelBox("x", 10, 100, 20, 20), "box outside the image"),
        (PixelBox("x", 10, 10, 7.9, 20), "box under 8 px"),
        (PixelBox("x", 10, 10, 20, 7), "box under 8 px"),
        (PixelBox("x", 195, 10, 20, 20), "box under 8 px"),  # 5 px left after clipping
    ],
)
def test_boxes_vertex_would_drop_are_dropped_with_the_reason(pixel_box: PixelBox, reason: str) -> None:
    kept, dropped = normalize_boxes((pixel_box,), 200, 100)
    assert kept == []
    assert dropped == Counter({reason: 1})


def test_box_of_exactly_8_px_is_kept() -> None:
    kept, _ = normalize_boxes((PixelBox("x", 0, 0, 8, 8),), 200, 100)
    assert len(kept) == 1


def test_box_under_one_percent_of_the_side_is_dropped() -> None:
    # 1000 x 1000 image (no down-scaling): 9 px wide is over 8 px but under 10 px (1%)
    kept, dropped = normalize_boxes((PixelBox("x", 0, 0, 9, 50), PixelBox("y", 0, 0, 10, 10)), 1000, 1000)
    assert [b.label for b in kept] == ["y"]
    assert dropped == Counter({"box under 1% of the image side": 1})


def test_vertex_downscaling_of_large_images_is_applied_before_the_8_px_limit() -> None:
    # short side 2048 -> Vertex scales by 1/2, so a 12 px box becomes 6 px and is dropped
    kept, dropped = normalize_boxes((PixelBox("x", 100, 100, 12, 12),), 2048, 2048)
    assert kept == []
    assert dropped == Counter({"box under 8 px": 1})
    # the same box on a 1024 px image is kept, and 24 px on the large image too (12 px after scaling)
    assert len(normalize_boxes((PixelBox("x", 100, 100, 12, 12),), 1024, 1024)[0]) == 1
    assert len(normalize_boxes((PixelBox("x", 100, 100, 24, 24),), 2048, 2048)[0]) == 1


def test_downscaling_follows_the_short_side() -> None:
    # 4096 x 2048: scaled by 1024/2048, so a 15 px tall box is 7.5 px
    kept, dropped = normalize_boxes((PixelBox("x", 0, 0, 100, 15),), 4096, 2048)
    assert kept == []
    assert dropped == Counter({"box under 8 px": 1})


def test_every_box_is_counted_once() -> None:
    boxes = (
        PixelBox("a", 10, 10, 50, 50),
        PixelBox("b", 500, 500, 50, 50),
        PixelBox("c", 10, 10, 2, 2),
        PixelBox("d", 10, 10, 60, 40),
    )
    kept, dropped = normalize_boxes(boxes, 200, 100)
    assert [b.label for b in kept] == ["a", "d"]
    assert dropped == Counter({"box outside the image": 1, "box under 8 px": 1})


def test_more_than_500_boxes_is_rejected() -> None:
    boxes = tuple(PixelBox("x", 0, 0, 10, 10) for _ in range(501))
    with pytest.raises(TooManyBoxes, match="501 boxes"):
        normalize_boxes(boxes, 200, 100)
    kept, _ = normalize_boxes(boxes[:500], 200, 100)
    assert len(kept) == 500


# -- import lines ---------------------------------------------------------------------------------------


def test_object_detection_line_has_the_documented_shape() -> None:
    names = LabelNames()
    boxes = [NormalizedBox("Tomato", 0.3, 0.3, 0.7, 0.6), NormalizedBox("green salad", 0.0, 0.0, 1.0, 1 / 3)]
    line = import_line(example(Split.TEST), image_uri=URI, task=Task.OBJECT_DETECTION, names=names, boxes=boxes)
    assert line == {
        "imageGcsUri": URI,
        "boundingBoxAnnotations": [
            {"displayName": "Tomato", "xMin": 0.3, "yMin": 0.3, "xMax": 0.7, "yMax": 0.6},
            {"displayName": "green_salad", "xMin": 0.0, "yMin": 0.0, "xMax": 1.0, "yMax": 0.333333},
        ],
        "dataItemResourceLabels": {"aiplatform.googleapis.com/ml_use": "test", "data_row_id": "cdatarow1"},
    }
    assert names.to_feature() == {"Tomato": "Tomato", "green_salad": "green salad"}
    json.dumps(line)  # a JSONL line


def test_single_label_line_has_the_documented_shape() -> None:
    line = import_line(
        example(Split.VALIDATION, labels=("daisy",)),
        image_uri=URI,
        task=Task.SINGLE_LABEL_CLASSIFICATION,
        names=LabelNames(),
    )
    assert line == {
        "imageGcsUri": URI,
        "classificationAnnotation": {"displayName": "daisy"},
        "dataItemResourceLabels": {ML_USE: "validation", "data_row_id": "cdatarow1"},
    }


def test_multi_label_line_has_the_documented_shape() -> None:
    line = import_line(
        example(Split.TRAINING, labels=("daisy", "full shot")),
        image_uri=URI,
        task=Task.MULTI_LABEL_CLASSIFICATION,
        names=LabelNames(),
    )
    assert line == {
        "imageGcsUri": URI,
        "classificationAnnotations": [{"displayName": "daisy"}, {"displayName": "full_shot"}],
        "dataItemResourceLabels": {ML_USE: "training", "data_row_id": "cdatarow1"},
    }


def test_data_row_id_label_is_a_valid_resource_label_value() -> None:
    line = import_line(
        example(labels=("a",), data_row_id="Row.ID/" + "x" * 80),
        image_uri=URI,
        task=Task.SINGLE_LABEL_CLASSIFICATION,
        names=LabelNames(),
    )
    value = line["dataItemResourceLabels"]["data_row_id"]
    assert re.fullmatch(r"[a-z0-9_-]{1,63}", value)
    assert value.startswith("row_id_xxx")


def test_unassigned_rows_never_become_import_lines() -> None:
    with pytest.raises(ValueError, match="unassigned"):
        import_line(
            example(Split.UNASSIGNED, labels=("a",)),
            image_uri=URI,
            task=Task.SINGLE_LABEL_CLASSIFICATION,
            names=LabelNames(),
        )


# -- label names ------------------------------------------------------------------------------------------

VERTEX_NAME = re.compile(r"[A-Za-z][A-Za-z0-9_]{0,31}")


@pytest.mark.parametrize(
    ("feature", "expected"),
    [
        ("cat", "cat"),
        ("Traffic Light", "Traffic_Light"),
        ("  padded  ", "padded"),
        ("café-au-lait!", "caf__au_lait_"),
        ("1st place", "l_1st_place"),
        ("_private", "l__private"),
        ("", "label"),
        ("a" * 40, "a" * 32),
        ("9" * 40, "l_" + "9" * 30),
    ],
)
def test_label_names_are_made_vertex_safe(feature: str, expected: str) -> None:
    name = LabelNames().vertex_name(feature)
    assert name == expected
    assert VERTEX_NAME.fullmatch(name)


def test_colliding_label_names_get_distinct_names_and_map_back() -> None:
    names = LabelNames()
    features = ["traffic light", "traffic-light", "traffic_light", "traffic light!", "traffic_light_2"]
    features += ["x" * 40, "x" * 41, "x" * 32]
    vertex = [names.vertex_name(f) for f in features]
    assert len(set(vertex)) == len(features)
    assert all(VERTEX_NAME.fullmatch(v) for v in vertex)
    assert vertex[:2] == ["traffic_light", "traffic_light_2"]
    assert names.to_feature() == dict(zip(vertex, features, strict=True))


def test_label_names_are_stable_for_a_run() -> None:
    names = LabelNames()
    first = [names.vertex_name(f) for f in ("a b", "a-b", "a b")]
    assert first == ["a_b", "a_b_2", "a_b"]
    assert names.vertex_name("a-b") == "a_b_2"
    restored = LabelNames(to_vertex=dict(names.to_vertex))
    assert restored.vertex_name("a b") == "a_b"
    assert restored.vertex_name("a.b") == "a_b_3"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("cabc123", "cabc123"),
        ("ABC-def_9", "abc-def_9"),
        ("a.b/c d", "a_b_c_d"),
        ("x" * 100, "x" * 63),
    ],
)
def test_label_value(text: str, expected: str) -> None:
    assert label_value(text) == expected
