#!/usr/bin/env bash
# All tests, on a fresh machine with Python 3.11: what CI runs.
#
# 1. The pinned torch (2.13.0, the CPU build) with everything else at the newest the index serves:
#    the whole suite.
# 2. The newest torch that has a matching torchvision (2.14.1 with torchvision 0.29.1; CUDA builds
#    that run on the CPU) with timm: the torch twin's tests and the real-training scenarios, with
#    the real torchvision and timm ResNets.
set -euo pipefail
cd "$(dirname "$0")/.."
export PIP_DISABLE_PIP_VERSION_CHECK=1

python3.11 -m venv .venv
.venv/bin/pip install -q torch==2.13.0
.venv/bin/pip install -q -e ".[test]"
.venv/bin/ruff check . && .venv/bin/ruff format --check .
.venv/bin/python -m pytest -q -n auto

python3.11 -m venv .venv-newest
.venv-newest/bin/pip install -q torch==2.14.1 torchvision==0.29.1
.venv-newest/bin/pip install -q -e ".[test]" timm
.venv-newest/bin/python -m pytest -q -n auto \
    dropblock_torch tests/test_torch_functional.py tests/test_torch_modules.py tests/test_torch_compat.py \
    tests/test_torch_ddp.py tests/test_training_loops_torch.py tests/test_add_dropblock.py tests/test_readme.py \
    tests/test_compat_timm.py tests/test_compat_torchvision.py
