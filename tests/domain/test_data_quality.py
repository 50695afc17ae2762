"""Data-quality counts and the reasons Vertex would refuse a training set, in the user's words."""

from __future__ import annotations

from collections import Counter

from shared.domain.data_quality import DataQuality
from shared.domain.examples import Split
from shared.domain.model_types import Task


def healthy(task: Task = Task.OBJECT_DETECTION) -> DataQuality:
    quality = DataQuality(task)
    for split in (Split.TRAINING, Split.VALIDATION, Split.TEST):
        for _ in range(10 if split is Split.TRAINING else 2):
            quality.rows_seen += 1
            quality.keep(split, ["cat", "dog"])
    return quality


def test_healthy_training_set_has_no_problems() -> None:
    assert healthy().vertex_problems() == []
    assert healthy(Task.SINGLE_LABEL_CLASSIFICATION).vertex_problems() == []


def test_empty_split_is_named() -> None:
    quality = DataQuality(Task.OBJECT_DETECTION)
    for _ in range(12):
        quality.keep(Split.TRAINING, ["cat"])
    quality.keep(Split.UNASSIGNED, ["cat"])
    problems = quality.vertex_problems()
    assert problems == [
        "no usable rows in the validation, test split(s): assign data rows to every split in the model run "
        "(Labelbox: model run > Manage splits)"
    ]


def test_labels_under_ten_images_are_listed_with_their_counts() -> None:
    quality = healthy()
    for _ in range(3):
        quality.keep(Split.TRAINING, ["zebra", "zebra"])  # two boxes, one image
    quality.keep(Split.TEST, ["yak"])
    for _ in range(20):
        quality.keep(Split.UNASSIGNED, ["yak"])  # unassigned rows do not train
    problems = quality.vertex_problems()
    assert problems == [
        "Vertex needs at least 10 images per label; too few for: yak (1), zebra (3). "
        "Label more rows, remove these classes from the ontology, or set ETL_RARE_LABELS=drop"
    ]


def test_single_label_needs_two_answers() -> None:
    quality = DataQuality(Task.SINGLE_LABEL_CLASSIFICATION)
    for split, n in ((Split.TRAINING, 10), (Split.VALIDATION, 1), (Split.TEST, 1)):
        for _ in range(n):
            quality.keep(split, ["cat"])
    assert quality.vertex_problems() == ["single-label classification needs at least two different answers"]
    multi = DataQuality(Task.MULTI_LABEL_CLASSIFICATION)
    for split, n in ((Split.TRAINING, 10), (Split.VALIDATION, 1), (Split.TEST, 1)):
        for _ in range(n):
            multi.keep(split, ["cat"])
    assert multi.vertex_problems() == []


def test_nothing_kept_says_so_and_names_every_split() -> None:
    quality = DataQuality(Task.OBJECT_DETECTION)
    quality.rows_seen = 3
    for _ in range(3):
        quality.skip("row without a label")
    problems = quality.vertex_problems()
    assert problems[0].startswith("no usable rows in the training, validation, test split(s)")
    assert problems[-1] == "no usable rows at all; see the skip reasons"
    assert len(problems) == 2


def test_counts_and_to_dict() -> None:
    quality = DataQuality(Task.OBJECT_DETECTION)
    quality.rows_seen = 6
    quality.keep(Split.TRAINING, ["cat", "cat", "dog"])
    quality.keep(Split.VALIDATION, ["dog"])
    quality.skip("label without annotations")
    quality.skip("label without annotations")
    quality.skip("not a readable image")
    quality.keep_unlabeled()
    quality.drop_boxes(Counter({"box under 8 px": 2}))
    quality.drop_boxes(Counter({"box under 8 px": 1, "box outside the image": 1}))
    assert quality.to_dict() == {
        "rows_seen": 6,
        "rows_kept": 2,
        "rows_unlabeled": 1,
        "rows_skipped": {"label without annotations": 2, "not a readable image": 1},
        "boxes_kept": 4,
        "boxes_dropped": {"box under 8 px": 3, "box outside the image": 1},
        "warnings": {},
        "labels_dropped": {},
        "images_per_split": {"training": 1, "validation": 1},
        "per_class_per_split": {"cat": {"training": 1}, "dog": {"training": 1, "validation": 1}},
        "boxes_per_class": {"cat": 2, "dog": 2},
        "examples": {},
    }
    assert list(quality.to_dict()["rows_skipped"]) == ["label without annotations", "not a readable image"]


def test_classification_counts_images_not_boxes() -> None:
    quality = DataQuality(Task.MULTI_LABEL_CLASSIFICATION)
    quality.keep(Split.TRAINING, ["cat", "dog"])
    data = quality.to_dict()
    assert (data["boxes_kept"], data["boxes_per_class"]) == (0, {})
    assert data["per_class_per_split"] == {"cat": {"training": 1}, "dog": {"training": 1}}


def test_summary_is_short_strings_for_the_model_run_status() -> None:
    quality = DataQuality(Task.OBJECT_DETECTION)
    quality.keep(Split.TRAINING, ["cat"])
    quality.keep(Split.TRAINING, ["cat"])
    quality.keep(Split.TEST, ["cat"])
    for reason, n in (("a", 6), ("b", 5), ("c", 4), ("d", 3), ("e", 2), ("f", 1)):
        for _ in range(n):
            quality.skip(reason)
    quality.drop_boxes(Counter({"box under 8 px": 2}))
    summary = quality.summary()
    assert summary == {
        "rows_kept": "3",
        "rows_skipped": "21",
        "splits": "test 1, training 2",
        **{f"skipped: {reason}": str(n) for reason, n in (("a", 6), ("b", 5), ("c", 4), ("d", 3), ("e", 2), ("f", 1))},
        "boxes dropped: box under 8 px": "2",
    }
    assert all(isinstance(v, str) for v in summary.values())


