"""Labelbox model-run export rows -> Examples: what is kept, what is skipped and why.

At the end, the bad-row cases of issue 15 the conversion decides: rows whose boxes are all bad, unknown split
values, unprintable or huge ids.
"""

from __future__ import annotations

import copy
import math
from collections import Counter
from typing import Any

import pytest

from shared.domain.examples import PixelBox, Split
from shared.domain.model_types import Task
from shared.formats.labelbox_export import Converted, Skipped, classification_question, example_from_row, split_of
from shared.platform.local_model_run import LocalModelRuns
from tests.demo_run import DemoRun

RUN = "11111111-2222-4333-8444-555555555555"
MODEL = "cmodel0000000000000000000"


def box(name: str, left: float, top: float, width: float, height: float, **extra: Any) -> dict[str, Any]:
    return {
        "name": name,
        "value": name,
        "annotation_kind": "ImageBoundingBox",
        "bounding_box": {"top": top, "left": left, "height": height, "width": width},
        **extra,
    }


def radio(question: str, answer: str) -> dict[str, Any]:
    return {"name": question, "value": question, "radio_answer": {"name": answer, "value": answer}}


def checklist(question: str, *answers: str) -> dict[str, Any]:
    return {
        "name": question,
        "value": question,
        "checklist_answers": [{"name": a, "value": a} for a in answers],
    }


def make_row(
    *,
    objects: list[Any] | None = None,
    classifications: list[Any] | None = None,
    run_extra: dict[str, Any] | None = None,
    data_row_id: str = "cdatarow000000000000000001",
    media: dict[str, Any] | None = None,
) -> dict[str, Any]:
    run: dict[str, Any] = {
        "name": "run",
        "labels": [
            {
                "id": "clabel",
                "annotations": {
                    "objects": objects if objects is not None else [box("cat", 10, 20, 30, 40)],
                    "classifications": classifications or [],
                    "relationships": [],
                },
            }
        ],
        "predictions": [],
        **(run_extra or {}),
    }
    return {
        "data_row": {"id": data_row_id, "global_key": "cat.jpg", "row_data": "https://example.com/cat.jpg"},
        "media_attributes": media if media is not None else {"height": 480, "width": 640, "mime_type": "image/png"},
        "experiments": {MODEL: {"name": "model", "runs": {RUN: run}}},
    }


def convert(row: Any, task: Task = Task.OBJECT_DETECTION, **kw: Any) -> Converted | Skipped:
    return example_from_row(row, model_run_id=RUN, task=task, **kw)


def converted(row: Any, task: Task = Task.OBJECT_DETECTION, **kw: Any) -> Converted:
    result = convert(row, task, **kw)
    assert isinstance(result, Converted), result
    return result


def skipped(row: Any, task: Task = Task.OBJECT_DETECTION, **kw: Any) -> Skipped:
    result = convert(row, task, **kw)
    assert isinstance(result, Skipped), result
    return result


def _run_object(row: dict[str, Any]) -> dict[str, Any]:
    (experiment,) = row["experiments"].values()
    (run,) = experiment["runs"].values()
    return run


# -- the demo model run, as the local platform streams it ---------------------------------------------


def test_demo_rows_convert_to_examples_with_pixel_boxes_size_and_split(demo_template: DemoRun) -> None:
    rows = list(LocalModelRuns(demo_template.root).export_rows(demo_template.model_run_id))
    assert len(rows) == 20
    splits: Counter[Split] = Counter()
    for row in rows:
        result = example_from_row(row, model_run_id=demo_template.model_run_id, task=Task.OBJECT_DETECTION)
        assert isinstance(result, Converted), result
        example = result.example
        assert result.dropped_boxes == Counter()
        assert example.data_row_id == row["data_row"]["id"]
        assert example.global_key == row["data_row"]["global_key"]
        assert example.media_url == row["data_row"]["row_data"]
        assert (example.width, example.height, example.mime_type) == (160, 160, "image/jpeg")
        objects = _run_object(row)["labels"][0]["annotations"]["objects"]
        assert example.boxes == tuple(
            PixelBox(
                o["name"],
                o["bounding_box"]["left"],
                o["bounding_box"]["top"],
                o["bounding_box"]["width"],
                o["bounding_box"]["height"],
            )
            for o in objects
        )
        expected_split = _run_object(row).get("split")
        assert example.split is (Split(expected_split) if expected_split else Split.UNASSIGNED)
        splits[example.split] += 1
    assert set(splits) == {Split.TRAINING, Split.VALIDATION, Split.TEST, Split.UNASSIGNED}


