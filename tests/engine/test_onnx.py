"""ONNX export and the onnxruntime runner: the eager network's outputs and prediction lines, a dynamic
batch axis, and a missing or broken file named in the failure whenever onnx was asked for."""

from __future__ import annotations

import json
from pathlib import Path

import onnx
import pytest
import torch
from torch import nn

from shared.engine import worker
from shared.engine.job_folders import CHECKPOINT, ONNX_MODEL
from shared.engine.model import BACKBONES, LoadedModel, ModelConfig, build_model, save_checkpoint
from shared.engine.onnx_model import TOLERANCE, OnnxRunner, export_onnx, runner_for
from shared.engine.predict import PredictionJob, Predictor, run_batch_prediction
from tests.engine.engine_data import TinyData, tiny_data

CPU = torch.device("cpu")
CLASSES = ["disc", "square"]
TASKS = ["object_detection", "single_label_classification"]


def _loaded(task: str, backbone: str = "scratch") -> LoadedModel:
    """An untrained tiny network whose batch norms are not the identity, as after training."""
    torch.manual_seed(0)
    config = ModelConfig(task, len(CLASSES), input_size=32, width=8, backbone=backbone)
    model = build_model(config).eval()
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.BatchNorm2d):
                assert module.running_mean is not None and module.running_var is not None
                module.running_mean.uniform_(-0.5, 0.5)
                module.running_var.uniform_(0.5, 2.0)
    return LoadedModel(model, config, list(CLASSES), {})


@pytest.fixture(scope="module", params=[(t, b) for b in BACKBONES for t in TASKS], ids="-".join)
def exported(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> tuple[LoadedModel, Path]:
    loaded = _loaded(*request.param)
    path = tmp_path_factory.mktemp("onnx") / ONNX_MODEL
    export_onnx(loaded, path)
    return loaded, path


@pytest.fixture
def data(tmp_path: Path) -> TinyData:
    return tiny_data(tmp_path / "bucket", count=8)


def _as_tuple(out: torch.Tensor | tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, ...]:
    return (out,) if isinstance(out, torch.Tensor) else out


@pytest.mark.parametrize("batch", [1, 5])
def test_the_exported_network_gives_the_eager_outputs_at_any_batch_size(
    exported: tuple[LoadedModel, Path], batch: int
) -> None:
    loaded, path = exported
    runner = OnnxRunner(path, loaded.config)
    x = torch.randn(batch, 3, 32, 32, generator=torch.Generator().manual_seed(batch))
    with torch.no_grad():
        want = _as_tuple(loaded.model(x))
    got = _as_tuple(runner(x))
    assert len(got) == (3 if loaded.config.is_detection else 1)
    for a, b in zip(want, got, strict=True):
        assert a.shape == b.shape and a.shape[0] == batch
        assert torch.allclose(a, b, rtol=TOLERANCE, atol=TOLERANCE), (a - b).abs().max()
    metadata = {p.key: p.value for p in onnx.load(str(path)).metadata_props}
    assert json.loads(metadata["classes"]) == CLASSES and metadata["task"] == loaded.config.task


def test_batch_prediction_through_onnx_writes_the_torch_lines(
    exported: tuple[LoadedModel, Path], data: TinyData
) -> None:
    loaded, path = exported
    instances = data.instances()
    outputs = {}
    for name, runner in (("torch", None), ("onnx", OnnxRunner(path, loaded.config))):
        job = PredictionJob(instances, f"gs://local-bucket/out/{name}", confidence_threshold=0.0, max_predictions=5)
        run_batch_prediction(Predictor(loaded, CPU, runner), data.store, job)
        text = data.store.read(f"out/{name}/predictions_00001.jsonl").decode()
        outputs[name] = [json.loads(line) for line in text.splitlines()]
    torch_lines, onnx_lines = outputs["torch"], outputs["onnx"]
    assert len(torch_lines) == len(data.images) == len(onnx_lines)
    for want, got in zip(torch_lines, onnx_lines, strict=True):
        assert got["instance"] == want["instance"]
        p, q = want["prediction"], got["prediction"]
        assert q["displayNames"] == p["displayNames"] and q["ids"] == p["ids"]
        assert q["confidences"] == pytest.approx(p["confidences"], abs=TOLERANCE)
        if "bboxes" in p:
            assert len(q["bboxes"]) == len(p["bboxes"]) > 0
            for a, b in zip(p["bboxes"], q["bboxes"], strict=True):
                assert b == pytest.approx(a, abs=TOLERANCE)


def test_runtime_onnx_never_falls_back_and_names_a_missing_or_broken_file(
    exported: tuple[LoadedModel, Path], tmp_path: Path
) -> None:
    loaded, good = exported
    missing = tmp_path / "gone" / ONNX_MODEL
    with pytest.raises(FileNotFoundError, match=str(missing)):
        runner_for(loaded, missing, "onnx", CPU)
    garbage = tmp_path / "garbage.onnx"
    garbage.write_bytes(b"not a model")
    truncated = tmp_path / "truncated.onnx"
    truncated.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    for broken in (garbage, truncated):
        with pytest.raises(ValueError, match=f"{broken} cannot be loaded"):
            runner_for(loaded, broken, "onnx", CPU)
    other = _loaded("multi_label_classification" if loaded.config.is_detection else "object_detection")
    with pytest.raises(ValueError, match=f"{good} does not fit the checkpoint"):
        runner_for(other, good, "onnx", CPU)
    with pytest.raises(ValueError, match="runtime must be one of auto, torch, onnx"):
        runner_for(loaded, good, "tensorrt", CPU)


def test_runtime_auto_takes_onnx_on_cpu_when_it_loads_and_torch_otherwise(
    exported: tuple[LoadedModel, Path], tmp_path: Path
) -> None:
    loaded, good = exported
    assert isinstance(runner_for(loaded, good, "auto", CPU), OnnxRunner)
    assert isinstance(runner_for(loaded, good, "onnx", CPU), OnnxRunner)
    assert runner_for(loaded, good, "torch", CPU) is None
    assert runner_for(loaded, good, "auto", torch.device("cuda")) is None  # the GPU beats onnxruntime's CPU
    assert runner_for(loaded, tmp_path / "none.onnx", "auto", CPU) is None
    (tmp_path / "bad.onnx").write_bytes(b"junk")
    assert runner_for(loaded, tmp_path / "bad.onnx", "auto", CPU) is None


def test_a_failed_export_keeps_the_checkpoint_and_says_why(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    loaded = _loaded("object_detection")
    save_checkpoint(tmp_path / CHECKPOINT, loaded.model, loaded.config, loaded.classes)

    def fail(_loaded: LoadedModel, _path: Path) -> None:
        raise RuntimeError("no exporter for this operator")

    monkeypatch.setattr("shared.engine.onnx_model.export_onnx", fail)
    assert worker._export(tmp_path) == {"onnx_error": "RuntimeError: no exporter for this operator"}
    assert (tmp_path / CHECKPOINT).is_file() and not (tmp_path / ONNX_MODEL).exists()

    def cancelled(_loaded: LoadedModel, _path: Path) -> None:
        raise worker.Terminated("terminated by SIGTERM")

    monkeypatch.setattr("shared.engine.onnx_model.export_onnx", cancelled)
    with pytest.raises(worker.Terminated):  # a cancel during the export still cancels the job
        worker._export(tmp_path)
