#!/usr/bin/env bash
# Fresh-machine set-up: a virtual environment in .venv with the CPU build of PyTorch
# (installed first, so the project's torch range is already met and pip never pulls
# a multi-GB CUDA build), then this project in editable mode with its test extra.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
.venv/bin/python -m pip install -q --disable-pip-version-check torch==2.13.0
.venv/bin/python -m pip install -q --disable-pip-version-check -e '.[test]'