@pytest.mark.parametrize(
    ("task", "expected"),
    [
        (Task.SINGLE_LABEL_CLASSIFICATION, "largest_shape"),
        (Task.MULTI_LABEL_CLASSIFICATION, "shapes_present"),
    ],
)
def test_demo_rows_give_classification_answers(demo_template: DemoRun, task: Task, expected: str) -> None:
    for row in demo_template.rows():
        question = classification_question(row, model_run_id=demo_template.model_run_id, task=task)
        assert question == expected
        result = example_from_row(row, model_run_id=demo_template.model_run_id, task=task, question=question)
        assert isinstance(result, Converted)
        answers = {c["name"]: c for c in _run_object(row)["labels"][0]["annotations"]["classifications"]}
        if task is Task.SINGLE_LABEL_CLASSIFICATION:
            assert result.example.labels == (answers[expected]["radio_answer"]["name"],)
        else:
            assert result.example.labels == tuple(sorted(a["name"] for a in answers[expected]["checklist_answers"]))
        assert result.example.boxes == ()


# -- the split -------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("run_extra", "expected"),
    [
        ({"split": "training"}, Split.TRAINING),
        ({"split": "TRAINING"}, Split.TRAINING),
        ({"split": " Validation "}, Split.VALIDATION),
        ({"data_split": "TEST"}, Split.TEST),
        ({"dataSplit": "test"}, Split.TEST),
        ({"Data Split": "training"}, Split.TRAINING),
        ({"split": {"name": "VALIDATION"}}, Split.VALIDATION),
        ({"data_split": {"value": "test"}}, Split.TEST),
        ({"split": "train"}, Split.TRAINING),
        ({"split": "val"}, Split.VALIDATION),
        ({"split": "UNASSIGNED"}, Split.UNASSIGNED),
    ],
)
def test_split_is_read_under_every_key_and_casing(run_extra: dict[str, Any], expected: Split) -> None:
    assert split_of(run_extra) is expected
    assert converted(make_row(run_extra=run_extra)).example.split is expected


@pytest.mark.parametrize("run", [{}, {"split": ""}, {"split": "   "}, {"split": None}, {"split": {"name": ""}}])
def test_split_absent_is_none(run: dict[str, Any]) -> None:
    assert split_of(run) is None


def test_missing_split_comes_from_the_fallback_mapping_else_unassigned() -> None:
    row = make_row()
    fallback = {"cdatarow000000000000000001": Split.TEST}
    assert converted(row, split_fallback=fallback).example.split is Split.TEST
    assert converted(row, split_fallback={"another": Split.TEST}).example.split is Split.UNASSIGNED
    assert converted(row).example.split is Split.UNASSIGNED


def test_split_on_the_row_wins_over_the_fallback() -> None:
    row = make_row(run_extra={"split": "validation"})
    fallback = {"cdatarow000000000000000001": Split.TEST}
    assert converted(row, split_fallback=fallback).example.split is Split.VALIDATION


# -- rows that are skipped, each with its reason -----------------------------------------------------------


def _without(row: dict[str, Any], *path: str) -> dict[str, Any]:
    row = copy.deepcopy(row)
    target = row
    for key in path[:-1]:
        target = target[key]
    del target[path[-1]]
    return row


