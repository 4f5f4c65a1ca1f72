#!/bin/sh
# Remakes tests/fixtures/qblock/ with ggml, the quantiser llama.cpp and ollama use, built from a copy of its source
# kept outside this repository (never commit it):
#   GGML_SRC=/path/to/ggml tools/qblock_fixtures.sh
# GGML_SRC is a checkout of https://github.com/ggml-org/ggml (or the ggml/ folder of a llama.cpp checkout). The
# build goes to $GGML_BUILD (default /tmp/lathe-ggml-build). Writes the per-format block files, the mixed-format
# stories260K and the K-quant tiny LLaMA (tools/qblock_ggml.c says what each holds), and the two models' reference
# logits (ggml's dequantisation run by the PyTorch reference, tools/qblock_reference.py; needs python3-torch).
set -eu
here=$(cd "$(dirname "$0")/.." && pwd)
src=${GGML_SRC:?set GGML_SRC to a ggml source checkout outside the repository}
build=${GGML_BUILD:-/tmp/lathe-ggml-build}
out=$here/tests/fixtures/qblock
if [ ! -f "$build/src/libggml-base.so" ]; then
  cmake -S "$src" -B "$build" -DCMAKE_BUILD_TYPE=Release -DGGML_BUILD_EXAMPLES=OFF -DGGML_BUILD_TESTS=OFF \
    -DGGML_NATIVE=OFF -DBUILD_SHARED_LIBS=ON >/dev/null
  cmake --build "$build" -j"$(nproc)" >/dev/null
fi
cc -O2 -std=c17 -o "$build/qblock_ggml" "$here/tools/qblock_ggml.c" -I"$src/include" -L"$build/src" \
  -Wl,-rpath,"$build/src" -lggml-base -lm
mkdir -p "$out"
"$build/qblock_ggml" blocks "$out"
"$build/qblock_ggml" legacy "$here/tests/fixtures/stories260K/stories260K.gguf" "$out/stories260K-mixed.gguf"
"$build/qblock_ggml" kquant "$here/tests/fixtures/stories260K/stories260K.gguf" "$out/kquant-tiny.gguf"
# The independent reference logits: ggml dequantises, the PyTorch reference runs the result in float64.
for m in kquant-tiny stories260K-mixed; do
  tmp=$(mktemp -d)
  "$build/qblock_ggml" dequant "$out/$m.gguf" "$tmp"
  /usr/bin/python3 "$here/tools/qblock_reference.py" "$tmp" "$out/$m"
  rm -rf "$tmp"
done
ls -l "$out"
