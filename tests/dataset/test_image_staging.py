"""Staging a demo model run's images into the bucket folder, with the real folder store and local platform."""

from __future__ import annotations

import io
import struct
import time
import zlib
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest
from PIL import Image

from shared.dataset.image_staging import ImageStager, NotStaged, StagedImage
from shared.domain.examples import Example
from shared.domain.model_types import Task
from shared.formats.labelbox_export import Converted, example_from_row
from shared.platform.local_model_run import LocalModelRuns
from shared.store.local_folder import LocalFolderStore
from tests.core.conftest import DemoRun

RUN_ID = "run-1"


class CountingModelRuns(LocalModelRuns):
    """The real local platform, counting how often media is opened."""

    def __init__(self, root: Path) -> None:
        super().__init__(root)
        self.opened: list[str] = []

    def open_media(self, row_data: str, *, model_run_id: str | None = None) -> Iterator[bytes]:
        self.opened.append(row_data)
        return super().open_media(row_data, model_run_id=model_run_id)


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
        key = f"runs/{RUN_ID}/images/{example.data_row_id}.jpg"
        assert image == StagedImage(key, f"gs://local-bucket/{key}", 160, 160, "image/jpeg", copied=True)
        assert (tmp_path / "bucket" / key).read_bytes() == media_path(demo_template, example).read_bytes()
    assert sorted(p.name for p in (tmp_path / "bucket" / "runs" / RUN_ID / "images").iterdir()) == sorted(
        f"{e.data_row_id}.jpg" for e in todo
    )


def test_second_run_reuses_every_object_without_rewriting_it(demo_template: DemoRun, tmp_path: Path) -> None:
    bucket = tmp_path / "bucket"
    todo = examples(demo_template)
    with stager(demo_template, bucket) as s:
        first = s.stage_many(todo)
    files = sorted((bucket / "runs" / RUN_ID / "images").iterdir())
    stamps = {p: p.stat().st_mtime_ns for p in files}
    platform = CountingModelRuns(demo_template.root)
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
    key = f"runs/{RUN_ID}/images/{example.data_row_id}.png"
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
    platform = CountingModelRuns(demo.root)
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
