#!/usr/bin/env bash
# The test command: lint, type check (the [tool.mypy] config in pyproject.toml), then the whole suite
# (slow end-to-end tests included). Arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
.venv/bin/ruff check .
.venv/bin/ruff format --check .
.venv/bin/mypy
.venv/bin/python -m pytest "$@"
