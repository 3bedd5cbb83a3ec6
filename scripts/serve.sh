#!/usr/bin/env bash
# Install Mullama into .venv (first run builds llama.cpp, ~5-10 min) and start the daemon
# on the embedded default model at http://127.0.0.1:8080. Extra arguments go to `serve`.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/bootstrap.sh
exec .venv/bin/mullama serve "$@"
