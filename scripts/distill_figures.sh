#!/usr/bin/env bash
# The figures of docs/distillation.md: compress, then recover by distillation, on the embedded model.
# The teacher is models/lathe-kjv-llama (4 blocks); the student is that model with its most redundant block dropped
# by `compress --method block-drop`. Recovery data: every tenth verse of the teacher's own training text (the KJV
# before the held-out tail, from the `bible` program of Debian's bible-kjv, which `LATHE_TOOLS_DEPS=1 make deps`
# installs), as the compression paper recovers on general text. Evaluation: models/kjv-heldout.jsonl, which no
# model saw. Runs plain `tune` and `distill` with kd, atkd and kid from the same seed, steps and learning rate, and
# prints the student's held-out loss and perplexity before and after each, with the teacher's as the reference.
# Runs its own lathed in a private folder under the build tree; a few minutes on two lavapipe cores.
# Usage: scripts/distill_figures.sh [build folder] [steps] [train: full or lora]
set -euo pipefail
build=${1:-build}
steps=${2:-200}
train=${3:-full}
root=$(cd "$(dirname "$0")/.." && pwd)
bin="$root/$build/bin"
teacher="$root/models/lathe-kjv-llama"
work="$root/$build/distill-figures"
. "$root/scripts/private_daemon.sh"
private_daemon "$work"

cd "$work"
command -v bible >/dev/null || { echo "distill_figures: needs the bible program (LATHE_TOOLS_DEPS=1 make deps)" >&2; exit 1; }
bible -f "Gen1:1-Rev22:21" | /usr/bin/python3 -c '
import json, re, sys
verses = [re.fullmatch(r"(\d?[A-Za-z]+)(\d+):(\d+) (.+)", l.rstrip("\n")).group(4).strip() for l in sys.stdin]
train = verses[: len(verses) - 933]  # the held-out tail is the last 933 verses (models/README.md)
for v in train[::10]:
    print(json.dumps({"text": v}))
' >train.jsonl
cp "$root/models/kjv-heldout.jsonl" eval.jsonl
lathe daemon start >/dev/null
lathe run compress --model "$teacher" --method block-drop --drop 1 --data train.jsonl --eval eval.jsonl \
  --output "$work/student" --samples 32 --tokens 128 --json >compress.json 2>/dev/null
if [ "$train" = lora ]; then lr=3e-3; extra=(--lora-targets q,k,v,o,gate,up,down); else lr=3e-4; extra=(); fi
common=(--data train.jsonl --eval eval.jsonl --steps "$steps" --batch 8 --seq-len 64 --warmup 10 --schedule cosine
        --clip 1 --eval-every 0 --seed 1 --train "$train" --lr "$lr" "${extra[@]}")
printf '%-10s %10s %10s %10s %10s %12s %8s\n' run loss_before ppl_before loss_after ppl_after teacher_ppl seconds
for spec in "tune:tune --model $work/student" \
            "kd:distill --method kd --teacher $teacher --student $work/student" \
            "atkd:distill --method atkd --teacher $teacher --student $work/student" \
            "kd-T2:distill --method kd --kd-temperature 2 --teacher $teacher --student $work/student" \
            "kid:distill --method kid --kid-loss kd --teacher $teacher --student $work/student"; do
  name=${spec%%:*}
  read -r -a args <<<"${spec#*:}"
  t0=$(date +%s.%N)
  json=$(lathe run "${args[@]}" "${common[@]}" --output "$work/out-${name//[^a-z0-9]/_}" --json 2>/dev/null)
  t1=$(date +%s.%N)
  /usr/bin/python3 - "$name" "$json" "$t0" "$t1" <<'PY'
import json, math, sys
name, t0, t1 = sys.argv[1], float(sys.argv[3]), float(sys.argv[4])
recs = [json.loads(l) for l in sys.argv[2].strip().splitlines() if l.startswith("{")]
out = [r for r in recs if "eval_loss_base" in r][-1]
teacher = out.get("teacher_eval_ppl")
print(f"{name:10s} {out['eval_loss_base']:10.4f} {math.exp(out['eval_loss_base']):10.2f} {out['eval_loss']:10.4f} "
      f"{math.exp(out['eval_loss']):10.2f} {teacher if teacher else float('nan'):12.2f} {t1 - t0:8.1f}")
PY
done
/usr/bin/python3 - compress.json <<'PY'
import json, sys
lines = [json.loads(l) for l in open(sys.argv[1]) if l.startswith("{")]
print("compress:", json.dumps(lines[-1])[:600])
PY
