#!/usr/bin/env bash
# Builds llama.cpp's CPU backend (the library, llama-bench and llama-cli) from a checkout kept outside this
# repository, for the side-by-side figures (LATHE_BENCH_LLAMA for bench_model) and tools/check_gguf_llama_cpp.sh.
# Nothing of llama.cpp is copied into this repository.
# With --vulkan it builds the Vulkan backend instead (needs glslc: Debian's glslc package), for bench_model's
# LATHE_BENCH_LLAMA_VULKAN peer.
# Usage: LLAMA_SRC=/path/to/llama.cpp tools/llama_cpp_build.sh [--vulkan] [BUILD_DIR (default /tmp/llama-build,
# /tmp/llama-build-vulkan with --vulkan)]
# Prints the path of llama-bench.
set -euo pipefail
src=${LLAMA_SRC:?set LLAMA_SRC to a llama.cpp checkout outside this repository}
vulkan=OFF
if [ "${1:-}" = --vulkan ]; then
  vulkan=ON
  shift
fi
if [ $vulkan = ON ]; then build=${1:-/tmp/llama-build-vulkan}; else build=${1:-/tmp/llama-build}; fi
cmake -S "$src" -B "$build" -DCMAKE_BUILD_TYPE=Release -DLLAMA_CURL=OFF -DGGML_VULKAN=$vulkan -DLLAMA_BUILD_TESTS=OFF \
  -DLLAMA_BUILD_SERVER=OFF >/dev/null
cmake --build "$build" -j"$(nproc)" --target llama llama-bench llama-cli >/dev/null
echo "$build/bin/llama-bench"
