#!/usr/bin/env bash
# The end-to-end demonstration behind `make demo`: starts lathed (in a private folder under the build tree, so
# it never touches a daemon you run yourself), runs real jobs on the embedded default model through it, and
# stops it again.
set -euo pipefail
build=${1:-build}
root=$(cd "$(dirname "$0")/.." && pwd)
bin="$root/$build/bin"
model="$root/models/lathe-kjv-llama"
demo="$root/$build/demo"
. "$root/scripts/private_daemon.sh"
private_daemon "$demo"

echo "== Vulkan devices"
"$bin/lathe-devices"
echo
echo "== starting lathed (socket $XDG_RUNTIME_DIR/lathe/lathed.sock)"
lathe daemon start
echo
echo "== lathe run selftest: the worker opens the GPU and checks an op against the CPU"
lathe run selftest
echo
echo "== lathe run generate: the embedded model (trained by this project on the King James Bible)"
lathe run generate --model "$model" --temperature 0 --max-tokens 48 \
  --prompt "In the beginning" --prompt "And Jesus said unto them," --prompt "The LORD is my shepherd;"
echo
echo "== lathe run score: perplexity on held-out verses"
lathe run score --model "$model" --data "$root/models/kjv-heldout.jsonl" --max-rows 64
echo
steer="$root/docs/steering"
echo "== lathe run steer-layers: which block's word vectors track surprisal best, and the joy/sorrow contrast"
lathe run steer-layers --model "$model" --data "$steer/texts.jsonl" --positive "$steer/joy.jsonl" \
  --negative "$steer/sorrow.jsonl"
echo
echo "== lathe run steer-vector: joy minus sorrow at the residual stream entering block 2"
lathe run steer-vector --model "$model" --positive "$steer/joy.jsonl" --negative "$steer/sorrow.jsonl" --layer 2 \
  --output "$demo/joy.safetensors"
echo
echo "== lathe run steer-eval: generations with and without the vector (docs/steering.md has the full figures)"
lathe run steer-eval --model "$model" --prompts "$steer/prompts.jsonl" --steer-vector "$demo/joy.safetensors" \
  --steer-alpha 4 --samples 25 --target rejoice --target glad --target joy --avoid mourn --avoid weep --avoid sorrow
echo
echo "== lathe run tune: LoRA on held-out verses (backpropagation on the GPU; docs/training.md)"
head -n 160 "$root/models/kjv-heldout.jsonl" > "$demo/tune-train.jsonl"
sed -n '161,200p' "$root/models/kjv-heldout.jsonl" > "$demo/tune-eval.jsonl"
lathe run tune --model "$model" --data "$demo/tune-train.jsonl" --eval "$demo/tune-eval.jsonl" --train lora \
  --lora-targets q,k,v,o --steps 20 --batch 8 --seq-len 64 --lr 3e-3 --eval-every 10 --output "$demo/lora"
echo
echo "== lathe run distill: the mixture-of-experts model teaches the dense one (ATKD; docs/distillation.md)"
lathe run distill --teacher "$root/models/lathe-kjv-moe" --student "$model" --data "$demo/tune-train.jsonl" \
  --eval "$demo/tune-eval.jsonl" --method atkd --train lora --lora-targets q,k,v,o --steps 10 --batch 8 \
  --seq-len 64 --lr 3e-3 --eval-every 5 --output "$demo/distill"
echo
speech="$root/models/lathe-kjv-speech"
verse=$(/usr/bin/python3 -c 'import json,sys; print(json.loads(open(sys.argv[1]).readline())["text"])' \
  "$speech/heldout.jsonl")
echo "== lathe run generate --audio: a held-out verse spoken by espeak-ng, heard by the embedded speech model"
echo "   \"$verse\""
echo "   (the demo's 3 MB speech model reaches the LLM but does not transcribe: docs/speech.md has its figures)"
espeak-ng -v en-us -s 165 -w "$demo/verse.wav" "$verse"
lathe run generate --model "$model" --speech "$speech" --adapter "$speech/adapter" --audio "$demo/verse.wav" \
  --prompt "Transcribe the audio." \
  --prompt "Continue the verse."
echo
echo "== lathe ps --all"
lathe ps --all
