"""deploy.sh and teardown.sh (and the library they source) are shellcheck clean."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.skipif(
    shutil.which("shellcheck") is None, reason="shellcheck is not installed (scripts/setup.sh installs it)"
)
@pytest.mark.parametrize("script", ["deploy.sh", "teardown.sh", "scripts/deploy_lib.sh"])
def test_shellcheck_finds_nothing(script: str) -> None:
    done = subprocess.run(
        ["shellcheck", "--external-sources", "--severity=style", script],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr


def test_scripts_are_executable_bash_with_strict_mode() -> None:
    for script in ("deploy.sh", "teardown.sh"):
        path = REPO / script
        text = path.read_text()
        assert text.startswith("#!/usr/bin/env bash\n")
        assert "\nset -euo pipefail\n" in text
        assert path.stat().st_mode & 0o111, f"{script} must be executable"