@pytest.mark.parametrize(
    ("row", "reason", "data_row_id"),
    [
        ({"_malformed": "line 7 is not valid JSON"}, "row is not valid JSON", None),
        (["not", "an", "object"], "row is not a JSON object", None),
        (_without(make_row(), "data_row"), "row without a data row id", None),
        (_without(make_row(), "data_row", "id"), "row without a data row id", None),
        (_without(make_row(), "data_row", "row_data"), "row without an image URL", "cdatarow000000000000000001"),
        (_without(make_row(), "experiments"), "row not in this model run", "cdatarow000000000000000001"),
        (
            {**make_row(), "experiments": {MODEL: {"runs": {"another-run": {"labels": []}}}}},
            "row not in this model run",
            "cdatarow000000000000000001",
        ),
        (
            {**make_row(), "experiments": {MODEL: {"runs": {RUN: {"labels": ["not an object"]}}}}},
            "label is not a JSON object",
            "cdatarow000000000000000001",
        ),
        (make_row(objects=[]), "row without bounding boxes", "cdatarow000000000000000001"),
    ],
)
def test_unusable_rows_are_skipped_with_a_reason(row: Any, reason: str, data_row_id: str | None) -> None:
    assert convert(row) == Skipped(data_row_id, reason)


def test_malformed_line_from_the_local_platform_is_reported_as_invalid_json(demo: DemoRun) -> None:
    path = demo.folder / "export.ndjson"
    path.write_text(path.read_text() + '{"data_row": {"id": "x", broken\n')
    rows = list(LocalModelRuns(demo.root).export_rows(demo.model_run_id))
    reasons = Counter(
        r.reason
        for r in (example_from_row(row, model_run_id=demo.model_run_id, task=Task.OBJECT_DETECTION) for row in rows)
        if isinstance(r, Skipped)
    )
    assert reasons == Counter({"row is not valid JSON": 1})


def test_row_whose_boxes_are_all_malformed_is_skipped() -> None:
    row = make_row(objects=[box("cat", 1, 1, 0, 10), box("cat", 1, 1, math.nan, 10)])
    assert skipped(row).reason == "row without usable bounding boxes (several box problems)"


@pytest.mark.parametrize("task", [Task.SINGLE_LABEL_CLASSIFICATION, Task.MULTI_LABEL_CLASSIFICATION])
def test_classification_row_without_an_answer_is_skipped(task: Task) -> None:
    row = make_row(classifications=[{"name": "notes", "text_answer": {"content": "blurry"}}])
    assert skipped(row, task) == Skipped("cdatarow000000000000000001", "row without a classification answer")


# -- boxes ---------------------------------------------------------------------------------------------------


def test_malformed_boxes_are_dropped_and_counted_by_reason() -> None:
    objects = [
        box("cat", 10, 20, 30, 40),
        box("cat", math.nan, 20, 30, 40),
        box("cat", 10, 20, math.inf, 40),
        {"name": "cat", "annotation_kind": "ImageBoundingBox", "bounding_box": {"top": 1, "left": 2, "width": 3}},
        {"name": "cat", "annotation_kind": "ImageBoundingBox", "bounding_box": {"top": "a", "left": 2, "width": 3}},
        box("cat", 10, 20, 0, 40),
        box("cat", 10, 20, 30, -1),
        {"name": "cat", "annotation_kind": "ImageBoundingBox"},
        box("", 10, 20, 30, 40) | {"value": ""},
        "not an object",
        box("dog", "5", "6", "7.5", "8"),  # numbers as strings are still numbers
    ]
    result = converted(make_row(objects=objects))
    assert result.example.boxes == (PixelBox("cat", 10, 20, 30, 40), PixelBox("dog", 5, 6, 7.5, 8))
    assert result.dropped_boxes == Counter(
        {
            "box with malformed coordinates": 4,
            "box with zero or negative size": 2,
            "box without coordinates": 1,
            "box without a feature name": 1,
            "box is not a JSON object": 1,
        }
    )


def test_bbox_key_and_value_name_are_accepted() -> None:
    obj = {"value": "cat", "bbox": {"top": 1, "left": 2, "height": 3, "width": 4}}
    assert converted(make_row(objects=[obj])).example.boxes == (PixelBox("cat", 2, 1, 4, 3),)


