"""Training on tiny data in process: the wall-time budget, the pretrained backbone, reading the import JSONL."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from torch import nn

from shared.engine import train as train_module
from shared.engine.augment import normalize
from shared.engine.images import decode_image
from shared.engine.mobilenet import weights_file
from shared.engine.model import CHANNELS_LAST, LoadedModel, load_checkpoint
from shared.engine.predict import Predictor
from shared.engine.train import TrainSettings, backbone_for, input_size_for, read_dataset, train
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


def test_a_detector_on_the_pretrained_backbone_trains_and_predicts_the_same_after_reload(
    data: TinyData, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    trained: list[nn.Module] = []
    save = train_module.save_checkpoint

    def keep(path: Path, model: nn.Module, *args: object, **kwargs: object) -> None:
        trained.append(model)
        save(path, model, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(train_module, "save_checkpoint", keep)
    settings = TrainSettings(
        "object_detection", data.detection_import(), max_steps=3, backbone="mobilenet_v2", **TINY_TRAIN
    )
    summary = train(settings, data.store, tmp_path / "model.pt", device=CPU)
    assert summary["step"] == 3 and "validation_map50" in summary

    loaded = load_checkpoint(tmp_path / "model.pt")
    assert loaded.config.backbone == "mobilenet_v2"
    imagenet = torch.load(weights_file(), weights_only=True)["features.0.0.weight"]
    first = loaded.model.state_dict()["backbone.features.0.0.weight"]
    assert not torch.equal(first, imagenet)  # trained, starting from ImageNet's (3 small warm-up steps away)
    assert (first - imagenet).abs().max() < 0.05 * imagenet.abs().max()
    (model,) = trained  # the network as training left it, never saved and read back
    pixels = torch.stack([decode_image(data.store.read(data.store.key_from_uri(u)), 64).pixels for u in data.images])
    in_memory = Predictor(LoadedModel(model, loaded.config, loaded.classes, {}), CPU)
    reloaded = Predictor(loaded, CPU)  # both channels-last, as training and prediction run
    images = normalize(pixels).contiguous(memory_format=CHANNELS_LAST)
    with torch.no_grad():
        outputs = zip(in_memory.model(images), reloaded.model(images), strict=True)
        assert all(torch.equal(a, b) for a, b in outputs)
    found = in_memory.detect(pixels, threshold=0.0, max_predictions=5)
    assert found == reloaded.detect(pixels, threshold=0.0, max_predictions=5) and found[0]


def test_read_dataset_skips_bad_lines_by_reason_and_keeps_splits(data: TinyData) -> None:
    good = json.loads(data.store.read(data.store.key_from_uri(data.detection_import())).decode().splitlines()[0])
    uri = data.write_jsonl("runs/tiny/mixed.jsonl", [good, "{broken", json.dumps({"imageGcsUri": 3}), good])
    dataset = read_dataset(data.store, uri, "object_detection")
    assert len(dataset.training) == 2
    assert sum(dataset.skipped.values()) == 2
    assert dataset.classes == sorted({b[0] for b in dataset.training[0].boxes})


def test_a_run_that_sets_no_backbone_or_input_gets_the_devices_defaults() -> None:
    """Small and from scratch on a CPU (the demo's 3 minutes); pretrained and larger on a GPU."""
    plain = TrainSettings("object_detection", "gs://b/i.jsonl")
    assert (backbone_for(plain, CPU), input_size_for(plain, CPU)) == ("scratch", 160)
    cuda = torch.device("cuda")  # a device object only: nothing runs on it
    assert (backbone_for(plain, cuda), input_size_for(plain, cuda)) == ("mobilenet_v2", 512)
    chosen = TrainSettings("object_detection", "gs://b/i.jsonl", backbone="scratch", input_size=320)
    assert (backbone_for(chosen, cuda), input_size_for(chosen, cuda)) == ("scratch", 320)


def test_the_summary_says_which_backbone_and_input_the_defaults_chose(data: TinyData, tmp_path: Path) -> None:
    settings = TrainSettings("object_detection", data.detection_import(), max_steps=1, **TINY_TRAIN)
    summary = train(settings, data.store, tmp_path / "model.pt", device=CPU)
    assert (summary["backbone"], summary["input_size"]) == ("scratch", TINY_TRAIN["input_size"])
