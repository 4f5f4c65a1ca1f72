#!/usr/bin/env python3
"""Reference gradients for the training tests: the masked LM loss of a fixed batch and its gradient with respect to
every parameter, by PyTorch autograd in float64 on the stored weights of the fixture models.

  /usr/bin/python3 tools/grad_ref.py [--fixtures tests/fixtures] [NAME ...]

For llama-tiny, llama3-scaled (tied head, Llama-3 RoPE scaling, bf16 weights), mixtral-tiny, qwen2-tiny (tied
head, q/k/v biases), mistral-swa-tiny (a sliding window of 4 keys) and phi3-tiny (fused qkv_proj and gate_up_proj, a
sliding window of 5 keys) it writes, next to each fixture (only the NAMEs given, if any):
  grad_ref.json        the batch (token ids, B x T), the loss mask (B x T-1; mask[b][t] covers the target
                       ids[b][t+1]), the loss (lathe_ref.masked_lm_loss: mean cross-entropy over the masked-in
                       targets), and for mixtral-tiny the same with the load-balancing term (balance 0.02)
  grads.safetensors    one F32 tensor per parameter, named as the parameter (the HF tensor name, biases included;
                       phi3-tiny's by its fused names, self_attn.qkv_proj.weight and mlp.gate_up_proj.weight, rows
                       laid out as the weights; the float64 gradient rounded once; relative rounding error 6e-8, far
                       below what an f32 engine's backward can reach)
  grads-balance.safetensors  mixtral-tiny only: the gradients of the loss with the balancing term
Row 0 of the batch is a plain text row (every target counts); row 1 is a prompt + completion row whose first 5
targets are masked out, as `tune` does for {"prompt", "completion"} rows. Deterministic: float64 throughout.
"""
import argparse
import json
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import lathe_ref as ref  # noqa: E402

FIXTURES = ["llama-tiny", "llama3-scaled", "mixtral-tiny", "qwen2-tiny", "mistral-swa-tiny", "phi3-tiny", "gemma2-tiny"]
TEXTS = ["Lathe runs on any GPU", "Hello, World! 42 is it"]
T = 13          # tokens per row (odd on purpose: no tile of the engine divides it)
PROMPT_LEN = 5  # row 1: targets 0..4 are the prompt's, masked out
BALANCE = 0.02  # mixtral-tiny's router_aux_loss_coef


def batch(folder):
    """The fixed batch of the fixture at folder: ids (2, T) int64 and mask (2, T-1) float64."""
    tok = ref.Tokenizer(os.path.join(folder, "tokenizer.json"))
    rows = []
    for text in TEXTS:
        ids = tok.encode(text)
        assert len(ids) >= T, f"{text!r} encodes to {len(ids)} tokens, fewer than {T}"
        rows.append(ids[:T])
    ids = torch.tensor(rows, dtype=torch.int64)
    mask = torch.ones(2, T - 1, dtype=torch.float64)
    mask[1, :PROMPT_LEN] = 0
    return ids, mask


def write_grads(path, grads):
    ref.write_safetensors(path, {name: g.float().contiguous() for name, g in sorted(grads.items())})


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--fixtures", default=os.path.join(os.path.dirname(__file__), "..", "tests", "fixtures"))
    # Checked by hand: argparse before Python 3.12 tests an empty nargs="*" list against `choices` and refuses it.
    ap.add_argument("names", nargs="*", metavar="NAME", help=f"some of {', '.join(FIXTURES)} (default: all)")
    a = ap.parse_args()
    unknown = [n for n in a.names if n not in FIXTURES]
    if unknown:
        ap.error(f"unknown fixture {', '.join(unknown)} (choose from {', '.join(FIXTURES)})")
    torch.set_num_threads(1)
    for name in a.names or FIXTURES:
        folder = os.path.join(a.fixtures, name)
        model = ref.load_hf(folder, torch.float64)
        ids, mask = batch(folder)
        loss, grads = ref.loss_and_grads(model, ids, mask)
        info = {"name": name, "ids": ids.tolist(), "mask": mask.int().tolist(), "loss": loss,
                "loss_definition": "mean over mask==1 of -log p(ids[b][t+1] | ids[b][:t+1])",
                "grads_file": "grads.safetensors", "reference_dtype": "float64"}
        write_grads(os.path.join(folder, "grads.safetensors"), grads)
        if ref.is_moe(model.cfg):
            loss_b, grads_b = ref.loss_and_grads(model, ids, mask, BALANCE)
            info.update({"balance": BALANCE, "loss_balance": loss_b, "grads_balance_file": "grads-balance.safetensors"})
            write_grads(os.path.join(folder, "grads-balance.safetensors"), grads_b)
        norm = float(torch.sqrt(sum((g * g).sum() for g in grads.values())))
        info["grad_global_norm"] = norm
        with open(os.path.join(folder, "grad_ref.json"), "w") as f:
            json.dump(info, f, indent=1)
            f.write("\n")
        print(f"{name}: loss {loss:.6f} |grad| {norm:.4f}" + (f" loss+balance {info['loss_balance']:.6f}"
                                                               if "loss_balance" in info else ""))


if __name__ == "__main__":
    main()
