#!/bin/sh
# compress --format hf outputs loaded by the PyTorch reference: for a block drop of llama-tiny, a block drop of
# mixtral-tiny and an expert drop of mixtral-tiny (its config a plain Mixtral with fewer experts, the router rows
# dropped), the reference (tools/lathe_ref.py, float64) and Lathe generate the same greedy tokens from the compressed
# folder. Needs python3-torch and a built tree:  sh tools/check_compress_hf.sh [BUILD_BIN]
set -eu
here=$(cd "$(dirname "$0")/.." && pwd)
bin=${1:-$here/build/bin}
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
export LATHE_HOME="$tmp/home"
i=0
while [ $i -lt 40 ]; do echo '{"text": "Lathe runs small models and tunes them with care, one job at a time."}'; i=$((i + 1)); done >"$tmp/calib.jsonl"
status=0
check() { # name, model, then compress flags
  name=$1 model=$2
  shift 2
  "$bin/lathe" run compress --model "$model" --data "$tmp/calib.jsonl" --output "$tmp/$name" --tokens 16 --samples 8 \
    "$@" >/dev/null 2>&1
  ours=$("$bin/lathe" run generate --model "$tmp/$name" --prompt "Lathe runs" --max-tokens 8 --temperature 0 --json 2>/dev/null |
    /usr/bin/python3 -c 'import json,sys; print(json.loads(sys.stdin.read().strip().splitlines()[-1])["tokens"])')
  ref=$(/usr/bin/python3 "$here/tools/lathe_ref.py" generate --model "$tmp/$name" --prompt "Lathe runs" --max-tokens 8 \
    --dtype f64 --json | /usr/bin/python3 -c 'import json,sys; print(json.load(sys.stdin)["tokens"])')
  if [ "$ours" = "$ref" ]; then echo "$name: agree $ours"; else echo "$name: DIFFER lathe $ours reference $ref"; status=1; fi
}
check llama-block-drop "$here/tests/fixtures/llama-tiny" --method block-drop --drop 1
check mixtral-block-drop "$here/tests/fixtures/mixtral-tiny" --method block-drop --drop 1
check mixtral-expert-drop "$here/tests/fixtures/mixtral-tiny" --method expert-drop --keep 3
"$bin/lathe" daemon stop >/dev/null 2>&1 || true
exit $status
