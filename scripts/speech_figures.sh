#!/usr/bin/env bash
# The figures of docs/speech.md and the embedded speech demo model (models/lathe-kjv-speech): synthesised KJV
# verses (tools/speech_demo_data.py, espeak-ng), a speech encoder and connector trained into the embedded LLaMA
# (models/lathe-kjv-llama, frozen) with stage asr, then stage self-powered from it; both measured on held-out
# verses: word error rate of transcription prompts and the anchor-bias shares on held-out instructions. The LLM's
# weights stay as they are; LoRA pairs on its attention (q, k, v, o) train beside the speech model in both stages
# (a 1M-parameter LLM does not repeat text it is shown, so it needs them to write a transcript).
# Runs its own lathed in a private folder under the build tree; about an hour on two lavapipe cores.
# Usage: scripts/speech_figures.sh [build folder] [asr steps] [self-powered steps] [--install]
#   --install copies the self-powered model to models/lathe-kjv-speech.
set -euo pipefail
build=${1:-build}
asr_steps=${2:-1000}
sp_steps=${3:-400}
install=${4:-}
root=$(cd "$(dirname "$0")/.." && pwd)
bin="$root/$build/bin"
model="$root/models/lathe-kjv-llama"
work="$root/$build/speech-figures"
. "$root/scripts/private_daemon.sh"
data_keep="$root/$build/speech-data"
[ -f "$data_keep/heldout.jsonl" ] || /usr/bin/python3 "$root/tools/speech_demo_data.py" "$data_keep"
private_daemon "$work"
lathe daemon start >/dev/null
size=(--d-model 128 --layers 2 --heads 4 --ffn 512 --stack 6 --hidden 256 --max-positions 400)
t0=$(date +%s)
lathe run speech-train --model "$model" --data "$data_keep/train.jsonl" --output "$work/asr" --stage asr \
  "${size[@]}" --lora --lora-rank 8 --lora-lr 2e-3 --steps "$asr_steps" --batch 8 --lr 2e-3 --warmup 50 --seed 1 \
  --json >"$work/asr.json" 2>"$work/asr.log"
t1=$(date +%s)
lathe run speech-train --model "$model" --data "$data_keep/train.jsonl" --output "$work/self-powered" \
  --stage self-powered --speech "$work/asr/speech" --instructions "$data_keep/instructions-train.txt" \
  --lora --lora-rank 8 --lora-from "$work/asr/adapter" --lora-lr 1e-3 \
  --steps "$sp_steps" --batch 8 --lr 1e-3 --warmup 20 --seed 1 --json >"$work/sp.json" 2>"$work/sp.log"
t2=$(date +%s)
for m in asr self-powered; do
  lathe run speech-eval --model "$model" --speech "$work/$m/speech" --adapter "$work/$m/adapter" \
    --data "$data_keep/heldout.jsonl" \
    --instructions "$data_keep/instructions-heldout.txt" --json >"$work/eval-$m.jsonl" 2>"$work/eval-$m.log"
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
  dest="$root/models/lathe-kjv-speech"
  rm -rf "$dest"
  mkdir -p "$dest"
  cp "$work/self-powered/speech/config.json" "$work/self-powered/speech/model.safetensors" "$dest/"
  cp -r "$work/self-powered/adapter" "$dest/adapter"
  cp "$data_keep/instructions-heldout.txt" "$data_keep/instructions-train.txt" "$dest/"
  /usr/bin/python3 - "$work" "$dest" "$asr_steps" "$sp_steps" "$data_keep" <<'PY'
import json, sys
work, dest, asr_steps, sp_steps, data = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), sys.argv[5]
with open(f"{data}/heldout.jsonl") as f, open(f"{dest}/heldout.jsonl", "w") as o:
    for line in f:
        r = json.loads(line)
        del r["audio"]
        o.write(json.dumps(r) + "\n")
fig = {"asr_steps": asr_steps, "self_powered_steps": sp_steps}
for m in ("asr", "self-powered"):
    r = json.loads(open(f"{work}/eval-{m}.jsonl").read().strip().splitlines()[-1])
    fig[m] = {k: r[k] for k in ("wer", "words", "edits", "rows", "follow_share", "transcribe_share",
                                "neither_share", "mean_wer_to_llm_answer", "instruction_prompts")}
for m, name in (("asr", "asr"), ("self-powered", "sp")):
    r = json.loads(open(f"{work}/{name}.json").read().strip().splitlines()[-1])
    fig[m]["final_loss"] = r["final_loss"]
    fig[m]["examples"] = r["examples"]
json.dump(fig, open(f"{dest}/figures.json", "w"), indent=2)
PY
  echo "installed models/lathe-kjv-speech"
fi
