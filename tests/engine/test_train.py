"""Training on tiny data in process: the wall-time budget and reading the import JSONL."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from shared.engine.train import TrainSettings, read_dataset, train
from tests.engine.engine_data import TINY_TRAIN, TinyData, tiny_data

CPU = torch.device("cpu")


@pytest.fixture
def data(tmp_path: Path) -> TinyData:
    return tiny_data(tmp_path / "bucket", count=8)


def test_wall_time_mode_stops_at_the_first_step_past_the_budget(data: TinyData, tmp_path: Path) -> None:
    settings = TrainSettings("object_detection", data.detection_import(), train_seconds=0.5, **TINY_TRAIN)
    progress: list[dict] = []
    summary = train(settings, data.store, tmp_path / "model.pt", device=CPU, report=progress.append)
    assert summary["step"] >= 1
    assert summary["elapsed_s"] >= 0.5
    assert progress[-1]["step"] == summary["step"]
    assert (tmp_path / "model.pt").is_file()


def test_read_dataset_skips_bad_lines_by_reason_and_keeps_splits(data: TinyData) -> None:
    good = json.loads(data.store.read(data.store.key_from_uri(data.detection_import())).decode().splitlines()[0])
    uri = data.write_jsonl("runs/tiny/mixed.jsonl", [good, "{broken", json.dumps({"imageGcsUri": 3}), good])
    dataset = read_dataset(data.store, uri, "object_detection")
    assert len(dataset.training) == 2
    assert sum(dataset.skipped.values()) == 2
    assert dataset.classes == sorted({b[0] for b in dataset.training[0].boxes})
