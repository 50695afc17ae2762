"""Staging a demo model run's images into the bucket folder, with the real folder store and local platform.

At the end, the bad-row cases of issue 15 that staging decides: corrupt images, object keys derived from ids,
the real image size over the declared one, one reason per kind of download problem. The whole ETL stage is
exercised in `tests/stages/test_etl.py`.
"""

from __future__ import annotations

import http.server
import io
import struct
import threading
import time
import zlib
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from PIL import Image, ImageFile

from shared.dataset.image_staging import ImageStager, NotStaged, StagedImage
from shared.domain.examples import Example
from shared.domain.model_types import Task
from shared.formats.labelbox_export import Converted, example_from_row
from shared.platform.local_model_run import LocalModelRuns
from shared.store.local_folder import LocalFolderStore
from tests.demo_run import DemoRun
from tests.fakes import RecordingModelRuns

RUN_ID = "run-1"
SHARD = 3  # an ETL shard: its images have a folder of their own


def examples(demo: DemoRun) -> list[Example]:
    out = []
    for row in demo.rows():
        result = example_from_row(row, model_run_id=demo.model_run_id, task=Task.OBJECT_DETECTION)
        assert isinstance(result, Converted)
        out.append(result.example)
    return out


def stager(
    demo: DemoRun,
    bucket: Path,
    *,
    max_bytes: int = 30 * 2**20,
    max_pixels: int = 100_000_000,
    attempts: int = 3,
    platform: LocalModelRuns | None = None,
) -> ImageStager:
    return ImageStager(
        LocalFolderStore(bucket),
        platform or LocalModelRuns(demo.root),
        run_id=RUN_ID,
        model_run_id=demo.model_run_id,
        max_bytes=max_bytes,
        max_pixels=max_pixels,
        concurrency=4,
        shard=SHARD,
        attempts=attempts,
    )


def stage_one(
    demo: DemoRun,
    example: Example,
    bucket: Path,
    *,
    max_bytes: int = 30 * 2**20,
    max_pixels: int = 100_000_000,
    attempts: int = 3,
    platform: LocalModelRuns | None = None,
) -> StagedImage | NotStaged:
    limits = {"max_bytes": max_bytes, "max_pixels": max_pixels, "attempts": attempts}
    with stager(demo, bucket, **limits, platform=platform) as s:
        return s.stage(example)


def media_path(demo: DemoRun, example: Example) -> Path:
    return demo.folder / example.media_url


def image_bytes(fmt: str, size: tuple[int, int] = (40, 30)) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", size, (200, 30, 30)).save(out, format=fmt)
    return out.getvalue()


