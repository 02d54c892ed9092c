#!/usr/bin/env bash
# Create ./.venv (if missing) and install depthscope into it with its test extras.
# torch is pinned first: on these machines torch==2.13.0 is a local CPU wheel, and
# an unpinned torch in a fresh environment would download a multi-GB CUDA build.
# Quiet: pip's and setuptools' chatter (deprecation warnings of the build backend) goes to a
# log that is shown only when a step fails; the install is skipped when pyproject.toml has not
# changed since the last successful one.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
log=$(mktemp)
trap 'rm -f "$log"' EXIT
quiet() {  # run a step with its output in $log; on failure show the log and fail
  if ! "$@" >"$log" 2>&1; then
    echo "setup.sh: failed: $*" >&2
    cat "$log" >&2
    exit 1
  fi
}
stamp=.venv/.depthscope-installed
want="$(cat pyproject.toml | cksum)"
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ] && .venv/bin/python -c "import depthscope" 2>/dev/null; then
  exit 0
fi
.venv/bin/python -m pip install -q --upgrade pip >/dev/null 2>&1 || true
.venv/bin/python -c "import torch" 2>/dev/null || quiet .venv/bin/python -m pip install -q "torch==${DEPTHSCOPE_TORCH_VERSION:-2.13.0}"
quiet env PYTHONWARNINGS=ignore .venv/bin/python -m pip install -q -e ".[test]"
echo "$want" > "$stamp"