def test_summary_without_skips_has_no_reason_keys() -> None:
    summary = healthy().summary()
    assert set(summary) == {"rows_kept", "rows_skipped", "splits"}
    assert summary["rows_skipped"] == "0"


def test_label_seen_only_on_unassigned_rows_does_not_block_training() -> None:
    # unassigned rows are not imported, so Vertex never sees this label and cannot refuse it
    quality = healthy()
    for _ in range(3):
        quality.keep(Split.UNASSIGNED, ["unicorn"])
    assert quality.vertex_problems() == []
    assert quality.to_dict()["per_class_per_split"]["unicorn"] == {"unassigned": 3}


def test_single_label_answers_on_unassigned_rows_do_not_count() -> None:
    quality = DataQuality(Task.SINGLE_LABEL_CLASSIFICATION)
    for split, n in ((Split.TRAINING, 10), (Split.VALIDATION, 1), (Split.TEST, 1)):
        for _ in range(n):
            quality.keep(split, ["cat"])
    quality.keep(Split.UNASSIGNED, ["dog"])
    assert quality.vertex_problems() == ["single-label classification needs at least two different answers"]


# -- bad rows (issue 15), 10. an unknown split value is kept unassigned, and named ---------------------------


def test_unknown_split_values_reach_the_counts_with_bounded_examples() -> None:
    quality = DataQuality(Task.OBJECT_DETECTION)
    for i in range(30):
        quality.warn("unknown split value", f"crow{i:03d}", "'VALIDATON'" if i % 2 else f"'weird-{i}'")
    data = quality.to_dict()
    assert data["warnings"] == {"unknown split value": 30}
    shown = data["examples"]["unknown split value"]
    assert len(shown) == 5 and "crow001: 'VALIDATON'" in shown
    assert len([s for s in shown if "VALIDATON" in s]) == 1  # distinct details, not five of the same


# -- bad rows (issue 15), 15. one reason per kind; the file names and URLs go to a bounded list of examples ---


def test_examples_are_bounded_and_carry_no_query_string() -> None:
    quality = DataQuality(Task.OBJECT_DETECTION)
    for i in range(50):
        quality.skip("image download failed (HTTP 403)", f"crow{i}", f"https://cdn.example/{i}.jpg?token=abc{i}")
    quality.skip("image not found", "\x00bad id" + "x" * 300, "media/" + "y" * 500 + ".jpg")
    data = quality.to_dict()
    assert data["rows_skipped"] == {"image download failed (HTTP 403)": 50, "image not found": 1}
    listed = data["examples"]["image download failed (HTTP 403)"]
    assert listed == [f"crow{i}: https://cdn.example/{i}.jpg" for i in range(5)]
    (odd,) = data["examples"]["image not found"]
    assert "\x00" not in odd and len(odd) <= 300


# -- bad rows (issue 15), 16. every reason reaches the model run's status metadata ---------------------------


def test_status_metadata_names_every_one_of_twelve_reasons() -> None:
    quality = DataQuality(Task.OBJECT_DETECTION)
    reasons = [f"reason number {i}" for i in range(12)]
    for n, reason in enumerate(reasons, 1):
        for _ in range(n):
            quality.skip(reason)
    quality.drop_boxes(Counter({"box under 8 px": 2, "box outside the image": 1}))
    summary = quality.summary()
    for n, reason in enumerate(reasons, 1):
        assert summary[f"skipped: {reason}"] == str(n)
    assert summary["boxes dropped: box under 8 px"] == "2"
    assert summary["boxes dropped: box outside the image"] == "1"
    assert all(isinstance(k, str) and isinstance(v, str) and len(v) <= 1000 for k, v in summary.items())


def test_status_metadata_stays_small_with_very_many_kinds() -> None:
    quality = DataQuality(Task.OBJECT_DETECTION)
    for i in range(200):
        quality.skip(f"a reason with a very long text number {i} " + "z" * 400)
    summary = quality.summary(run_record="gs://local-bucket/runs/r/run.json")
    skipped_keys = [k for k in summary if k.startswith("skipped: ")]
    assert 10 <= len(skipped_keys) <= 41
    more = summary[f"skipped: ({200 - len(skipped_keys) + 1} more kinds)"]
    assert "gs://local-bucket/runs/r/run.json" in more
    assert all(len(k) <= 200 and len(v) <= 1000 for k, v in summary.items())
    assert sum(len(k) + len(v) for k, v in summary.items()) <= 16_000


# -- bad rows (issue 15), 17. rare labels are dropped by default, and the setting can make them fail the run ---


def test_rare_labels_are_the_imported_labels_under_ten_images() -> None:
    quality = DataQuality(Task.OBJECT_DETECTION)
    for _ in range(10):
        quality.keep(Split.TRAINING, ["cat", "cat"])
    for _ in range(9):
        quality.keep(Split.TEST, ["dog"])
    for _ in range(30):
        quality.keep(Split.UNASSIGNED, ["dog", "yak"])  # unassigned rows never train
    assert quality.rare_labels() == {"dog": 9}
