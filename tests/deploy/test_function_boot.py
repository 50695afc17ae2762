"""Every Cloud Function starts in cloud mode from a venv holding nothing but its staged requirements.txt.

The dev venv holds every package, so a function whose lock lacks a package it imports passes every other
test and fails in the cloud (`cannot import name 'tasks_v2' from 'google.cloud'`). Importing `main` builds
every port the function's stage uses (shared/bootstrap.py does that at start-up, without the network), so
a missing package fails here with its ImportError. The venvs are cached under build/function-envs/.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from .function_envs import (
    BUILD_TIMES,
    REPO,
    FunctionEnvError,
    function_venv,
    runtime_python,
    staged_function,
    venv_python,
)

FUNCTIONS = ("models", "model_run", "etl", "train", "monitor", "inference")
CLOUD_ENV = {
    "CHAIN_MODE": "cloud",
    "GCP_PROJECT": "boot-test-project",
    "GCP_REGION": "us-central1",
    "BUCKET": "boot-test-bucket",
    "TASKS_QUEUE": "boot-test-queue",
    "SERVICE_ACCOUNT_EMAIL": "runtime@boot-test-project.iam.gserviceaccount.com",
    "LABELBOX_API_KEY": "boot-test-labelbox-key",
    "WEBHOOK_SECRET": "boot-test-webhook-secret",
    "ETL_URL": "https://us-central1-boot-test-project.cloudfunctions.net/etl",
    "TRAIN_URL": "https://us-central1-boot-test-project.cloudfunctions.net/train",
    "MONITOR_URL": "https://us-central1-boot-test-project.cloudfunctions.net/monitor",
    "INFERENCE_URL": "https://us-central1-boot-test-project.cloudfunctions.net/inference",
}
# Imports main, then reports where everything came from, so the test can prove the dev venv played no part.
BOOT = """\
import main
import importlib.util, json, sys
import shared
print(json.dumps({"prefix": sys.prefix, "path": sys.path, "shared": shared.__file__,
                  "torch": importlib.util.find_spec("torch") is not None}))
"""


def test_function_list_matches_the_repository() -> None:
    assert sorted(FUNCTIONS) == sorted(p.name for p in (REPO / "functions").iterdir() if (p / "main.py").is_file())


@pytest.fixture(scope="module")
def staged(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("staged")
    for name in FUNCTIONS:
        staged_function(name, out)
    return out


@pytest.fixture(scope="module", autouse=True)
def report_build_times():
    yield
    python = runtime_python()
    print(f"\nfunction-envs: Python {python.version} at {python.path} ({python.why})")
    for label, figures in BUILD_TIMES.items():
        state = "reused" if figures["cached"] else f"built in {figures['build_s']} s"
        print(f"function-envs: {label}: {figures['packages']} packages, {state}")


def boot(function_dir: Path, venv: Path, home: Path) -> tuple[int, str, str]:
    """Runs `python -c "import main"` in `venv` with `function_dir` as the working directory, in cloud mode."""
    env = {
        **CLOUD_ENV,
        "PATH": f"{venv / 'bin'}{os.pathsep}/usr/bin{os.pathsep}/bin",
        "HOME": str(home),  # no gcloud configuration or credentials of the machine's user
        "LANG": "C.UTF-8",
        "PYTHONNOUSERSITE": "1",
    }
    done = subprocess.run(
        [str(venv_python(venv)), "-c", BOOT],
        cwd=function_dir,
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )
    return done.returncode, done.stdout, done.stderr


def _under(path: str, folder: Path) -> bool:
    return Path(path).resolve().is_relative_to(folder.resolve())


@pytest.mark.slow
@pytest.mark.parametrize("name", FUNCTIONS)
def test_each_function_boots_in_cloud_mode_from_its_own_venv(name: str, staged: Path, tmp_path: Path) -> None:
    function_dir = staged / name
    venv = function_venv(function_dir)
    code, out, err = boot(function_dir, venv, tmp_path)
    assert code == 0, f"functions/{name}: `import main` failed in a venv of only its requirements.lock:\n{err}"
    seen = json.loads(out.strip().splitlines()[-1])
    assert _under(seen["prefix"], venv)
    assert _under(seen["shared"], function_dir), "shared/ must come from the staged folder"
    dev = [p for p in seen["path"] if p and not _under(p, venv) and (_under(p, Path(sys.prefix)) or _under(p, REPO))]
    assert not dev, f"the dev venv or the repository leaked into sys.path: {dev}"
    assert not seen["torch"], f"{name}'s venv can import torch"
    assert not list(venv.glob("lib/python*/site-packages/torch*")), f"{name}'s venv holds torch"


@pytest.mark.slow
def test_a_lock_without_a_package_main_imports_fails_the_boot(tmp_path: Path) -> None:
    function_dir = staged_function("model_run", tmp_path / "staged")
    requirements = function_dir / "requirements.txt"
    lines = requirements.read_text().splitlines(keepends=True)
    kept = [line for line in lines if not line.startswith("google-cloud-tasks==")]
    assert len(kept) == len(lines) - 1, "model_run's lock must pin google-cloud-tasks"
    requirements.write_text("".join(kept))
    try:
        venv = function_venv(function_dir)
    except FunctionEnvError as exc:  # pip check found the hole
        assert "google-cloud-tasks" in str(exc)
        return
    code, _, err = boot(function_dir, venv, tmp_path)
    assert code != 0, "model_run booted without google-cloud-tasks"
    assert "tasks_v2" in err or "google.cloud.tasks" in err or "google-cloud-tasks" in err, err
