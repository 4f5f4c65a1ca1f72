#!/usr/bin/env bash
# GGUF files Lathe writes, run by llama.cpp: `lathe run export` of the fixture models (LLaMA, Qwen2, Phi-3, Mixtral
# and the real stories260K) and `lathe run compress --method quantize --format gguf` (Q8_0 and Q4_0), each loaded by
# llama.cpp's own loader and run on its CPU backend (tools/llama_run.c), against Lathe running the same file: the
# prompt's token ids, the greedy continuation and the prompt's mean negative log-likelihood. The two block-format
# fixtures ggml quantised (K-quants; the legacy formats) go through both as they are.
#
# Usage: tools/check_gguf_llama_cpp.sh BUILD_BIN
#   LLAMA_SRC    a llama.cpp checkout kept outside this repository (required; never copied here)
#   LLAMA_BUILD  where it is built (default /tmp/llama-build; built there when it holds no libllama.so)
# Prints one line per model; exits 1 when llama.cpp and Lathe tokenise the prompt differently, their prompt NLLs
# differ by 1e-3 or more (1e-2 for block formats), or their greedy continuations part at a step where llama.cpp's two best logits are 0.02
# or more apart (closer than that, llama.cpp's 8-bit rounding of activations for block formats may tip it).
set -euo pipefail
bin=$(cd "${1:?usage: check_gguf_llama_cpp.sh BUILD_BIN}" && pwd)
root=$(cd "$(dirname "$0")/.." && pwd)
src=${LLAMA_SRC:?set LLAMA_SRC to a llama.cpp checkout outside this repository}
build=${LLAMA_BUILD:-/tmp/llama-build}

[ -e "$build/bin/libllama.so" ] || bash "$root/tools/llama_cpp_build.sh" "$build" >/dev/null
gcc -O2 -o "$build/llama_run" "$root/tools/llama_run.c" -I"$src/include" -I"$src/ggml/include" -L"$build/bin" \
  -lllama -lggml -lggml-base -lm -Wl,-rpath,"$build/bin"

work=$(mktemp -d /tmp/lathe-gguf-llama.XXXXXX)
# shellcheck source=scripts/private_daemon.sh
source "$root/scripts/private_daemon.sh"
private_daemon "$work/d"
trap 'lathe daemon stop >/dev/null 2>&1 || true; rm -rf "$work"' EXIT

fx="$root/tests/fixtures"
# name, how the GGUF is made (export MODEL | quantize BITS MODEL), the prompt
cases=(
  "stories260K|export $fx/stories260K/hf|Once upon a time"
  "llama-tiny|export $fx/llama-tiny|the lord said unto moses"
  "qwen2-tiny|export $fx/qwen2-tiny|the lord said unto moses"
  "phi3-tiny|export $work/p3-tiny|the lord said unto moses"
  "mixtral-tiny|export $fx/mixtral-tiny|the lord said unto moses"
  "gemma2-26|export $work/gemma2-26|the lord said unto moses"
  "llama-tiny Q8_0|quantize 8 $fx/llama-tiny|the lord said unto moses"
  "llama-tiny Q4_0|quantize 4 $fx/llama-tiny|the lord said unto moses"
  "kquant-tiny|file $fx/qblock/kquant-tiny.gguf|Once upon a time"
  "stories260K-mixed|file $fx/qblock/stories260K-mixed.gguf|Once upon a time"
)
# llama.cpp looks up </s>, <unk> and <s> in every model whose name says phi3 (to set their attributes); the toy
# vocabulary of the Phi-3 fixture has none of them, so it goes in under a name that does not.
cp -r "$fx/phi3-tiny" "$work/p3-tiny"
# This llama.cpp runs gemma2 only with the block counts of Gemma 2's 2B, 9B and 27B models (26, 42, 46) and takes
# the query scale from the shape: gemma2-tiny's two blocks become 26 (block l from block l % 2 with seeded noise,
# so the sliding and global blocks keep their order) and its query_pre_attn_scalar the head size.
/usr/bin/python3 - "$fx/gemma2-tiny" "$work/gemma2-26" <<'PY'
import json, os, shutil, struct, sys
import numpy as np
src, dst = sys.argv[1], sys.argv[2]
os.makedirs(dst)
for f in ("tokenizer.json", "tokenizer_config.json", "generation_config.json"):
    shutil.copy(os.path.join(src, f), dst)
cfg = json.load(open(os.path.join(src, "config.json")))
cfg["num_hidden_layers"], cfg["query_pre_attn_scalar"] = 26, cfg["head_dim"]
json.dump(cfg, open(os.path.join(dst, "config.json"), "w"), indent=2)
raw = open(os.path.join(src, "model.safetensors"), "rb").read()
n = struct.unpack("<Q", raw[:8])[0]
head = json.loads(raw[8:8 + n])
head.pop("__metadata__", None)
def get(name):
    e = head[name]
    assert e["dtype"] == "F32"
    a, b = e["data_offsets"]
    return np.frombuffer(raw[8 + n + a:8 + n + b], dtype=np.float32).reshape(e["shape"])
rng = np.random.default_rng(26)
out = {}
for name in head:
    if not name.startswith("model.layers."):
        out[name] = get(name)
        continue
    layer, rest = name[len("model.layers."):].split(".", 1)
    if int(layer) > 1:
        continue
    for l in range(int(layer), 26, 2):
        w = get(name)
        out[f"model.layers.{l}.{rest}"] = (w + rng.normal(0, 0.02, w.shape) * (l > 1)).astype(np.float32)
