"""The demo model run generator: its two scenes, and that the demo scene is the one the README measured."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from PIL import Image

from shared.demo import DEMO, HARD, create_demo_model_run


def _rows(folder: Path) -> list[dict]:
    return [json.loads(line) for line in (folder / "export.ndjson").read_text().splitlines()]


def _boxes(row: dict) -> list[dict]:
    run = next(iter(next(iter(row["experiments"].values()))["runs"].values()))
    return [o["bounding_box"] for o in run["labels"][0]["annotations"]["objects"]]


def test_the_hard_scene_has_large_pictures_with_several_small_objects(tmp_path: Path) -> None:
    folder = create_demo_model_run(tmp_path, images=12, seed=3, scene=HARD)
    rows = _rows(folder)
    assert len(rows) == 12
    counts = []
    for row in rows:
        assert row["media_attributes"]["width"] == 640 and row["media_attributes"]["height"] == 480
        with Image.open(folder / row["data_row"]["row_data"]) as img:
            assert img.size == (640, 480)
        boxes = _boxes(row)
        counts.append(len(boxes))
        for box in boxes:
            assert 12 <= box["width"] <= 64 and box["width"] == box["height"]
            assert box["left"] + box["width"] <= 640 and box["top"] + box["height"] <= 480
    assert min(counts) >= 2 and max(counts) >= 6


def test_each_scene_is_the_same_for_a_seed_and_scenes_do_not_share_a_model_run(tmp_path: Path) -> None:
    first = create_demo_model_run(tmp_path / "a", images=5, seed=3, scene=HARD)
    again = create_demo_model_run(tmp_path / "b", images=5, seed=3, scene=HARD)
    assert first.name == again.name
    assert (first / "export.ndjson").read_bytes() == (again / "export.ndjson").read_bytes()
    assert create_demo_model_run(tmp_path / "c", images=5, seed=3, scene=DEMO).name != first.name


def test_the_demo_scene_is_unchanged_so_the_readme_figures_still_hold(tmp_path: Path) -> None:
    """The digest of the README's demo (seed 7, 300 images, pinned Pillow): a change to the generator
    that moved one pixel of it would silently change every figure the README states."""
    folder = create_demo_model_run(tmp_path, images=300, seed=7)
    digest = hashlib.sha256()
    digest.update((folder / "export.ndjson").read_bytes())
    for path in sorted((folder / "media").iterdir()):
        digest.update(path.read_bytes())
    assert folder.name == "69cb9cb0-481d-4e56-b6d2-bf52ff9f8eb4"
    assert digest.hexdigest() == DEMO_DIGEST


DEMO_DIGEST = "f36b85eae14800f7b7e4d380c39d55b67ca506973e3172807fa5b35dfaddae86"  # from the generator before scenes


def test_unlabeled_rows_come_after_the_labeled_ones_and_leave_them_unchanged(tmp_path: Path) -> None:
    plain = create_demo_model_run(tmp_path / "a", images=10, seed=5)
    more = create_demo_model_run(tmp_path / "b", images=10, seed=5, unlabeled=4)
    rows = _rows(more)
    assert rows[:10] == _rows(plain)
    for row in rows[10:]:
        run = next(iter(next(iter(row["experiments"].values()))["runs"].values()))
        assert "labels" not in run and "split" not in run
        assert (more / row["data_row"]["row_data"]).is_file()
    assert len({row["data_row"]["id"] for row in rows}) == 14
