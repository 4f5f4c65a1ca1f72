#!/usr/bin/env python3
"""Reference DPO losses and gradients for the tests: direct preference optimisation of a policy against a frozen
reference on two fixed preference pairs, by PyTorch autograd in float64 on the stored weights.

  /usr/bin/python3 tools/dpo_ref.py [--fixtures tests/fixtures]

The policy is llama-tiny (trained in full); the reference is mixtral-tiny (so the policy and the reference
differ and the gradient is not the one at the start of training). Pairs: each of the two texts of
tools/grad_ref.py gives a prompt (its first 5 tokens) and two completions of 8 tokens: the text's own next 8
tokens (chosen) and those of the other text (rejected). Writes tests/fixtures/dpo/:
  dpo_ref.json             the batch (4 sequences of 13 tokens: pair p is sequences 2p, 2p+1), the mask (the
                           completion targets), per sequence the summed log-probabilities under the policy
                           (logp_policy) and the reference (logp_reference) and the summed KL(p_policy || p_ref)
                           of the next-token distributions at the masked positions (kl), and per case (beta, pair
                           weights): the loss, each pair's log-ratio margin, and the gradient file
  grads-<case>.safetensors  one F32 tensor per policy parameter
Loss per pair: -log sigmoid(beta * ((lp_w - lr_w) - (lp_l - lr_l))) with log-probabilities summed over the
completion tokens, times the pair's weight; the batch loss is the mean over pairs.
"""
import argparse
import json
import os
import sys

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import grad_ref  # noqa: E402
import lathe_ref as ref  # noqa: E402

POLICY, REFERENCE = "llama-tiny", "mixtral-tiny"
PROMPT = 5
CASES = [{"name": "beta0.1", "beta": 0.1, "weights": None},
         {"name": "beta0.5-weighted", "beta": 0.5, "weights": [0.25, 1.5]}]


def seq_logp(model, ids, mask):
    """Sum over the masked targets of log p(ids[b, t+1] | ids[b, :t+1]), per sequence."""
    logits = model(ids)[:, :-1, :]
    lp = torch.log_softmax(logits, -1).gather(-1, ids[:, 1:, None])[..., 0]
    return (lp * mask).sum(-1)


def seq_kl(model, reference, ids, mask):
    """Sum over the masked positions of KL(p_model || p_reference) of the next-token distributions, per sequence."""
    lp = torch.log_softmax(model(ids)[:, :-1, :], -1)
    lr = torch.log_softmax(reference(ids)[:, :-1, :], -1)
    return ((lp.exp() * (lp - lr)).sum(-1) * mask).sum(-1)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--fixtures", default=os.path.join(os.path.dirname(__file__), "..", "tests", "fixtures"))
    a = ap.parse_args()
    torch.set_num_threads(1)
    policy = ref.load_hf(os.path.join(a.fixtures, POLICY), torch.float64)
    reference = ref.load_hf(os.path.join(a.fixtures, REFERENCE), torch.float64)
    rows, _ = grad_ref.batch(os.path.join(a.fixtures, POLICY))
    T = rows.shape[1]
    seqs = []
    for p in range(2):
        prompt = rows[p, :PROMPT]
        for src in (p, 1 - p):
            seqs.append(torch.cat([prompt, rows[src, PROMPT:]]))
    ids = torch.stack(seqs)
    mask = torch.zeros(4, T - 1, dtype=torch.float64)
    mask[:, PROMPT - 1:] = 1
    out = {"policy": POLICY, "reference": REFERENCE, "ids": ids.tolist(), "mask": mask.int().tolist(),
           "reference_dtype": "float64", "cases": []}
    os.makedirs(os.path.join(a.fixtures, "dpo"), exist_ok=True)
    with torch.no_grad():
        lr = seq_logp(reference, ids, mask)
        out["logp_policy"] = seq_logp(policy, ids, mask).tolist()
        out["logp_reference"] = lr.tolist()
        out["kl"] = seq_kl(policy, reference, ids, mask).tolist()
    for case in CASES:
        policy.zero_grad(set_to_none=True)
        with torch.enable_grad():
            lp = seq_logp(policy, ids, mask)
            d = lp - lr
            z = case["beta"] * (d[0::2] - d[1::2])
            w = torch.tensor(case["weights"] or [1.0, 1.0], dtype=torch.float64)
            loss = (w * F.softplus(-z)).mean()
            loss.backward()
        info = dict(case)
        info.update({"value": loss.item(), "margins": z.tolist(), "grads_file": f"grads-{case['name']}.safetensors"})
        grads = {name: p.grad.detach().clone() for name, p in policy.named_parameters()}
        grad_ref.write_grads(os.path.join(a.fixtures, "dpo", info["grads_file"]), grads)
        out["cases"].append(info)
        print(f"{case['name']}: loss {info['value']:.6f} margins {[round(x, 4) for x in info['margins']]}")
    with open(os.path.join(a.fixtures, "dpo", "dpo_ref.json"), "w") as f:
        json.dump(out, f, indent=1)
        f.write("\n")


if __name__ == "__main__":
    main()
