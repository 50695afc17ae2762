"""Bad rows (issue 15): each kind of bad input is counted under a reason that says what is wrong.

One test (or a few) per case of the issue: corrupt images, rows whose boxes are all bad, unknown
splits, object keys derived from ids, unprintable or huge ids, a declared size that is not the real
one, reasons that name a kind (not a file), every reason in the status metadata, and rare labels.
The whole ETL stage is exercised in `tests/stages/test_stages_etl_bad_rows.py`.
"""

from __future__ import annotations

import http.server
import io
import math
import threading
from collections import Counter
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from PIL import Image, ImageFile

from shared.config import ConfigError, load_settings
from shared.dataset.image_staging import NotStaged, StagedImage
from shared.domain.data_quality import DataQuality
from shared.domain.examples import PixelBox, Split
from shared.domain.model_types import Task
from shared.formats.labelbox_export import Converted, Skipped
from tests.core.conftest import DemoRun
from tests.core.test_core_image_staging import RUN_ID, examples, media_path, stage_one, stager
from tests.core.test_core_labelbox_export import box, convert, converted, make_row, skipped

# -- 8. corrupt images are decoded at ETL, not only their header read --------------------------------------


def _jpeg(demo: DemoRun) -> bytes:
    return media_path(demo, examples(demo)[0]).read_bytes()


