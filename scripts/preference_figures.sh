#!/usr/bin/env bash
# The figures of docs/preference.md: the self-reference AI feedback loop on the embedded model, as Lathe jobs.
#  1. answer: the policy (models/lathe-kjv-llama) samples two continuations of each prompt (`generate`,
#     temperature 1, two seeds); prompts are the first words of the held-out verses (models/kjv-heldout.jsonl);
#  2. label: the same model as the annotator judges each pair in both orders (`feedback`);
#  3. train: `tune --objective dpo` on the first rows' labels, evaluated on the held-out last rows' labels
#     (preference accuracy, reward margin, KL to the starting weights), in several settings;
#  4. generate again: greedy continuations of the held-out prompts from the base and from the DPO policy, judged
#     against each other by the same annotator (`feedback`): the DPO policy's win rate among consistent labels.
# Runs its own lathed in a private folder under the build tree; several minutes on two lavapipe cores.
# Usage: scripts/preference_figures.sh [build folder] [prompts] [steps]
set -euo pipefail
build=${1:-build}
n=${2:-240}
steps=${3:-60}
root=$(cd "$(dirname "$0")/.." && pwd)
bin="$root/$build/bin"
model="$root/models/lathe-kjv-llama"
work="$root/$build/preference-figures"
. "$root/scripts/private_daemon.sh"
private_daemon "$work"
cd "$work"
lathe daemon start >/dev/null
py=/usr/bin/python3
# Held out: the last quarter of the prompts.
held=$((n / 4))

# Prompts: the first four words of every third held-out verse.
$py - "$root/models/kjv-heldout.jsonl" "$n" >prompts.txt <<'PY'
import json, sys
rows = [json.loads(l)["text"] for l in open(sys.argv[1])][::3][: int(sys.argv[2])]
for t in rows:
    print(" ".join(t.split()[:4]))
PY
mapfile -t prompts <prompts.txt
pargs=()
for p in "${prompts[@]}"; do pargs+=(--prompt "$p"); done

# Runs `lathe run ARGS --json`, keeps the records (stdout) in FILE and says how long it took.
run() {
  local out=$1
  shift
  local t0 t1
  t0=$(date +%s.%N)
  lathe run "$@" --json >"$out" 2>"$out.events"
  t1=$(date +%s.%N)
  printf '  %-44s %6.1f s\n' "$1 -> $out" "$(echo "$t1 - $t0" | bc)"
}

# Feedback rows {prompt, a, b} from two generate outputs (the same prompts in the same order), leaving out the
# prompts whose two answers are equal (a pair that prefers nothing); says how many, naming them WHY.
pair_up() {
  $py - "$1" "$2" "$3" <<'PY'
import json, sys
a = [json.loads(l) for l in open(sys.argv[1])]
b = [json.loads(l) for l in open(sys.argv[2])]
same = 0
for x, y in zip(a, b):
    if x["text"].strip() == y["text"].strip():
        same += 1
        continue
    print(json.dumps({"prompt": x["prompt"], "a": x["text"], "b": y["text"]}))
print(f"  {len(a)} prompts: {same} left out ({sys.argv[3]})", file=sys.stderr)
PY
}

echo "1. answers: two samples per prompt ($n prompts)"
run answers-a.jsonl generate --model "$model" "${pargs[@]}" --max-tokens 16 --temperature 1 --top-k 0 --top-p 1 --seed 1
run answers-b.jsonl generate --model "$model" "${pargs[@]}" --max-tokens 16 --temperature 1 --top-k 0 --top-p 1 \
  --seed 100001
pair_up answers-a.jsonl answers-b.jsonl "two equal samples" >pairs.jsonl

echo "2. labels: the model judges its own pairs"
run feedback.out feedback --model "$model" --data pairs.jsonl --max-tokens 24 --batch 16
# The feedback job's file, in its job folder (artifact paths are relative to it).
job=$($py -c 'import json,sys; print(json.loads(open(sys.argv[1]).readline())["id"])' feedback.out.events)
fb=$(find "$work/data" -path "*/jobs/$job/feedback.jsonl" | head -1)
rows=$(wc -l <"$fb")
head -n $((rows - held)) "$fb" >train.jsonl
tail -n "$held" "$fb" >heldout.jsonl
$py - train.jsonl heldout.jsonl <<'PY'
import json, sys
for name in sys.argv[1:]:
    rows = [json.loads(l) for l in open(name)]
    c = [r for r in rows if r["consistent"]]
    s = sorted(r["strength"] for r in c)
    print(f"  {name}: {len(rows)} rows, {len(c)} consistent, {len(rows) - len(c)} inconsistent; "
          f"median strength {s[len(s) // 2] if s else float('nan'):.3f}, {sum(x <= 0 for x in s)} consistent with strength <= 0")
