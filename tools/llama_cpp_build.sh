#!/usr/bin/env bash
# Builds llama.cpp's CPU backend (the library, llama-bench and llama-cli) from a checkout kept outside this
# repository, for the side-by-side figures (LATHE_BENCH_LLAMA for bench_model) and tools/check_gguf_llama_cpp.sh.
# Nothing of llama.cpp is copied into this repository.
# Usage: LLAMA_SRC=/path/to/llama.cpp tools/llama_cpp_build.sh [BUILD_DIR (default /tmp/llama-build)]
# Prints the path of llama-bench.
set -euo pipefail
src=${LLAMA_SRC:?set LLAMA_SRC to a llama.cpp checkout outside this repository}
build=${1:-/tmp/llama-build}
cmake -S "$src" -B "$build" -DCMAKE_BUILD_TYPE=Release -DLLAMA_CURL=OFF -DGGML_VULKAN=OFF -DLLAMA_BUILD_TESTS=OFF \
  -DLLAMA_BUILD_SERVER=OFF >/dev/null
cmake --build "$build" -j"$(nproc)" --target llama llama-bench llama-cli >/dev/null
echo "$build/bin/llama-bench"
