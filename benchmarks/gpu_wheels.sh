#!/usr/bin/env bash
# The wheels that benchmarks/gpu_check.sh installs where torch-lucent is missing (a lent GPU machine without network):
# torch-lucent and kornia 0.4.1 (the lucent comparison only), and IPython with its pure-Python dependencies, which
# lucent imports. torch, torchvision and numpy are not downloaded: the machine's own are used.
#   bash benchmarks/gpu_wheels.sh [PYTHON_VERSION]      # into .whl/ (git-ignored), for Python 3.12 by default
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${1:-3.12}"
mkdir -p .whl
pip download -q --no-deps -d .whl torch-lucent==0.1.8 kornia==0.4.1 decorator future
pip download -q -d .whl --only-binary=:all: --python-version "$PY" pytest  # the device tests (the machine may lack it)
pip download -q -d .whl --only-binary=:all: --python-version "$PY" --implementation py ipython 2>/dev/null \
  || pip download -q -d .whl --only-binary=:all: --python-version "$PY" ipython
ls .whl
