#!/usr/bin/env bash
# Set up (if needed) and run the main job: the quick reproduction, into ./depthscope-run
# (store, figures and report.html). Extra arguments go to `depthscope reproduce`.
# The real MNIST files are looked for in ../shared/data/mnist (beside the repo root)
# unless DEPTHSCOPE_DATA already points somewhere.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ -z "${DEPTHSCOPE_DATA:-}" ] && [ -d ../shared/data/mnist ]; then
  DEPTHSCOPE_DATA="$(cd ../shared/data/mnist && pwd)"
  export DEPTHSCOPE_DATA
fi
bash scripts/setup.sh
exec .venv/bin/depthscope reproduce "$@"
