#!/usr/bin/env bash
# Build llama.cpp's own llama-server (and llama-batched-bench) from the llama-cpp-python
# source distribution Mullama pins, once: the real OpenAI-compatible engine that the
# remote-engine tests (tests/e2e/test_remote.py) and the side-by-side benchmarks run.
# Prints the bin folder. ~10 minutes on 2 cores the first time; later calls return at once.
# Output: ${MULLAMA_ANCHORS_DIR:-$HOME/.cache/mullama-anchors}/<version>/build/bin
set -euo pipefail
cd "$(dirname "$0")/.."
ver="${1:-0.3.36}"
root="${MULLAMA_ANCHORS_DIR:-$HOME/.cache/mullama-anchors}/$ver"
bin="$root/build/bin"
if [ -x "$bin/llama-server" ] && [ -x "$bin/llama-batched-bench" ]; then echo "$bin"; exit 0; fi
mkdir -p "$root"
if [ ! -d "$root/src" ]; then
  work=$(mktemp -d)
  py=python3; [ -x .venv/bin/python ] && py=.venv/bin/python   # pip is in the venv
  "$py" -m pip download -q --no-deps --no-binary :all: -d "$work" "llama-cpp-python==$ver" >&2
  tar xzf "$work"/llama_cpp_python-*.tar.gz -C "$work"
  mv "$work"/llama_cpp_python-*/vendor/llama.cpp "$root/src"
  rm -rf "$work"
fi
cmake -S "$root/src" -B "$root/build" -DCMAKE_BUILD_TYPE=Release -DLLAMA_CURL=OFF -DGGML_NATIVE=ON \
  -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_TOOLS=ON -DLLAMA_BUILD_SERVER=ON >&2
cmake --build "$root/build" -j"$(nproc)" --target llama-server llama-batched-bench >&2
echo "$bin"
