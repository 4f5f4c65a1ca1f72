#!/usr/bin/env python3
"""Reference calibration statistics for the compression tests (tests/model/test_compress.c).

  /usr/bin/python3 tools/compress_ref.py [--fixtures tests/fixtures]

For the fixtures mixtral-tiny and llama-tiny, runs the fixture's token sequence (reference.json: prompt then
greedy tokens) through the PyTorch reference (tools/lathe_ref.py) in float64 and writes compress_ref.json next to
it with what methods/compress.c computes from one calibration window of those tokens:
  block_cos[l]   mean over tokens of cos(h_l, h_{l+1})                       (block drop)
  layer_cos[l]   mean over tokens of cos(x, x + FFN(norm(x))), x = h_l + attention   (layer drop)
  expert_prob    [l][e] mean over tokens of the router's softmax probability (expert drop)
  sq             per-column sums of squares of the input of every linear layer (Wanda):
                 attn_in (q/k/v), attn_out (o_proj), ffn_in and ffn_act (dense gate/up and down), and per expert
                 expert_in (w1/w3, the rows routed to it) and expert_act (w2)
Deterministic (float64 from the stored weights).
"""
import argparse
import json
import math
import os
import sys

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import lathe_ref as ref  # noqa: E402

FIXTURES = ["mixtral-tiny", "llama-tiny"]


def cos_rows(a, b):
    """Mean over rows of cos(a[t], b[t])."""
    return float(F.cosine_similarity(a, b, dim=-1).mean())


def sq(x):
    """Per-column sums of squares of x (rows, cols) as a list."""
    return (x * x).sum(0).tolist()


def attention_heads(attn, x, cos, sin):
    """The per-head attention output of lathe_ref.Attention before o_proj: (T, n_heads * head_dim)."""
    B, T, _ = x.shape
    q = attn.q_proj(x).view(B, T, attn.n_head, attn.d).transpose(1, 2)
    k = attn.k_proj(x).view(B, T, attn.n_kv, attn.d).transpose(1, 2)
    v = attn.v_proj(x).view(B, T, attn.n_kv, attn.d).transpose(1, 2)
    q, k = ref.apply_rope(q, cos, sin), ref.apply_rope(k, cos, sin)
    rep = attn.n_head // attn.n_kv
    k, v = k.repeat_interleave(rep, dim=1), v.repeat_interleave(rep, dim=1)
    att = (q @ k.transpose(-2, -1)) / math.sqrt(attn.d)
    causal = torch.ones(T, T, dtype=torch.bool).triu(1)
    att = att.masked_fill(causal, float("-inf")).softmax(dim=-1)
    return (att @ v).transpose(1, 2).reshape(T, attn.n_head * attn.d)


def statistics(model, ids):
    cfg = model.cfg
    x = model.model.embed_tokens(torch.tensor([ids]))
    cos, sin = ref.rope_cos_sin(cfg, torch.arange(len(ids)), x.dtype)
    out = {"tokens": ids, "block_cos": [], "layer_cos": [], "expert_prob": [],
           "sq": {k: [] for k in ["attn_in", "attn_out", "ffn_in", "ffn_act", "expert_in", "expert_act"]}}
    for block in model.model.layers:
        h = x[0]
        a_in = block.input_layernorm(x)
        heads = attention_heads(block.self_attn, a_in, cos, sin)
        mid = x + block.self_attn.o_proj(heads)[None]
        f_in = block.post_attention_layernorm(mid)[0]
        out["sq"]["attn_in"].append(sq(a_in[0]))
        out["sq"]["attn_out"].append(sq(heads))
        if hasattr(block, "block_sparse_moe"):
            moe = block.block_sparse_moe
            probs = moe.gate(f_in).softmax(dim=-1)
            out["expert_prob"].append(probs.mean(0).tolist())
            _, sel = torch.topk(probs, moe.top_k, dim=-1)
            ins, acts = [], []
            for e, expert in enumerate(moe.experts):
                rows = (sel == e).any(-1)
                xe = f_in[rows]
                ins.append(sq(xe))
                acts.append(sq(F.silu(expert.w1(xe)) * expert.w3(xe)))
            out["sq"]["expert_in"].append(ins)
            out["sq"]["expert_act"].append(acts)
        else:
            mlp = block.mlp
            out["sq"]["ffn_in"].append(sq(f_in))
            out["sq"]["ffn_act"].append(sq(F.silu(mlp.gate_proj(f_in)) * mlp.up_proj(f_in)))
        x = block(x, cos, sin)
        out["layer_cos"].append(cos_rows(mid[0], x[0]))
        out["block_cos"].append(cos_rows(h, x[0]))
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--fixtures", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests",
                                                       "fixtures"))
    args = ap.parse_args()
    torch.set_grad_enabled(False)
    for name in FIXTURES:
        folder = os.path.join(args.fixtures, name)
        with open(os.path.join(folder, "reference.json")) as f:
            r = json.load(f)
        ids = r["prompt_tokens"] + r["greedy_tokens"]
        stats = statistics(ref.load_hf(folder, torch.float64), ids)
        with open(os.path.join(folder, "compress_ref.json"), "w") as f:
            json.dump(stats, f)
            f.write("\n")
        print(f"wrote {folder}/compress_ref.json")


if __name__ == "__main__":
    main()
