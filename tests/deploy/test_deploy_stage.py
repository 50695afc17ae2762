"""Staging a function's upload folder: pins stamped from constraints.txt, shared/ without the engine."""

from __future__ import annotations

import importlib.util
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
_spec = importlib.util.spec_from_file_location("stage_function", REPO / "scripts" / "stage_function.py")
assert _spec and _spec.loader
stage_function = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(stage_function)

PINS = stage_function.read_pins("# pins\nFlask==3.1.3\nlabelbox==7.17.0\ngoogle_auth==2.62.2  # note\n-c other.txt\n")


def test_read_pins_normalizes_names_and_ignores_everything_but_pins() -> None:
    assert PINS == {"flask": "3.1.3", "labelbox": "7.17.0", "google-auth": "2.62.2"}


def test_every_listed_name_gets_its_pin_and_extras_keep_the_base_pin() -> None:
    text = "# entry point\nflask\nlabelbox[data]\nGoogle.Auth\n\n"
    assert stage_function.pinned_requirements(text, PINS, source="r.txt") == (
        "flask==3.1.3\nlabelbox[data]==7.17.0\nGoogle.Auth==2.62.2\n"
    )


def test_unpinned_names_and_versions_outside_constraints_are_all_reported() -> None:
    with pytest.raises(stage_function.StagingError) as failure:
        stage_function.pinned_requirements("flask>=3\nnumpy\nrequests==2.0\n", PINS, source="r.txt")
    message = str(failure.value)
    assert "r.txt:1: 'flask>=3' is not a bare package name" in message
    assert "r.txt:2: 'numpy' has no pin in constraints.txt" in message
    assert "r.txt:3: 'requests==2.0' is not a bare package name" in message


def test_staging_replaces_an_old_build_and_ships_shared_without_engine(tmp_path: Path) -> None:
    root = tmp_path / "repo"
    (root / "functions" / "etl").mkdir(parents=True)
    (root / "functions" / "etl" / "main.py").write_text("def etl(request): ...\n")
    (root / "functions" / "etl" / "requirements.txt").write_text("flask\n")
    (root / "shared" / "engine").mkdir(parents=True)
    (root / "shared" / "__init__.py").write_text("")
    (root / "shared" / "engine" / "model.py").write_text("import torch\n")
    (root / "shared" / "training").mkdir()
    (root / "shared" / "training" / "engine.py").write_text("# a module named engine elsewhere ships\n")
    (root / "constraints.txt").write_text("Flask==3.1.3\n")
    stale = root / "build" / "etl" / "stale.py"
    stale.parent.mkdir(parents=True)
    stale.write_text("old")
    done = subprocess.run(
        [sys.executable, str(REPO / "scripts" / "stage_function.py"), "--root", str(root), "etl"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    staged = root / "build" / "etl"
    files = sorted(str(p.relative_to(staged)) for p in staged.rglob("*") if p.is_file())
    assert files == ["main.py", "requirements.txt", "shared/__init__.py", "shared/training/engine.py"]
    assert (staged / "requirements.txt").read_text() == "flask==3.1.3\n"


def test_the_projects_own_functions_stage_with_every_requirement_pinned(tmp_path: Path) -> None:
    names = sorted(p.name for p in (REPO / "functions").iterdir() if p.is_dir())
    assert names == ["etl", "inference", "model_run", "models", "monitor", "train"]
    root = tmp_path / "repo"
    root.mkdir()
    for part in ("functions", "shared"):
        shutil.copytree(REPO / part, root / part, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy2(REPO / "constraints.txt", root / "constraints.txt")
    done = subprocess.run(
        [sys.executable, str(REPO / "scripts" / "stage_function.py"), "--root", str(root), *names],
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    for name in names:
        staged = root / "build" / name
        assert (staged / "shared" / "__init__.py").is_file()
        assert not (staged / "shared" / "engine").exists()
        lines = (staged / "requirements.txt").read_text().splitlines()
        assert lines and all("==" in line for line in lines)
        assert any(line.startswith("functions-framework==") for line in lines), name
