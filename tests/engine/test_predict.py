"""The batch-prediction writer, in process on tiny data: output files in Vertex's layout, errors included."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from shared.engine.detection import box_iou
from shared.engine.model import LoadedModel, ModelConfig, build_model, load_checkpoint
from shared.engine.predict import PredictionJob, Predictor, run_batch_prediction
from shared.engine.train import TrainSettings, train
from tests.engine.engine_data import TINY_TRAIN, TinyData, tiny_data

CPU = torch.device("cpu")


@pytest.fixture
def data(tmp_path: Path) -> TinyData:
    return tiny_data(tmp_path / "bucket", count=8)


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


def test_boxes_predicted_on_wide_pictures_land_on_the_objects_in_the_pictures_own_coordinates(tmp_path: Path) -> None:
    """Trained and predicted through the letterbox (the pictures fill half the input's height): a box that
    skipped the mapping back would sit at half its height and miss its object."""
    wide = tiny_data(tmp_path / "wide", count=8, width=128, height=64)
    settings = TrainSettings("object_detection", wide.detection_import(), max_steps=300, **TINY_TRAIN)
    train(settings, wide.store, tmp_path / "model.pt", device=CPU)
    predictor = Predictor(load_checkpoint(tmp_path / "model.pt"), CPU)
    out = wide.uri("runs/tiny/wide-predictions")
    run_batch_prediction(predictor, wide.store, PredictionJob(wide.instances(), out, 0.3, 10))
    lines = [
        json.loads(line)
        for line in wide.store.read(wide.store.key_from_uri(out) + "/predictions_00001.jsonl").decode().splitlines()
    ]
    assert len(lines) == len(wide.images)
    for line in lines:
        prediction = line["prediction"]
        boxes = torch.tensor([[x0, y0, x1, y1] for x0, x1, y0, y1 in prediction["bboxes"]]).reshape(-1, 4)
        for shape in wide.images[line["instance"]["content"]]:
            same = torch.tensor([name == shape.label for name in prediction["displayNames"]], dtype=torch.bool)
            ious = box_iou(boxes[same], torch.tensor([shape.box])).flatten()
            assert len(ious) and float(ious.max()) >= 0.5, (line["instance"]["content"], shape, prediction)