def test_truncated_jpeg_is_not_staged_and_is_named(demo: DemoRun, tmp_path: Path) -> None:
    example = examples(demo)[0]
    data = _jpeg(demo)
    media_path(demo, example).write_bytes(data[: len(data) // 2])  # the header is intact
    with Image.open(media_path(demo, example)) as img:
        assert img.size == (160, 160)  # what the header-only check saw and accepted
    result = stage_one(demo, example, tmp_path / "bucket")
    assert isinstance(result, NotStaged) and result.reason == "image could not be decoded"
    assert not (tmp_path / "bucket" / "runs").exists()


def test_jpeg_with_garbage_after_a_valid_header_is_not_staged(demo: DemoRun, tmp_path: Path) -> None:
    example = examples(demo)[0]
    data = _jpeg(demo)
    start_of_scan = data.find(b"\xff\xda") + 14
    garbage = bytes((i * 131 + 7) % 256 for i in range(len(data) - start_of_scan))
    media_path(demo, example).write_bytes(data[:start_of_scan] + garbage + b"\xff\xd9")
    result = stage_one(demo, example, tmp_path / "bucket")
    assert isinstance(result, NotStaged) and result.reason == "image could not be decoded"
    assert not (tmp_path / "bucket" / "runs").exists()


def test_truncated_png_is_not_staged(demo: DemoRun, tmp_path: Path) -> None:
    example = examples(demo)[0]
    out = io.BytesIO()
    Image.effect_noise((120, 90), 40).convert("RGB").save(out, format="PNG")
    media_path(demo, example).write_bytes(out.getvalue()[: len(out.getvalue()) // 2])
    result = stage_one(demo, example, tmp_path / "bucket")
    assert isinstance(result, NotStaged) and result.reason == "image could not be decoded"


def test_a_large_jpeg_is_decoded_at_a_reduced_scale(demo: DemoRun, tmp_path: Path) -> None:
    """Bounded memory: a JPEG is checked by decoding it at 1/8 scale (every coefficient is still read)."""
    example = replace(examples(demo)[0], width=None, height=None)
    out = io.BytesIO()
    Image.effect_noise((2400, 1600), 40).convert("RGB").save(out, format="JPEG", quality=80)
    media_path(demo, example).write_bytes(out.getvalue())
    decoded: list[tuple[int, int]] = []
    original = ImageFile.ImageFile.load

    def spy(self: ImageFile.ImageFile) -> Any:
        result = original(self)
        decoded.append(self.size)
        return result

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(ImageFile.ImageFile, "load", spy)
        staged = stage_one(demo, example, tmp_path / "bucket")
    assert isinstance(staged, StagedImage) and (staged.width, staged.height) == (2400, 1600)
    assert decoded and max(w * h for w, h in decoded) <= 2400 * 1600 // 64


# -- 9. a row whose boxes are all bad says why -------------------------------------------------------------


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


# -- 10. an unknown split value is kept unassigned, and named --------------------------------------------------


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


def test_unknown_split_values_reach_the_counts_with_bounded_examples() -> None:
    quality = DataQuality(Task.OBJECT_DETECTION)
    for i in range(30):
        quality.warn("unknown split value", f"crow{i:03d}", "'VALIDATON'" if i % 2 else f"'weird-{i}'")
    data = quality.to_dict()
    assert data["warnings"] == {"unknown split value": 30}
    shown = data["examples"]["unknown split value"]
    assert len(shown) == 5 and "crow001: 'VALIDATON'" in shown
    assert len([s for s in shown if "VALIDATON" in s]) == 1  # distinct details, not five of the same


# -- 12. object keys never leave the run's images folder ---------------------------------------------------------


@pytest.mark.parametrize(
    "data_row_id",
    ["../../etc/passwd", "../other-run/images/cabc", "/abs", "a/b", ".", "..", "~x", "cat.jpg", "sp ace", "ü"],
)
def test_no_id_leaves_the_runs_images_folder(demo: DemoRun, tmp_path: Path, data_row_id: str) -> None:
    example = replace(examples(demo)[0], data_row_id=data_row_id)
    staged = stage_one(demo, example, tmp_path / "bucket")
    assert isinstance(staged, StagedImage)
    folder, _, name = staged.key.rpartition("/")
    assert folder == f"runs/{RUN_ID}/images"
    assert name.startswith("~") and name.endswith(".jpg") and "/" not in name and ".." not in name
    files = [p.relative_to(tmp_path / "bucket").as_posix() for p in (tmp_path / "bucket").rglob("*") if p.is_file()]
    assert files == [staged.key]


def test_cuid_ids_keep_their_readable_name(demo_template: DemoRun, tmp_path: Path) -> None:
    example = examples(demo_template)[0]
    staged = stage_one(demo_template, example, tmp_path / "bucket")
    assert isinstance(staged, StagedImage) and staged.key == f"runs/{RUN_ID}/images/{example.data_row_id}.jpg"


def test_different_ids_never_share_a_key(demo_template: DemoRun, tmp_path: Path) -> None:
    ids = ["a/b", "a_b", "a%2Fb", "A/B", "a/b ", "~a", "-", "_", "x" * 128, "x" * 129, "cabc", "CABC"]
    todo = [replace(examples(demo_template)[0], data_row_id=i) for i in ids]
    with stager(demo_template, tmp_path / "bucket") as s:
        staged = s.stage_many(todo)
    keys = [image.key for image in staged if isinstance(image, StagedImage)]
    assert len(keys) == len(ids) == len(set(keys))


# -- 13. unprintable and huge ids are named, not reported as an exception ---------------------------------------


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


# -- 14. the real image size wins over the declared one ------------------------------------------------------------


def test_real_size_wins_over_the_declared_size_and_the_difference_is_reported(
    demo_template: DemoRun, tmp_path: Path
) -> None:
    example = replace(examples(demo_template)[0], width=1000, height=1000)
    first = stage_one(demo_template, example, tmp_path / "bucket")
    again = stage_one(demo_template, example, tmp_path / "bucket")  # reused: still the real size
    for staged, copied in ((first, True), (again, False)):
        assert isinstance(staged, StagedImage) and staged.copied is copied
        assert (staged.width, staged.height, staged.declared_size) == (160, 160, (1000, 1000))
    same = stage_one(demo_template, replace(example, width=160, height=160), tmp_path / "b2")
    assert isinstance(same, StagedImage) and same.declared_size is None


# -- 15. one reason per kind; the file names and URLs go to a bounded list of examples -----------------------------


def test_missing_files_share_one_reason_and_the_path_is_the_detail(
    demo: DemoRun, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("time.sleep", lambda s: None)
    todo = examples(demo)[:2]
    for example in todo:
        media_path(demo, example).unlink()
    with stager(demo, tmp_path / "bucket", attempts=1) as s:
        results = s.stage_many(todo)
    assert [r.reason for r in results if isinstance(r, NotStaged)] == ["image not found"] * 2
    assert [r.detail for r in results if isinstance(r, NotStaged)] == [e.media_url for e in todo]


@pytest.fixture
def http_404() -> Iterator[str]:
    class NotFoundHandler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(404)
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), NotFoundHandler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def test_http_404_is_one_kind_and_the_url_loses_its_query(demo: DemoRun, tmp_path: Path, http_404: str) -> None:
    todo = [
        replace(examples(demo)[i], media_url=f"{http_404}/img-{i}.jpg?X-Goog-Signature=secret{i}") for i in range(2)
    ]
    with stager(demo, tmp_path / "bucket", attempts=1) as s:
        results = s.stage_many(todo)
    assert all(isinstance(r, NotStaged) for r in results)
    assert [r.reason for r in results] == ["image download failed (HTTP 404)"] * 2
    assert [r.detail for r in results] == [f"{http_404}/img-{i}.jpg" for i in range(2)]


@pytest.mark.parametrize(
    ("message", "reason", "detail"),
    [
        # the local platform's messages
        ("media file not found: media/a.jpg", "image not found", "media/a.jpg"),
        ("media download failed with HTTP 404: https://x.test/a.jpg", "image download failed (HTTP 404)", None),
        (
            "media download failed (ConnectionError): https://x.test/a.jpg",
            "image download failed (ConnectionError)",
            None,
        ),
        ("media path '../x.jpg' leaves the model run folder", "image path leaves the model run folder", None),
        # the Labelbox adapter's (its URLs already without the query; any left here is cut)
        ("downloading https://x.test/a.jpg?sig=1 failed: HTTP 403 Forbidden", "image download failed (HTTP 403)", None),
        (
            "downloading https://x.test/a.jpg failed: ReadTimeout: timed out",
            "image download failed (ReadTimeout)",
            None,
        ),
        (
            "downloading https://x.test/a.jpg broke off: ChunkedEncodingError: x",
            "image download failed (ChunkedEncodingError)",
            None,
        ),
        ("the data row's media is not an http(s) URL: 's3://b/a.jpg'", "image URL is not http(s)", None),
        ("something else entirely", "image download failed", "something else entirely"),
    ],
)
def test_download_errors_become_one_reason_per_kind(message: str, reason: str, detail: str | None) -> None:
    from shared.dataset.image_staging import download_problem

    got_reason, got_detail = download_problem(message)
    assert got_reason == reason
    if detail is not None:
        assert got_detail == detail
    if "https://" in message:  # the URL, or the whole message (an exception's own words help) holding it
        assert "https://x.test/a.jpg" in got_detail and "sig=" not in got_detail


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


# -- 16. every reason reaches the model run's status metadata ----------------------------------------------------


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


# -- 17. rare labels are dropped by default, and the setting can make them fail the run -----------------------------


def test_rare_labels_are_the_imported_labels_under_ten_images() -> None:
    quality = DataQuality(Task.OBJECT_DETECTION)
    for _ in range(10):
        quality.keep(Split.TRAINING, ["cat", "cat"])
    for _ in range(9):
        quality.keep(Split.TEST, ["dog"])
    for _ in range(30):
        quality.keep(Split.UNASSIGNED, ["dog", "yak"])  # unassigned rows never train
    assert quality.rare_labels() == {"dog": 9}


@pytest.mark.parametrize(("value", "expected"), [(None, "drop"), ("drop", "drop"), ("fail", "fail")])
def test_etl_rare_labels_setting(value: str | None, expected: str) -> None:
    env = {
        "WEBHOOK_SECRET": "a-webhook-secret-for-the-tests",
        **{f"{s}_URL": f"http://127.0.0.1:9/{s}" for s in ("ETL", "TRAIN", "MONITOR", "INFERENCE")},
    }
    if value is not None:
        env["ETL_RARE_LABELS"] = value
    assert load_settings(env).etl.rare_labels == expected
    with pytest.raises(ConfigError, match="ETL_RARE_LABELS must be one of drop, fail, got 'sometimes'"):
        load_settings({**env, "ETL_RARE_LABELS": "sometimes"})


def test_boxes_are_kept_as_given_when_the_row_is_fine() -> None:
    # a guard for the changes above: a good row converts as before, with no warnings
    result = converted(make_row(objects=[box("cat", 10, 20, 30, 40)]))
    assert result.example.boxes == (PixelBox("cat", 10, 20, 30, 40),) and result.warnings == ()
