#!/usr/bin/env bash
# The tune-zo figures of docs/tuning.md: MeZO and LeZO on the embedded model (models/lathe-kjv-llama), 300 steps
# each on two small tasks built from verses the model never saw in training (its held-out tail, Heb10-Rev22),
# reporting the held-out loss of the base model and of the tuned one.
#   book:  "<first 10 words of a verse>\nBook:" -> " Hebrews" | " Revelation" (a label word, as in the MeZO paper)
#   verse: the first 4 words of a verse of Revelation -> the rest of the verse
# Every fifth verse is held out. Needs python3 and the `bible` program (LATHE_TOOLS_DEPS=1 scripts/deps.sh).
# Runs its own lathed in a private folder under the build tree, as scripts/demo.sh does; about an hour on two
# lavapipe cores. Usage: scripts/zo_figures.sh [build folder] [model folder]
set -euo pipefail
build=${1:-build}
root=$(cd "$(dirname "$0")/.." && pwd)
bin="$root/$build/bin"
model=${2:-$root/models/lathe-kjv-llama}
work="$root/$build/zo-figures"
. "$root/scripts/private_daemon.sh"
private_daemon "$work"

cd "$work"
python3 - <<'EOF'
import json, subprocess
def verses(rng):
    out = subprocess.run(["bible", "-f", rng], check=True, capture_output=True, text=True).stdout
    return [line.split(" ", 1) for line in out.splitlines()]
def write(name, rows):
    for part, keep in (("train", lambda i: i % 5 != 0), ("eval", lambda i: i % 5 == 0)):
        with open(f"{name}-{part}.jsonl", "w") as f:
            for i, r in enumerate(rows):
                if keep(i):
                    f.write(json.dumps(r) + "\n")
heb, rev = verses("Heb1:1-Heb13:25"), verses("Rev1:1-Rev22:21")
write("book", [{"prompt": " ".join(t.split(" ")[:10]) + "\nBook:",
                "completion": " Hebrews" if r.startswith("Heb") else " Revelation"} for r, t in heb + rev])
write("verse", [{"prompt": " ".join(t.split(" ")[:4]), "completion": " " + " ".join(t.split(" ")[4:])} for r, t in rev])
EOF
lathe daemon start
for task in book verse; do
  lr=1e-4
  [ "$task" = verse ] && lr=5e-5
  for method in mezo lezo; do
    lathe run tune-zo --model "$model" --data "$task-train.jsonl" --eval "$task-eval.jsonl" --output "$task-$method" \
      --method "$method" --steps 300 --batch 16 --lr "$lr" --eps 1e-3 --seed 1 --eval-every 100 --save-every 100 \
      --json > "$task-$method.events"
  done
done
python3 - <<'EOF'
import json
for task in ("book", "verse"):
    for method in ("mezo", "lezo"):
        with open(f"{task}-{method}.events") as f:
            r = [json.loads(l) for l in f if l.startswith('{"output"')][-1]
        print(f"{task:6s} {method}: held-out loss {r['eval_loss_base']:.4f} (base) -> {r['eval_loss']:.4f} after 300 steps")
EOF