def png_header(width: int, height: int) -> bytes:
    """A PNG whose header claims `width` x `height`: all a decompression bomb needs to be caught by."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"")) + chunk(b"IEND", b"")


# -- staging the demo run ----------------------------------------------------------------------------------


def test_images_are_staged_under_the_run_with_their_size(demo_template: DemoRun, tmp_path: Path) -> None:
    todo = examples(demo_template)
    with stager(demo_template, tmp_path / "bucket") as s:
        staged = s.stage_many(todo)
    assert len(staged) == len(todo)
    for example, image in zip(todo, staged, strict=True):
        assert isinstance(image, StagedImage), image
        key = f"runs/{RUN_ID}/images/{SHARD:05d}/{example.data_row_id}.jpg"
        assert image == StagedImage(key, f"gs://local-bucket/{key}", 160, 160, "image/jpeg", copied=True)
        assert (tmp_path / "bucket" / key).read_bytes() == media_path(demo_template, example).read_bytes()
    assert sorted(
        p.name for p in (tmp_path / "bucket" / "runs" / RUN_ID / "images" / f"{SHARD:05d}").iterdir()
    ) == sorted(f"{e.data_row_id}.jpg" for e in todo)


def test_second_run_reuses_every_object_without_rewriting_it(demo_template: DemoRun, tmp_path: Path) -> None:
    bucket = tmp_path / "bucket"
    todo = examples(demo_template)
    with stager(demo_template, bucket) as s:
        first = s.stage_many(todo)
    files = sorted((bucket / "runs" / RUN_ID / "images").iterdir())
    stamps = {p: p.stat().st_mtime_ns for p in files}
    platform = RecordingModelRuns(demo_template.root)
    with stager(demo_template, bucket, platform=platform) as s:
        second = s.stage_many(todo)
    assert [replace(i, copied=True) for i in second if isinstance(i, StagedImage)] == first
    assert all(isinstance(i, StagedImage) and not i.copied for i in second)
    assert platform.opened == []
    assert {p: p.stat().st_mtime_ns for p in files} == stamps


def test_size_is_read_from_the_image_when_the_export_has_none(demo_template: DemoRun, tmp_path: Path) -> None:
    example = replace(examples(demo_template)[0], width=None, height=None)
    first = stage_one(demo_template, example, tmp_path / "bucket")
    again = stage_one(demo_template, example, tmp_path / "bucket")
    assert isinstance(first, StagedImage) and isinstance(again, StagedImage)
    assert (first.width, first.height, first.copied) == (160, 160, True)
    assert (again.width, again.height, again.copied) == (160, 160, False)


def test_changed_source_is_copied_again(demo: DemoRun, tmp_path: Path) -> None:
    example = examples(demo)[0]
    stage_one(demo, example, tmp_path / "bucket")
    media_path(demo, example).write_bytes(image_bytes("JPEG", (160, 160)))
    again = stage_one(demo, example, tmp_path / "bucket")
    assert isinstance(again, StagedImage) and again.copied
    assert (tmp_path / "bucket" / again.key).read_bytes() == media_path(demo, example).read_bytes()


def test_png_is_detected_from_its_content_whatever_the_mime_type_says(demo: DemoRun, tmp_path: Path) -> None:
    example = examples(demo)[0]
    assert example.mime_type == "image/jpeg" and example.media_url.endswith(".jpg")
    media_path(demo, example).write_bytes(image_bytes("PNG"))
    staged = stage_one(demo, example, tmp_path / "bucket")
    key = f"runs/{RUN_ID}/images/{SHARD:05d}/{example.data_row_id}.png"
    # the image's own size (40x30), not the 160x160 the export declares for it
    assert staged == StagedImage(
        key, f"gs://local-bucket/{key}", 40, 30, "image/png", copied=True, declared_size=(160, 160)
    )
    assert Image.open(tmp_path / "bucket" / key).format == "PNG"


@pytest.mark.parametrize(("fmt", "ext", "mime"), [("GIF", "gif", "image/gif"), ("BMP", "bmp", "image/bmp")])
def test_other_vertex_formats_are_staged(demo: DemoRun, tmp_path: Path, fmt: str, ext: str, mime: str) -> None:
    example = replace(examples(demo)[0], mime_type=None, width=None, height=None)
    media_path(demo, example).write_bytes(image_bytes(fmt))
    staged = stage_one(demo, example, tmp_path / "bucket")
    assert isinstance(staged, StagedImage)
    assert (staged.key.rsplit(".", 1)[1], staged.mime_type, staged.width, staged.height) == (ext, mime, 40, 30)


# -- images that are not staged --------------------------------------------------------------------------------


def test_corrupt_image_is_not_staged(demo: DemoRun, tmp_path: Path) -> None:
    example = examples(demo)[0]
    media_path(demo, example).write_bytes(b"this is not an image at all" * 10)
    assert stage_one(demo, example, tmp_path / "bucket") == NotStaged("not a readable image")
    assert not (tmp_path / "bucket" / "runs").exists()


def test_empty_image_is_not_staged(demo: DemoRun, tmp_path: Path) -> None:
    example = examples(demo)[0]
    media_path(demo, example).write_bytes(b"")
    assert stage_one(demo, example, tmp_path / "bucket") == NotStaged("image file is empty")


def test_oversize_image_is_not_staged_and_the_limit_is_readable(demo_template: DemoRun, tmp_path: Path) -> None:
    example = examples(demo_template)[0]
    assert media_path(demo_template, example).stat().st_size > 1000
    result = stage_one(demo_template, example, tmp_path / "bucket", max_bytes=1000)
    assert isinstance(result, NotStaged)
    assert result.reason.startswith("image over ") and result.reason.endswith(" MiB")
    assert float(result.reason.split()[2]) == pytest.approx(1000 / 2**20, rel=0.01)  # not "over 0 MiB"
    assert not (tmp_path / "bucket" / "runs").exists()
    big = stage_one(demo_template, example, tmp_path / "bucket2", max_bytes=30 * 2**20)
    assert isinstance(big, StagedImage)


def test_oversize_message_names_the_limit_in_mib(demo: DemoRun, tmp_path: Path) -> None:
    example = examples(demo)[0]
    media_path(demo, example).write_bytes(bytes(2 * 2**20))
    result = stage_one(demo, example, tmp_path / "bucket", max_bytes=3 * 2**19)
    assert result == NotStaged("image over 1.5 MiB")


def test_image_over_the_pixel_limit_is_not_staged(demo_template: DemoRun, tmp_path: Path) -> None:
    example = examples(demo_template)[0]
    result = stage_one(demo_template, example, tmp_path / "bucket", max_pixels=160 * 160 - 1)
    assert result == NotStaged(f"image over {160 * 160 - 1} pixels (decompression bomb guard)")
    assert isinstance(stage_one(demo_template, example, tmp_path / "b2", max_pixels=160 * 160), StagedImage)


def test_decompression_bomb_is_caught_from_the_header_alone(demo: DemoRun, tmp_path: Path) -> None:
    example = examples(demo)[0]
    media_path(demo, example).write_bytes(png_header(30_000, 30_000))  # 900 Mpx in 65 bytes
    result = stage_one(demo, example, tmp_path / "bucket")
    assert result == NotStaged("image over 100000000 pixels (decompression bomb guard)")


@pytest.mark.parametrize("fmt", ["TIFF", "WEBP"])
def test_format_vertex_does_not_train_on_is_named(demo: DemoRun, tmp_path: Path, fmt: str) -> None:
    example = examples(demo)[0]
    media_path(demo, example).write_bytes(image_bytes(fmt))
    assert stage_one(demo, example, tmp_path / "bucket") == NotStaged(f"image format {fmt} is not accepted by Vertex")


def test_missing_media_file_is_not_staged_after_retries(
    demo: DemoRun, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    example = examples(demo)[0]
    media_path(demo, example).unlink()
    waits: list[float] = []
    monkeypatch.setattr(time, "sleep", waits.append)
    platform = RecordingModelRuns(demo.root)
    result = stage_one(demo, example, tmp_path / "bucket", attempts=3, platform=platform)
    assert result == NotStaged("image not found", example.media_url)
    assert platform.opened == [example.media_url] * 3
    assert len(waits) == 2  # a pause between attempts, none after the last one


def test_media_path_outside_the_model_run_is_not_read(demo: DemoRun, tmp_path: Path) -> None:
    secret = demo.root.parent / "outside.jpg"
    secret.write_bytes(image_bytes("JPEG"))
    example = replace(examples(demo)[0], media_url="../outside.jpg")
    result = stage_one(demo, example, tmp_path / "bucket", attempts=1)
    assert isinstance(result, NotStaged)
    assert "leaves the model run folder" in result.reason
    assert not (tmp_path / "bucket" / "runs").exists()


def test_one_bad_image_does_not_stop_the_others(demo: DemoRun, tmp_path: Path) -> None:
    todo = examples(demo)[:5]
    media_path(demo, todo[2]).write_bytes(b"garbage")
    with stager(demo, tmp_path / "bucket") as s:
        results = s.stage_many(todo)
    assert [type(r).__name__ for r in results] == ["StagedImage"] * 2 + ["NotStaged"] + ["StagedImage"] * 2


# -- bad rows (issue 15), 8. corrupt images are decoded at ETL, not only their header read -------------------


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


# -- bad rows (issue 15), 12. object keys never leave the run's images folder --------------------------------


@pytest.mark.parametrize(
    "data_row_id",
    ["../../etc/passwd", "../other-run/images/cabc", "/abs", "a/b", ".", "..", "~x", "cat.jpg", "sp ace", "ü"],
)
def test_no_id_leaves_the_runs_images_folder(demo: DemoRun, tmp_path: Path, data_row_id: str) -> None:
    example = replace(examples(demo)[0], data_row_id=data_row_id)
    staged = stage_one(demo, example, tmp_path / "bucket")
    assert isinstance(staged, StagedImage)
    folder, _, name = staged.key.rpartition("/")
    assert folder == f"runs/{RUN_ID}/images/{SHARD:05d}"  # the shard's folder, whatever the id
    assert name.startswith("~") and name.endswith(".jpg") and "/" not in name and ".." not in name
    files = [p.relative_to(tmp_path / "bucket").as_posix() for p in (tmp_path / "bucket").rglob("*") if p.is_file()]
    assert files == [staged.key]


def test_cuid_ids_keep_their_readable_name(demo_template: DemoRun, tmp_path: Path) -> None:
    example = examples(demo_template)[0]
    staged = stage_one(demo_template, example, tmp_path / "bucket")
    assert (
        isinstance(staged, StagedImage) and staged.key == f"runs/{RUN_ID}/images/{SHARD:05d}/{example.data_row_id}.jpg"
    )


def test_different_ids_never_share_a_key(demo_template: DemoRun, tmp_path: Path) -> None:
    ids = ["a/b", "a_b", "a%2Fb", "A/B", "a/b ", "~a", "-", "_", "x" * 128, "x" * 129, "cabc", "CABC"]
    todo = [replace(examples(demo_template)[0], data_row_id=i) for i in ids]
    with stager(demo_template, tmp_path / "bucket") as s:
        staged = s.stage_many(todo)
    keys = [image.key for image in staged if isinstance(image, StagedImage)]
    assert len(keys) == len(ids) == len(set(keys))


# -- bad rows (issue 15), 14. the real image size wins over the declared one ---------------------------------


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


# -- bad rows (issue 15), 15. one reason per kind; the file names and URLs go to a bounded list of examples ---


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
