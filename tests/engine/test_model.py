"""Checkpoints: what is saved is what is loaded, and a file that is not one is refused."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from shared.engine.model import ModelConfig, build_model, load_checkpoint, save_checkpoint


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
