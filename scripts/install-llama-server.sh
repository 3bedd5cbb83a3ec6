#!/usr/bin/env bash
# Build llama.cpp's own llama-server (and llama-batched-bench) from the llama-cpp-python
# source distribution Mullama pins, once: the real OpenAI-compatible engine that the
# remote-engine tests (tests/e2e/test_remote.py) and the side-by-side benchmarks run.
# Prints the bin folder. ~10 minutes on 2 cores the first time; later calls return at once.
# Output: ${MULLAMA_ANCHORS_DIR:-$HOME/.cache/mullama-anchors}/<version>/build/bin
#
# Built for this CPU (-march=native) but without AMX, as scripts/bootstrap.sh builds the
# wheel: on a CPU with AMX, llama.cpp's AMX kernels made this llama-server die with
# SIGILL at start (and crash on some models, SmolLM2 among them). The build is kept under
# a key of the version, the flags and the machine: a build made with other flags (an
# older one with AMX) is rebuilt, not reused. ../shared/tools/build-llama-anchors.sh
# builds into the same folder with the same flags; its .no-amx mark is written too.
set -euo pipefail
cd "$(dirname "$0")/.."
ver="${1:-0.3.36}"
root="${MULLAMA_ANCHORS_DIR:-$HOME/.cache/mullama-anchors}/$ver"
bin="$root/build/bin"
amx_off="-mno-amx-tile -mno-amx-int8 -mno-amx-bf16"
cmake_args=(-DCMAKE_BUILD_TYPE=Release -DLLAMA_CURL=OFF -DGGML_NATIVE=ON -DLLAMA_BUILD_TESTS=OFF
  -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_TOOLS=ON -DLLAMA_BUILD_SERVER=ON)
key=$(printf '%s|%s|%s|%s' "$ver" "$amx_off" "${cmake_args[*]}" "$(uname -m)" | sha256sum | cut -c1-12)
stamp="$root/build/.build-key"
if [ -x "$bin/llama-server" ] && [ -x "$bin/llama-batched-bench" ] \
  && [ "$(cat "$stamp" 2>/dev/null)" = "$key" ]; then
  echo "$bin"; exit 0
fi
rm -rf "$root/build"   # another key's build (CMake keeps the flags it was configured with)
mkdir -p "$root"
if [ ! -d "$root/src" ]; then
  work=$(mktemp -d)
  py=python3; [ -x .venv/bin/python ] && py=.venv/bin/python   # pip is in the venv
  "$py" -m pip download -q --no-deps --no-binary :all: -d "$work" "llama-cpp-python==$ver" >&2
  tar xzf "$work"/llama_cpp_python-*.tar.gz -C "$work"
  mv "$work"/llama_cpp_python-*/vendor/llama.cpp "$root/src"
  rm -rf "$work"
fi
CFLAGS="$amx_off" CXXFLAGS="$amx_off" cmake -S "$root/src" -B "$root/build" "${cmake_args[@]}" >&2
cmake --build "$root/build" -j"$(nproc)" --target llama-server llama-batched-bench >&2
echo "$key" > "$stamp"
touch "$root/build/.no-amx"
echo "$bin"
