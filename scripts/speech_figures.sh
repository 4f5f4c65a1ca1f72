#!/usr/bin/env bash
# The figures of docs/speech.md and the embedded speech demo model (models/lathe-kjv-speech): synthesised KJV
# verses (tools/speech_demo_data.py, espeak-ng), a speech encoder and connector trained into the embedded LLaMA
# (models/lathe-kjv-llama, frozen) with stage asr, then stage self-powered from it; both measured on held-out
# verses: word error rate of transcription prompts, the transcripts' NLL after their own speech and after another
# row's (the listening gain), and the anchor-bias shares on held-out instructions; once over all held-out verses
# and once over the first 24 (the rows the demo's test speaks again). The LLM's weights stay as they are; LoRA
# pairs on its attention (q, k, v, o) train beside the speech model in both stages (a 1M-parameter LLM does not
# repeat text it is shown, so it needs them to write a transcript).
# Runs its own lathed in a private folder under the build tree; about an hour on two lavapipe cores.
# Usage: scripts/speech_figures.sh [build folder] [asr steps] [self-powered steps] [--install|--reuse-install]
#   --install copies the self-powered model to models/lathe-kjv-speech; --reuse-install skips the training when
#   the build folder holds it already, then measures and installs.
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
if [ "$install" = --reuse-install ] && [ -f "$work/self-powered/speech/model.safetensors" ]; then
  reuse=1
else
  reuse=0
  rm -rf "$work"
fi
private_daemon "$work/daemon"
lathe daemon start >/dev/null
size=(--d-model 128 --layers 2 --heads 4 --ffn 512 --stack 6 --hidden 256 --max-positions 400)
t0=$(date +%s)
[ $reuse = 1 ] || lathe run speech-train --model "$model" --data "$data_keep/train.jsonl" --output "$work/asr" \
  --stage asr "${size[@]}" --lora --lora-rank 8 --lora-lr 2e-3 --steps "$asr_steps" --batch 8 --lr 2e-3 \
  --warmup 50 --seed 1 --json >"$work/asr.json" 2>"$work/asr.log"
t1=$(date +%s)
[ $reuse = 1 ] || lathe run speech-train --model "$model" --data "$data_keep/train.jsonl" \
  --output "$work/self-powered" --stage self-powered --speech "$work/asr/speech" \
  --instructions "$data_keep/instructions-train.txt" \
  --lora --lora-rank 8 --lora-from "$work/asr/adapter" --lora-lr 1e-3 \
  --steps "$sp_steps" --batch 8 --lr 1e-3 --warmup 20 --seed 1 --json >"$work/sp.json" 2>"$work/sp.log"
t2=$(date +%s)
for m in asr self-powered; do
  for rows in 0 24; do
    lathe run speech-eval --model "$model" --speech "$work/$m/speech" --adapter "$work/$m/adapter" \
      --data "$data_keep/heldout.jsonl" --max-rows $rows --instructions "$data_keep/instructions-heldout.txt" \
      --json >"$work/eval-$m-$rows.jsonl" 2>"$work/eval-$m-$rows.log"
    id=$(sed -n 's/^{"id": *\([0-9]*\)}$/\1/p' "$work/eval-$m-$rows.log")
    lathe --json result "$id" >"$work/eval-$m-$rows.json"
  done
done
t3=$(date +%s)
[ $reuse = 1 ] || echo "asr stage $((t1 - t0)) s, self-powered stage $((t2 - t1)) s"
echo "evaluations $((t3 - t2)) s"
/usr/bin/python3 - "$work" <<'PY'
import json, sys
work = sys.argv[1]
print(f"{'model':14s} {'rows':>4s} {'WER':>6s} {'NLL':>6s} {'gain':>6s} {'follow':>7s} {'transcribe':>10s}",
      f"{'neither':>8s}")
for m in ("asr", "self-powered"):
    for rows in (0, 24):
        r = json.load(open(f"{work}/eval-{m}-{rows}.json"))
        r = r.get("result", r)
        print(f"{m:14s} {r['rows']:4d} {r['wer']:6.3f} {r['transcript_nll']:6.3f} {r['listening_gain']:6.3f} "
              f"{r['follow_share']:7.3f} {r['transcribe_share']:10.3f} {r['neither_share']:8.3f}")
PY
if [ "$install" = --install ] || [ "$install" = --reuse-install ]; then
  dest="$root/models/lathe-kjv-speech"
  rm -rf "$dest/adapter" "$dest/model.safetensors"
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
fig = {"asr_steps": asr_steps, "self_powered_steps": sp_steps, "subset": {"rows": 24}}
keys = ("wer", "words", "edits", "rows", "transcript_nll", "transcript_nll_other_speech", "listening_gain",
        "follow_share", "transcribe_share", "neither_share", "mean_wer_to_llm_answer", "instruction_prompts")
for m in ("asr", "self-powered"):
    for rows, into in ((0, fig), (24, fig["subset"])):
        r = json.load(open(f"{work}/eval-{m}-{rows}.json"))
        into[m] = {k: r.get("result", r)[k] for k in keys}
    log = [json.loads(line) for line in open(f"{work}/{m}/speech-log.jsonl")]
    fig[m]["final_loss_last_10_steps"] = sum(x["loss"] for x in log[-10:]) / len(log[-10:])
json.dump(fig, open(f"{dest}/figures.json", "w"), indent=2)
# The LLM it pairs with, named as the repository's folder rather than this machine's path.
for name, key in (("config.json", "llm"), ("adapter/adapter_config.json", "base_model_name_or_path")):
    c = json.load(open(f"{dest}/{name}"))
    c[key] = "models/lathe-kjv-llama"
    json.dump(c, open(f"{dest}/{name}", "w"), indent=2)
PY
  echo "installed models/lathe-kjv-speech"
fi
