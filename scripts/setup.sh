#!/usr/bin/env bash
# Create ./.venv (if missing) and install depthscope into it with its test extras.
# torch is pinned first: on these machines torch==2.13.0 is a local CPU wheel, and
# an unpinned torch in a fresh environment would download a multi-GB CUDA build.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
.venv/bin/python -m pip install -q --upgrade pip >/dev/null 2>&1 || true
.venv/bin/python -c "import torch" 2>/dev/null || .venv/bin/python -m pip install -q "torch==${DEPTHSCOPE_TORCH_VERSION:-2.13.0}"
.venv/bin/python -m pip install -q -e ".[test]"
