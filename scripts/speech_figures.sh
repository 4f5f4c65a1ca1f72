#!/usr/bin/env bash
# The figures of docs/speech.md and the embedded speech demo model (models/lathe-kjv-speech): synthesised KJV
# verses (tools/speech_demo_data.py, espeak-ng), a speech encoder and connector trained into the embedded LLaMA
# (models/lathe-kjv-llama, frozen) with stage asr, then stage self-powered from it; both measured on held-out
# verses: word error rate of transcription prompts and the anchor-bias shares on held-out instructions.
# Runs its own lathed in a private folder under the build tree; about an hour on two lavapipe cores.
# Usage: scripts/speech_figures.sh [build folder] [asr steps] [self-powered steps] [--install]
#   --install copies the self-powered model to models/lathe-kjv-speech.
set -euo pipefail
build=${1:-build}
asr_steps=${2:-1500}
sp_steps=${3:-600}
install=${4:-}
root=$(cd "$(dirname "$0")/.." && pwd)
bin="$root/$build/bin"
model="$root/models/lathe-kjv-llama"
work="$root/$build/speech-figures"
. "$root/scripts/private_daemon.sh"
private_daemon "$work"
/usr/bin/python3 "$root/tools/speech_demo_data.py" "$work/data"
lathe daemon start >/dev/null
size=(--d-model 128 --layers 2 --heads 4 --ffn 512 --stack 6 --hidden 256 --max-positions 400)
t0=$(date +%s)
lathe run speech-train --model "$model" --data "$work/data/train.jsonl" --output "$work/asr" --stage asr \
  "${size[@]}" --steps "$asr_steps" --batch 8 --lr 1e-3 --warmup 50 --seed 1 --json >"$work/asr.json" 2>"$work/asr.log"
t1=$(date +%s)
lathe run speech-train --model "$model" --data "$work/data/train.jsonl" --output "$work/self-powered" \
  --stage self-powered --speech "$work/asr/speech" --instructions "$work/data/instructions-train.txt" \
  --steps "$sp_steps" --batch 8 --lr 1e-3 --warmup 20 --seed 1 --json >"$work/sp.json" 2>"$work/sp.log"
t2=$(date +%s)
for m in asr self-powered; do
  lathe run speech-eval --model "$model" --speech "$work/$m/speech" --data "$work/data/heldout.jsonl" \
    --instructions "$work/data/instructions-heldout.txt" --json >"$work/eval-$m.jsonl" 2>"$work/eval-$m.log"
done
t3=$(date +%s)
echo "asr stage $((t1 - t0)) s, self-powered stage $((t2 - t1)) s, evaluations $((t3 - t2)) s"
/usr/bin/python3 - "$work" <<'PY'
import json, sys
work = sys.argv[1]
print(f"{'model':14s} {'WER':>6s} {'follow':>7s} {'transcribe':>10s} {'neither':>8s}")
for m in ("asr", "self-powered"):
    r = json.loads(open(f"{work}/eval-{m}.jsonl").read().strip().splitlines()[-1])
    print(f"{m:14s} {r['wer']:6.3f} {r['follow_share']:7.3f} {r['transcribe_share']:10.3f} {r['neither_share']:8.3f}")
PY
if [ "$install" = --install ]; then
  rm -rf "$root/models/lathe-kjv-speech"
  cp -r "$work/self-powered/speech" "$root/models/lathe-kjv-speech"
  echo "installed models/lathe-kjv-speech"
fi
