"""A small demo model run (Labelbox's model-run export shape) and its fixtures, shared by many test folders.

`tests/conftest.py` makes `demo_template` and `demo` available everywhere; tests import `DemoRun` from here.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from shared.demo import create_demo_model_run


@dataclass(frozen=True)
class DemoRun:
    root: Path  # the model-runs folder (LocalModelRuns' root)
    folder: Path  # <root>/<model_run_id>
    model_run_id: str
    model_id: str

    def rows(self) -> list[dict[str, Any]]:
        lines = (self.folder / "export.ndjson").read_text().splitlines()
        return [json.loads(line) for line in lines if line.strip()]

    def write_rows(self, rows: list[dict[str, Any]]) -> None:
        (self.folder / "export.ndjson").write_text("".join(json.dumps(r) + "\n" for r in rows))


def _demo(root: Path) -> DemoRun:
    folder = create_demo_model_run(root, images=20, seed=1)
    info = json.loads((folder / "model_run.json").read_text())
    return DemoRun(root=root, folder=folder, model_run_id=info["id"], model_id=info["model_id"])


@pytest.fixture(scope="session")
def demo_template(tmp_path_factory: pytest.TempPathFactory) -> DemoRun:
    """Written once per session; tests that change files use `demo` (a private copy) instead."""
    return _demo(tmp_path_factory.mktemp("demo-template"))


@pytest.fixture
def demo(demo_template: DemoRun, tmp_path: Path) -> DemoRun:
    root = tmp_path / "model_runs"
    shutil.copytree(demo_template.root, root)
    return DemoRun(
        root=root,
        folder=root / demo_template.model_run_id,
        model_run_id=demo_template.model_run_id,
        model_id=demo_template.model_id,
    )
