#!/usr/bin/env python3
"""Reference distillation losses and gradients for the tests: standard KD and ATKD of a student against a frozen
teacher on the fixed batch of tools/grad_ref.py, by PyTorch autograd in float64 on the stored weights.

  /usr/bin/python3 tools/distill_ref.py [--fixtures tests/fixtures]

The student is llama-tiny (trained in full); each case names its teacher, run forward only in float64 from its
stored weights (llama3-scaled's are bf16, so this is exactly the function the engine's bf16 teacher computes, up to
the engine's f32 arithmetic). It writes tests/fixtures/distill/:
  distill_ref.json      the batch, the student's argmax at every position, and per case: the teacher, the loss, its temperature (and lambda), the student's
                        and the teacher's cross-entropy, and for ATKD the uncertainty u = 1 - pT(target) per counted
                        token, the median and which tokens are easy
  grads-<case>.safetensors   one F32 tensor per student parameter
Losses (docs/distillation.md), over the counted targets (mask 1):
  kd:   mean of T^2 KL(softmax(t/T) || softmax(s/T))
  atkd: lambda * mean_easy(T^2 NCKD) + (1 - lambda) * mean_hard(T^2 (TCKD + NCKD)), easy = u below the median,
        u from the teacher at temperature 1
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

STUDENT = "llama-tiny"
CASES = [
    {"name": "kd", "loss": "kd", "teacher": "mixtral-tiny", "temperature": 2.0},
    {"name": "atkd", "loss": "atkd", "teacher": "llama3-scaled", "temperature": 1.0, "lambda": 0.2},
    {"name": "atkd-t2", "loss": "atkd", "teacher": "llama3-scaled", "temperature": 2.0, "lambda": 0.7},
]


def counted(x, mask):
    """The rows of x (B, T-1, ...) whose mask is 1, flattened."""
    return x.reshape(-1, *x.shape[2:])[mask.reshape(-1) > 0]


def kd_loss(s, t, T):
    ls, lt = F.log_softmax(s / T, -1), F.log_softmax(t / T, -1)
    return (T * T * (lt.exp() * (lt - ls)).sum(-1)).mean()


def atkd_terms(s, t, g, T):
    """Per-row T^2 TCKD and T^2 NCKD from the definitions (probabilities renormalised without the target)."""
    ps, pt = F.softmax(s / T, -1), F.softmax(t / T, -1)
    onehot = F.one_hot(g, s.shape[-1]).to(torch.bool)
    qg, pg = ps[onehot], pt[onehot]
    tckd = pg * torch.log(pg / qg) + (1 - pg) * torch.log((1 - pg) / (1 - qg))
    rs = ps.masked_fill(onehot, 0) / (1 - qg)[:, None]
    rt = pt.masked_fill(onehot, 0) / (1 - pg)[:, None]
    nckd = torch.where(onehot, torch.zeros_like(rt), rt * (torch.log(rt.clamp_min(1e-300)) - torch.log(rs.clamp_min(1e-300)))).sum(-1)
    return T * T * tckd, T * T * nckd


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--fixtures", default=os.path.join(os.path.dirname(__file__), "..", "tests", "fixtures"))
    a = ap.parse_args()
    torch.set_num_threads(1)
    student = ref.load_hf(os.path.join(a.fixtures, STUDENT), torch.float64)
    ids, mask = grad_ref.batch(os.path.join(a.fixtures, STUDENT))
    out = {"student": STUDENT, "ids": ids.tolist(), "mask": mask.int().tolist(), "reference_dtype": "float64",
           "cases": []}
    target = ids[:, 1:]
    # The student's greedy prediction at every position (train_predict), with its margin over the runner-up.
    with torch.no_grad():
        top = student(ids).topk(2, dim=-1)
    margin = (top.values[..., 0] - top.values[..., 1]).min().item()
    assert margin > 1e-4, f"a prediction {margin:.2e} ahead of the runner-up: too close for an f32 engine"
    out["student_argmax"] = top.indices[..., 0].tolist()
    for case in CASES:
        teacher = ref.load_hf(os.path.join(a.fixtures, case["teacher"]), torch.float64)
        with torch.no_grad():
            t = counted(teacher(ids)[:, :-1, :], mask)
        g = counted(target, mask)
        T = case["temperature"]
        student.zero_grad(set_to_none=True)
        with torch.enable_grad():
            s = counted(student(ids)[:, :-1, :], mask)
            info = dict(case)
            if case["loss"] == "kd":
                loss = kd_loss(s, t, T)
            else:
                lam = case["lambda"]
                u = 1 - F.softmax(t, -1)[torch.arange(len(g)), g]
                med = u.median() if len(u) % 2 else u.sort().values[len(u) // 2 - 1: len(u) // 2 + 1].mean()
                easy = u < med
                # The engine's f32 uncertainties must sort the same way: no token but the median's own may sit
                # within 1e-5 of the median.
                gap = (u - med).abs()[u != med].min().item()
                assert gap > 1e-5, f"an uncertainty {gap:.2e} from the median: the split is fragile"
                tc, nc = atkd_terms(s, t, g, T)
                loss = lam * nc[easy].mean() + (1 - lam) * (tc[~easy] + nc[~easy]).mean()
                info.update({"u": u.tolist(), "median": med.item(), "easy": easy.int().tolist(),
                             "n_easy": int(easy.sum()), "n_hard": int((~easy).sum())})
            loss.backward()
        info["value"] = loss.item()
        info["student_ce"] = F.cross_entropy(s.detach(), g).item()
        info["teacher_ce"] = F.cross_entropy(t, g).item()
        info["grads_file"] = f"grads-{case['name']}.safetensors"
        grads = {name: p.grad.detach().clone() for name, p in student.named_parameters()}
        grad_ref.write_grads(os.path.join(a.fixtures, "distill", info["grads_file"]), grads)
        out["cases"].append(info)
        print(f"{case['name']}: teacher {case['teacher']} loss {info['value']:.6f} student ce {info['student_ce']:.4f} "
              f"teacher ce {info['teacher_ce']:.4f}" + (f" easy {info['n_easy']} hard {info['n_hard']}"
                                                        if "n_easy" in info else ""))
    os.makedirs(os.path.join(a.fixtures, "distill"), exist_ok=True)
    with open(os.path.join(a.fixtures, "distill", "distill_ref.json"), "w") as f:
        json.dump(out, f, indent=1)
        f.write("\n")


if __name__ == "__main__":
    main()
