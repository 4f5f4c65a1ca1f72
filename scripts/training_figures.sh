#!/usr/bin/env bash
# The tune figures of docs/training.md: first-order tuning of the embedded model (models/lathe-kjv-llama) on a
# task built from verses it never saw in training (the held-out tail of models/kjv-heldout.jsonl, which ends with
# Revelation): "the first 4 words of a verse" -> " the rest of the verse", every fifth verse held out. The general
# set for the forgetting measure is the first 200 held-out verses (Hebrews and James) as plain text. Runs full,
# LoRA and adapter tuning, and full and LoRA tuning again with SAM, all from the same seed, and prints each run's
# held-out task loss before and after and the general loss before and after.
# Runs its own lathed in a private folder under the build tree; a few minutes on two lavapipe cores.
# Usage: scripts/training_figures.sh [build folder] [steps]
set -euo pipefail
build=${1:-build}
steps=${2:-150}
root=$(cd "$(dirname "$0")/.." && pwd)
bin="$root/$build/bin"
model="$root/models/lathe-kjv-llama"
work="$root/$build/training-figures"
. "$root/scripts/private_daemon.sh"
private_daemon "$work"

cd "$work"
/usr/bin/python3 - "$root/models/kjv-heldout.jsonl" <<'PY'
import json, sys
verses = [json.loads(l)["text"] for l in open(sys.argv[1])]
task = verses[-400:]
with open("task-train.jsonl", "w") as tr, open("task-eval.jsonl", "w") as ev:
    for i, v in enumerate(task):
        w = v.split(" ")
        row = {"prompt": " ".join(w[:4]), "completion": " " + " ".join(w[4:])}
        (ev if i % 5 == 0 else tr).write(json.dumps(row) + "\n")
with open("general.jsonl", "w") as f:
    for v in verses[:200]:
        f.write(json.dumps({"text": v}) + "\n")
PY
lathe daemon start >/dev/null
common=(--model "$model" --data task-train.jsonl --eval task-eval.jsonl --eval-general general.jsonl
        --steps "$steps" --batch 8 --seq-len 64 --warmup 10 --schedule cosine --clip 1 --eval-every 0 --seed 1)
printf '%-22s %10s %10s %12s %12s %10s %8s\n' run task_before task_after general_before general_after forgetting seconds
for spec in "full:--train full --lr 3e-4" "full+SAM:--train full --lr 3e-4 --sam-rho 0.05" \
            "lora:--train lora --lr 3e-3 --lora-targets q,k,v,o,gate,up,down" \
            "lora+SAM:--train lora --lr 3e-3 --lora-targets q,k,v,o,gate,up,down --sam-rho 0.05" \
            "adapter(block 2):--train adapter --layer 2 --lr 3e-3"; do
  name=${spec%%:*}
  read -r -a extra <<<"${spec#*:}"
  t0=$(date +%s.%N)
  json=$(lathe run tune "${common[@]}" "${extra[@]}" --output "$work/out-${name//[^a-z0-9]/_}" --json 2>/dev/null)
  t1=$(date +%s.%N)
  /usr/bin/python3 - "$name" "$json" "$t0" "$t1" <<'PY'
import json, sys
name, out, t0, t1 = sys.argv[1], json.loads(sys.argv[2].strip().splitlines()[-1]), float(sys.argv[3]), float(sys.argv[4])
print(f"{name:22s} {out['eval_loss_base']:10.4f} {out['eval_loss']:10.4f} {out['general_loss_before']:12.4f} "
      f"{out['general_loss_after']:12.4f} {out['forgetting']:+10.4f} {t1 - t0:8.1f}")
PY
done
