"""Training, checkpoints, metrics and the batch-prediction writer, in process on tiny data."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from shared.engine.metrics import ImageDetections, ImageTruth, coco_map
from shared.engine.model import LoadedModel, ModelConfig, build_model, load_checkpoint, save_checkpoint
from shared.engine.predict import PredictionJob, Predictor, run_batch_prediction
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


def test_checkpoint_round_trip_keeps_weights_classes_and_config(tmp_path: Path) -> None:
    config = ModelConfig("multi_label_classification", 3, input_size=32, width=8)
    model = build_model(config)
    save_checkpoint(tmp_path / "m.pt", model, config, ["a", "b", "c"], display_name="x")
    loaded = load_checkpoint(tmp_path / "m.pt")
    assert loaded.config == config and loaded.classes == ["a", "b", "c"] and loaded.meta["display_name"] == "x"
    for name, tensor in model.state_dict().items():
        assert torch.equal(tensor, loaded.model.state_dict()[name])
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(Exception):  # noqa: B017 - torch raises its own unpickling errors
        load_checkpoint(tmp_path / "junk.pt")


def test_read_dataset_skips_bad_lines_by_reason_and_keeps_splits(data: TinyData) -> None:
    good = json.loads(data.store.read(data.store.key_from_uri(data.detection_import())).decode().splitlines()[0])
    uri = data.write_jsonl("runs/tiny/mixed.jsonl", [good, "{broken", json.dumps({"imageGcsUri": 3}), good])
    dataset = read_dataset(data.store, uri, "object_detection")
    assert len(dataset.training) == 2
    assert sum(dataset.skipped.values()) == 2
    assert dataset.classes == sorted({b[0] for b in dataset.training[0].boxes})


def _untrained_predictor(task: str, classes: list[str]) -> Predictor:
    torch.manual_seed(0)
    config = ModelConfig(task, len(classes), input_size=32, width=8)
    return Predictor(LoadedModel(build_model(config).eval(), config, classes, {}), CPU)


def test_batch_prediction_writes_failed_instances_to_errors_files_and_splits_files(data: TinyData) -> None:
    data.store.write("runs/tiny/images/not-an-image.jpg", b"hello")
    uris = list(data.images)
    lines = [
        json.dumps({"content": uris[0], "mimeType": "image/jpeg"}),
        "not json at all",
        json.dumps({"content": "gs://local-bucket/runs/tiny/images/not-an-image.jpg", "mimeType": "image/jpeg"}),
        json.dumps({"content": "gs://another-bucket/a.jpg", "mimeType": "image/jpeg"}),
        json.dumps({"content": "gs://local-bucket/runs/tiny/images/gone.jpg", "mimeType": "image/jpeg"}),
        json.dumps({"content": uris[1], "mimeType": "image/jpeg"}),
        json.dumps({"mimeType": "image/jpeg"}),
    ]
    job = PredictionJob(
        data.write_jsonl("runs/tiny/bad_instances.jsonl", lines),
        "gs://local-bucket/out/prediction-m-2026-01-01T00:00:00.000Z",
        confidence_threshold=0.0,
        max_predictions=2,
        batch_size=3,
        lines_per_file=3,
    )
    summary = run_batch_prediction(_untrained_predictor("object_detection", ["disc", "square"]), data.store, job)
    assert summary["instances"] == 7 and summary["errors"] == 5 and summary["files"] == 1
    keys = list(data.store.list("out/"))
    names = [k.rsplit("/", 1)[1] for k in keys]
    assert names == ["errors_00001.jsonl", "errors_00002.jsonl", "predictions_00001.jsonl"]

    def lines(name: str) -> list[dict]:
        return [json.loads(line) for line in data.store.read(f"{keys[0].rsplit('/', 1)[0]}/{name}").splitlines()]

    errors = lines("errors_00001.jsonl") + lines("errors_00002.jsonl")
    predicted = lines("predictions_00001.jsonl")
    assert ["error" in line for line in errors] == [True] * 5 and ["error" in line for line in predicted] == [False] * 2
    assert all(line["error"]["code"] == 3 for line in errors)
    assert errors[0]["instance"] == "not json at all"
    assert "not a readable image" in errors[1]["error"]["message"]
    assert "another-bucket" in errors[2]["error"]["message"]
    assert "does not exist" in errors[3]["error"]["message"]
    assert errors[4]["instance"] == {"mimeType": "image/jpeg"}
    assert predicted[0]["instance"] == {"content": uris[0], "mimeType": "image/jpeg"}
    assert len(predicted[0]["prediction"]["bboxes"]) == 2  # threshold 0: capped by max_predictions


def test_empty_instances_still_give_one_output_file(data: TinyData) -> None:
    job = PredictionJob(data.write_jsonl("runs/tiny/none.jsonl", []), "gs://local-bucket/out/p", 0.5, 10)
    run_batch_prediction(_untrained_predictor("single_label_classification", ["a", "b"]), data.store, job)
    assert list(data.store.list("out/p/")) == ["out/p/predictions_00001.jsonl"]


def test_coco_map_is_one_for_perfect_predictions_and_lower_for_misplaced_ones() -> None:
    truths = [ImageTruth(100, 100, [("a", (0.1, 0.1, 0.4, 0.4)), ("b", (0.5, 0.5, 0.9, 0.9))])]
    perfect = [ImageDetections([("a", 0.9, (0.1, 0.1, 0.4, 0.4)), ("b", 0.8, (0.5, 0.5, 0.9, 0.9))])]
    assert coco_map(truths, perfect) == (pytest.approx(1.0), pytest.approx(1.0))
    shifted = [ImageDetections([("a", 0.9, (0.15, 0.1, 0.45, 0.4)), ("b", 0.8, (0.1, 0.1, 0.2, 0.2))])]
    map50, map_coco = coco_map(truths, shifted)
    assert 0.0 < map50 < 1.0 and map_coco < map50
    assert coco_map(truths, [ImageDetections([])]) == (0.0, 0.0)
    assert coco_map([ImageTruth(10, 10, [])], [ImageDetections([])]) == (None, None)


def test_the_adapter_knows_exactly_the_engine_settings_it_may_override() -> None:
    from dataclasses import fields

    from shared.training.local_engine import PREDICTION_SETTINGS, TRAIN_SETTINGS

    fixed_by_the_job = {"task", "import_uri", "seed", "max_steps", "train_seconds", "display_name"}
    assert {f.name for f in fields(TrainSettings)} - fixed_by_the_job == TRAIN_SETTINGS
    assert {f.name for f in fields(PredictionJob)} - {
        "instances_uri",
        "output_dir_uri",
        "confidence_threshold",
        "max_predictions",
    } == PREDICTION_SETTINGS