PY

echo "3. DPO ($steps steps, batch 8, LoRA q,k,v,o,gate,up,down r 8 unless said; held-out: the last $held rows;"
echo "   every row, an inconsistent one labelled by its lean, unless said)"
common=(--model "$model" --objective dpo --data train.jsonl --eval heldout.jsonl --steps "$steps" --batch 8
        --warmup 5 --eval-every 0 --seed 1)
# Consistent labels only (the default): a small annotator may have none (position bias); then the job says so.
if lathe run tune "${common[@]}" --train lora --output "$work/dpo-consistent" --json >dpo-consistent.out \
  2>dpo-consistent.events; then
  echo "  consistent labels only: trained (see dpo-consistent.out)"
else
  echo "  consistent labels only: $(tail -c 400 dpo-consistent.events | grep -o 'no preference pair[^"]*' | head -1)"
fi
common+=(--include-inconsistent)
lora=(--train lora --lora-targets q,k,v,o,gate,up,down --lr 3e-3)
printf '  %-26s %6s %8s %8s %8s %8s %9s %9s %8s\n' run pairs acc_base acc_after rew_acc margin kl_ref dpo_loss seconds
for spec in "lora:${lora[*]}" \
            "lora-beta0.5:${lora[*]} --beta 0.5" \
            "lora-strength:${lora[*]} --dpo-weight strength" \
            "lora-sam:${lora[*]} --sam-rho 0.05" \
            "full:--train full --lr 3e-4"; do
  name=${spec%%:*}
  read -r -a args <<<"${spec#*:}"
  t0=$(date +%s.%N)
  lathe run tune "${common[@]}" "${args[@]}" --output "$work/dpo-$name" --json >"dpo-$name.out" 2>"dpo-$name.events"
  t1=$(date +%s.%N)
  $py - "$name" "dpo-$name.out" "dpo-$name.events" "$t0" "$t1" <<'PY'
import json, re, sys
name, out, ev, t0, t1 = sys.argv[1], sys.argv[2], sys.argv[3], float(sys.argv[4]), float(sys.argv[5])
res = [json.loads(l) for l in open(out) if l.startswith('{"output"')][-1]
pairs = re.search(r"(\d+) training pairs", open(ev).read()).group(1)
print(f"  {name:26s} {pairs:>6s} {res['eval_pref_accuracy_base']:8.3f} {res['eval_pref_accuracy']:8.3f} "
      f"{res['eval_reward_accuracy']:8.3f} {res['eval_reward_margin']:8.4f} {res['eval_kl_ref']:9.5f} "
      f"{res['eval_loss_base']:.3f}->{res['eval_loss']:.3f} {t1 - t0:6.1f}")
PY
done

echo "4. generate again: base vs the DPO policy (lora) on the $held held-out prompts, greedy, judged by the annotator"
hargs=()
for p in "${prompts[@]: -$held}"; do hargs+=(--prompt "$p"); done
run gen-base.jsonl generate --model "$model" "${hargs[@]}" --max-tokens 16 --temperature 0
run gen-dpo.jsonl generate --model "$model" --adapter "$work/dpo-lora" "${hargs[@]}" --max-tokens 16 --temperature 0
# Both orders of the pair are judged inside feedback (position swap); base as a, DPO as b.
pair_up gen-base.jsonl gen-dpo.jsonl "the same greedy answer from both" >judge.jsonl
run judge.out feedback --model "$model" --data judge.jsonl --max-tokens 24 --batch 16
$py - judge.out judge.jsonl "$(find "$work/data" -path "*/jobs/$($py -c 'import json,sys; print(json.loads(open(sys.argv[1]).readline())["id"])' judge.out.events)/feedback.jsonl")" <<'PY'
import json, sys
recs = [json.loads(l) for l in open(sys.argv[1]) if l.startswith('{"row"')]
rows = [json.loads(l) for l in open(sys.argv[2])]
full = [json.loads(l) for l in open(sys.argv[3])]
# In judge.jsonl a is the base's answer, b the DPO policy's.
cons = [r for r in recs if r["consistent"]]
wins = sum(r["chosen"] == rows[r["row"] - 1]["b"] for r in cons)
lean_b = sum(f["lean"] == "b" for f in full)
print(f"  {len(recs)} judged pairs: {len(cons)} consistent labels, the DPO policy's answer chosen in {wins}; "
      f"the annotator's lean picks the DPO policy's answer in {lean_b} of {len(full)} ({lean_b / max(len(full), 1):.3f})")
PY