def test_polygons_masks_and_points_are_ignored_not_counted() -> None:
    objects = [
        box("cat", 10, 20, 30, 40),
        {"name": "cat", "annotation_kind": "ImagePolygon", "polygon": [{"x": 1, "y": 2}, {"x": 3, "y": 4}]},
        {"name": "cat", "annotation_kind": "ImageSegmentationMask", "mask": {"url": "https://x"}},
        {"name": "cat", "annotation_kind": "ImagePoint", "point": {"x": 1, "y": 2}},
    ]
    result = converted(make_row(objects=objects))
    assert result.example.boxes == (PixelBox("cat", 10, 20, 30, 40),)
    assert result.dropped_boxes == Counter()


def test_row_with_only_polygons_has_no_usable_boxes() -> None:
    objects = [{"name": "cat", "annotation_kind": "ImagePolygon", "polygon": [{"x": 1, "y": 2}]}]
    assert skipped(make_row(objects=objects)).reason == "row without bounding boxes"


@pytest.mark.parametrize(
    ("media", "width", "height", "mime"),
    [
        ({"width": 640, "height": 480, "mime_type": "image/png"}, 640, 480, "image/png"),
        ({"width": 640.0, "height": 480.0, "mimeType": "image/gif"}, 640, 480, "image/gif"),
        ({"width": 0, "height": -3}, None, None, None),
        ({"width": True, "height": "480", "mime_type": 7}, None, None, None),
        ({}, None, None, None),
    ],
)
def test_size_and_mime_come_from_media_attributes_when_sensible(
    media: dict[str, Any], width: int | None, height: int | None, mime: str | None
) -> None:
    example = converted(make_row(media=media)).example
    assert (example.width, example.height, example.mime_type) == (width, height, mime)


def test_media_attributes_not_an_object_is_tolerated() -> None:
    row = make_row()
    row["media_attributes"] = "640x480"
    example = converted(row).example
    assert (example.width, example.height, example.mime_type) == (None, None, None)


# -- classification answers ---------------------------------------------------------------------------------


def test_single_label_takes_the_first_radio_answer() -> None:
    row = make_row(
        classifications=[checklist("tags", "a", "b"), radio("animal", "cat"), radio("colour", "red")],
    )
    assert converted(row, Task.SINGLE_LABEL_CLASSIFICATION).example.labels == ("cat",)
    assert classification_question(row, model_run_id=RUN, task=Task.SINGLE_LABEL_CLASSIFICATION) == "animal"


def test_multi_label_takes_the_first_checklist_sorted_and_deduplicated() -> None:
    row = make_row(classifications=[radio("animal", "cat"), checklist("tags", "outdoor", "blurry", "outdoor")])
    assert converted(row, Task.MULTI_LABEL_CLASSIFICATION).example.labels == ("blurry", "outdoor")
    assert classification_question(row, model_run_id=RUN, task=Task.MULTI_LABEL_CLASSIFICATION) == "tags"


def test_pinned_question_is_the_only_one_read() -> None:
    row = make_row(classifications=[radio("animal", "cat"), radio("colour", "red")])
    task = Task.SINGLE_LABEL_CLASSIFICATION
    assert converted(row, task, question="colour").example.labels == ("red",)
    assert skipped(row, task, question="size").reason == "row without a classification answer"


def test_classification_question_is_none_without_an_answer() -> None:
    row = make_row(classifications=[checklist("tags")])
    assert classification_question(row, model_run_id=RUN, task=Task.MULTI_LABEL_CLASSIFICATION) is None
    assert classification_question(make_row(), model_run_id=RUN, task=Task.SINGLE_LABEL_CLASSIFICATION) is None
    assert classification_question({"_malformed": "x"}, model_run_id=RUN, task=Task.MULTI_LABEL_CLASSIFICATION) is None
    assert classification_question(make_row(), model_run_id="other", task=Task.MULTI_LABEL_CLASSIFICATION) is None


def test_object_detection_ignores_classifications_and_classification_ignores_boxes() -> None:
    row = make_row(classifications=[radio("animal", "cat")])
    assert converted(row).example.labels == ()
    assert converted(row, Task.SINGLE_LABEL_CLASSIFICATION).example.boxes == ()


# -- bad rows (issue 15), 9. a row whose boxes are all bad says why ------------------------------------------


