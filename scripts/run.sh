#!/usr/bin/env bash
# Set up (if needed) and run the main job: the quick reproduction, into ./depthscope-run.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/depthscope reproduce "$@"