meta, off, blobs = {}, 0, []
for name, a in out.items():
    b = np.ascontiguousarray(a).tobytes()
    meta[name] = {"dtype": "F32", "shape": list(a.shape), "data_offsets": [off, off + len(b)]}
    off += len(b)
    blobs.append(b)
h = json.dumps(meta).encode()
h += b" " * (-len(h) % 8)
with open(os.path.join(dst, "model.safetensors"), "wb") as f:
    f.write(struct.pack("<Q", len(h)) + h + b"".join(blobs))
PY
# Calibration text for compress (quantisation reads no statistics from it, but the job takes a data file).
/usr/bin/python3 -c '
import json, random
r = random.Random(7)
words = "the lord said unto moses and aaron spake to all people in beginning was word light".split()
for i in range(300):
    print(json.dumps({"text": " ".join(r.choice(words) for _ in range(24))}))' >"$work/calib.jsonl"
n_new=24
status=0
printf '%-18s %-28s %-9s %-12s %s\n' model "prompt ids" greedy "NLL lathe" "NLL llama.cpp (difference)"
for c in "${cases[@]}"; do
  IFS='|' read -r name how prompt <<<"$c"
  read -r verb a b <<<"$how"
  out="$work/$(echo "$name" | tr ' ' _)"
  if [ "$verb" = file ]; then
    gguf=$a # a fixture quantised by ggml (tools/qblock_fixtures.sh): Lathe's in-place block kernels against llama.cpp's
  elif [ "$verb" = export ]; then
    if ! lathe run export --model "$a" --output "$out.gguf" >"$out.export.log" 2>&1; then
      echo "$name: export failed: $(tail -n 2 "$out.export.log")"
      status=1
      continue
    fi
    gguf="$out.gguf"
  else
    lathe run compress --model "$b" --data "$work/calib.jsonl" --method quantize --bits "$a" --group 32 --format gguf \
      --output "$out" >"$out.compress.log" 2>&1 || { echo "$name: compress failed: $(tail -n 2 "$out.compress.log")"; status=1; continue; }
    gguf="$out/model.gguf"
  fi
  "$build/llama_run" "$gguf" "$prompt" "$n_new" >"$out.llama.json" 2>"$out.llama.err" ||
    { echo "$name: llama.cpp failed: $(tail -n 3 "$out.llama.err")"; status=1; continue; }
  lathe tokenize --model "$gguf" --text "$prompt" --add-bos --json >"$out.ids.json"
  lathe run generate --model "$gguf" --prompt "$prompt" --max-tokens "$n_new" --temperature 0 --ignore-eos true \
    >"$out.gen.json" 2>/dev/null
  printf '{"text": %s}\n' "$(/usr/bin/python3 -c 'import json,sys; print(json.dumps(sys.argv[1]))' "$prompt")" \
    >"$out.score.jsonl"
  lathe run score --model "$gguf" --data "$out.score.jsonl" >"$out.score.json" 2>/dev/null
  # Block formats: llama.cpp's CPU backend rounds the activations to 8 bits for their products, which moves the
  # NLL by up to a few thousandths on these random-weight fixtures (Lathe reads the same blocks with f32
  # activations; tests/model/test_qmodels.c holds it to 2e-4 of a float64 reference).
  tol=1e-3
  [ "$verb" = export ] || tol=1e-2
  /usr/bin/python3 - "$name" "$out" "$tol" <<'PY' || status=1
import json, sys
name, out, tol = sys.argv[1], sys.argv[2], float(sys.argv[3])
ll = json.load(open(out + ".llama.json"))
ids = json.loads(open(out + ".ids.json").read().split("\n")[0])["ids"]
gen = json.loads(open(out + ".gen.json").read().split("\n")[0])
score = json.loads(open(out + ".score.json").read().split("\n")[0])
nll = score.get("mean_nll", score.get("nll"))
same_ids = ids == ll["prompt_ids"]
same_gen = gen["tokens"] == ll["greedy"]
diff = abs(nll - ll["prompt_nll"]) if nll is not None else float("nan")
print("%-18s %-28s %-9s %-12.6f %.6f (%.2g)" % (name, "same" if same_ids else "DIFFER %s/%s" % (ids, ll["prompt_ids"]),
      "same" if same_gen else "DIFFER", nll, ll["prompt_nll"], diff))
near_tie = False
if not same_gen:
    k = next(i for i, (a, b) in enumerate(zip(gen["tokens"], ll["greedy"])) if a != b)
    # llama.cpp's CPU backend rounds the activations to 8 bits before a product with block-quantised weights;
    # a step whose two best logits are closer than that rounding can move may go either way.
    near_tie = ll["margins"][k] < 0.02
    print("    first %d tokens the same; at token %d llama.cpp's top two logits are %.3g apart%s" %
          (k, k, ll["margins"][k], " (a near tie)" if near_tie else ""))
    print("    lathe     %s\n    llama.cpp %s" % (gen["tokens"], ll["greedy"]))
sys.exit(0 if same_ids and (same_gen or near_tie) and diff < tol else 1)
PY
done
exit $status