@pytest.mark.parametrize(
    ("objects", "reason", "count"),
    [
        ([box("cat", 1, 1, 0, 10), box("cat", 1, 1, -5, 10)], "box with zero or negative size", 2),
        ([box("cat", 1, 1, math.nan, 10)], "box with malformed coordinates", 1),
        ([box("cat", "left", "top", "wide", "tall")], "box with malformed coordinates", 1),
        ([box("cat", 1, 1, math.inf, 10), box("cat", "x", 1, 2, 3)], "box with malformed coordinates", 2),
    ],
)
def test_row_whose_boxes_are_all_bad_for_one_reason_is_skipped_naming_it(
    objects: list[Any], reason: str, count: int
) -> None:
    result = skipped(make_row(objects=objects))
    assert result.reason == f"row without usable bounding boxes ({reason})"
    assert result.dropped_boxes == Counter({reason: count})


def test_row_whose_boxes_are_bad_for_several_reasons_is_skipped_and_every_box_counted() -> None:
    result = skipped(make_row(objects=[box("cat", 1, 1, 0, 10), box("cat", 1, 1, math.nan, 10)]))
    assert result.reason == "row without usable bounding boxes (several box problems)"
    assert result.dropped_boxes == Counter({"box with zero or negative size": 1, "box with malformed coordinates": 1})


def test_row_with_no_box_at_all_says_so() -> None:
    assert skipped(make_row(objects=[])).reason == "row without bounding boxes"


# -- bad rows (issue 15), 10. an unknown split value is kept unassigned, and named ---------------------------


def test_unknown_split_value_is_kept_unassigned_with_a_warning() -> None:
    result = converted(make_row(run_extra={"split": "VALIDATON"}))
    assert result.example.split is Split.UNASSIGNED
    assert result.warnings == (("unknown split value", "'VALIDATON'"),)
    assert converted(make_row(run_extra={"split": "validation"})).warnings == ()


def test_unknown_split_value_takes_the_platforms_split_when_it_has_one() -> None:
    fallback = {"cdatarow000000000000000001": Split.TEST}
    result = converted(make_row(run_extra={"split": "VALIDATON"}), split_fallback=fallback)
    assert result.example.split is Split.TEST
    assert [reason for reason, _ in result.warnings] == ["unknown split value"]


# -- bad rows (issue 15), 13. unprintable and huge ids are named, not reported as an exception ---------------


@pytest.mark.parametrize(
    ("data_row_id", "reason"),
    [
        ("cabc\x00def", "data row id is not printable"),
        ("cabc\ndef", "data row id is not printable"),
        ("\ud800", "data row id is not printable"),
        ("c" * 5000, "data row id longer than 1024 characters"),
    ],
)
def test_unusable_ids_are_skipped_with_a_reason_that_names_the_problem(data_row_id: str, reason: str) -> None:
    result = convert(make_row(data_row_id=data_row_id))
    assert isinstance(result, Skipped) and result.reason == reason


def test_an_id_of_1024_printable_characters_is_fine() -> None:
    assert isinstance(convert(make_row(data_row_id="é" * 1024)), Converted)


def test_boxes_are_kept_as_given_when_the_row_is_fine() -> None:
    # a guard for the changes above: a good row converts as before, with no warnings
    result = converted(make_row(objects=[box("cat", 10, 20, 30, 40)]))
    assert result.example.boxes == (PixelBox("cat", 10, 20, 30, 40),) and result.warnings == ()


@pytest.mark.parametrize(
    ("run", "split"), [({"labels": []}, Split.UNASSIGNED), ({"split": "training"}, Split.TRAINING)]
)
def test_a_row_nobody_labeled_is_kept_unlabeled_with_its_split_and_size(run: dict, split: Split) -> None:
    """Kept so it can be predicted on and ranked for labeling; never trained on."""
    row = {**make_row(), "experiments": {MODEL: {"runs": {RUN: run}}}}
    result = convert(row)
    assert isinstance(result, Converted)
    example = result.example
    assert example.labeled is False and example.split is split
    assert (example.boxes, example.labels) == ((), ())
    assert (example.width, example.height, example.media_url) == (
        row["media_attributes"]["width"],
        row["media_attributes"]["height"],
        row["data_row"]["row_data"],
    )
