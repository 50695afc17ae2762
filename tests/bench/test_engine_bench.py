"""The engine bench's eager-against-ONNX measurement on a tiny untrained model, as a test of what it
measures and prints (never of speed)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from bench.engine_bench import _runtime_line, runtime_rates
from shared.engine.model import LoadedModel, ModelConfig, build_model


def test_runtime_rates_measures_both_runtimes_on_the_same_model_and_prints_the_ratio(tmp_path: Path) -> None:
    torch.manual_seed(0)
    config = ModelConfig("object_detection", 2, input_size=32, width=8)
    loaded = LoadedModel(build_model(config).eval(), config, ["a", "b"], {})
    pixels = torch.randint(0, 256, (4, 3, 32, 32), dtype=torch.uint8)
    rates = runtime_rates(loaded, pixels, tmp_path / "model.onnx", rounds=2)
    assert (tmp_path / "model.onnx").is_file()  # the file the onnx side ran
    assert set(rates) == {"eager_images_per_s", "onnx_images_per_s", "onnx_over_eager"}
    assert rates["eager_images_per_s"] > 0 and rates["onnx_images_per_s"] > 0
    assert rates["onnx_over_eager"] == pytest.approx(rates["onnx_images_per_s"] / rates["eager_images_per_s"])
    line = _runtime_line(rates, 2, 4)
    assert f"eager torch {rates['eager_images_per_s']:.1f} images/s" in line
    assert f"onnxruntime {rates['onnx_images_per_s']:.1f} images/s, ratio {rates['onnx_over_eager']:.2f}" in line


@pytest.mark.slow
def test_the_whole_bench_at_a_tiny_size_prints_every_figure_both_backbones_included() -> None:
    """Its correctness, never its speed: the demo part and the hard scene, scratch against pretrained."""
    import subprocess
    import sys

    repo = Path(__file__).resolve().parents[2]
    command = [
        sys.executable,
        "-m",
        "bench.engine_bench",
        *("--images", "40", "--max-steps", "3", "--threads", "1"),
        *("--hard-images", "24", "--hard-steps", "2", "--hard-input-size", "128"),
    ]
    done = subprocess.run(command, capture_output=True, text=True, timeout=600, cwd=repo)
    assert done.returncode == 0, done.stderr[-3000:]
    out = done.stdout
    for needle in ("training (3 steps)", "test split, pycocotools", "untrained:", "eager torch", "onnxruntime"):
        assert needle in out, out
    assert "hard scene: 24 pictures of 640x480 at input 128" in out
    hard = [
        line.split() for line in out.splitlines() if line.startswith("  scratch") or line.startswith("  mobilenet_v2")
    ]
    assert [r[0] for r in hard] == ["scratch", "mobilenet_v2"] and all(r[1] == "2" for r in hard)
    assert "scratch's mAP@0.5" in out and "its speed)" in out
