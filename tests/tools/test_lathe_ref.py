#!/usr/bin/env python3
"""Checks tools/lathe_ref.py against a real model and against independent, written-out formulas.

  /usr/bin/python3 tests/tools/test_lathe_ref.py

Needs Debian's python3-torch (LATHE_TOOLS_DEPS=1 scripts/deps.sh). The stories260K check reads the model from
$LATHE_MODELS_DIR, else tests/fixtures (where it is committed). Exits non-zero on the first failure.
"""
import json
import math
import os
import subprocess
import sys
import tempfile

import torch

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
sys.path.insert(0, os.path.join(ROOT, "tools"))
import lathe_ref as ref  # noqa: E402

STORIES_CONTINUATION = (", there was a little girl named Lily. She loved to play outside in the park. "
                        "One day, she saw a big, red ball.")


def stories_dir():
    for base in (os.environ.get("LATHE_MODELS_DIR"), os.path.join(ROOT, "tests", "fixtures")):
        if base and os.path.isdir(os.path.join(base, "stories260K", "hf")):
            return os.path.join(base, "stories260K", "hf")
    return None


def test_stories260k():
    folder = stories_dir()
    if folder is None:
        print("SKIP stories260K: model folder not found")
        return
    tok = ref.Tokenizer(os.path.join(folder, "tokenizer.json"))
    ids = tok.encode("Once upon a time")
    assert ids == [1, 403, 407, 261, 378], ids
    model = ref.load_hf(folder)
    new = ref.generate(model, ids, 40, eos_id=2)
    text = tok.decode(ids + new)
    assert text == "Once upon a time" + STORIES_CONTINUATION, text
    assert tok.decode(tok.encode("Hello wörld ☃ 42!")) == "Hello wörld ☃ 42!"  # byte fallback round trip


def test_safetensors_round_trip():
    g = torch.Generator().manual_seed(0)
    tensors = {"a": torch.randn(3, 5, generator=g), "b": torch.randn(7, generator=g).half(),
               "c": torch.randn(2, 3, generator=g).bfloat16(), "d": torch.arange(5, dtype=torch.int32)}
    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "t.safetensors")
        ref.write_safetensors(path, tensors)
        with open(path, "rb") as f:
            raw = f.read()
        n = int.from_bytes(raw[:8], "little")
        assert n % 8 == 0 and raw[8 + n - 1:8 + n] in (b" ", b"}"), "header not padded to 8 bytes"
        assert json.loads(raw[8:8 + n])["a"] == {"dtype": "F32", "shape": [3, 5], "data_offsets": [0, 60]}
        back, meta = ref.read_safetensors(path)
    assert meta == {"format": "pt"}
    for k, v in tensors.items():
        assert back[k].dtype == v.dtype and torch.equal(back[k], v), k


def test_llama3_inv_freq():
    cfg = {"hidden_size": 64, "num_attention_heads": 2, "rope_theta": 10000.0,
           "rope_scaling": {"rope_type": "llama3", "factor": 4.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                            "original_max_position_embeddings": 64}}
    got = ref.rope_inv_freq(cfg).tolist()
    kinds = set()
    for i, freq in enumerate(got):  # Meta's apply_scaling, one frequency at a time
        base = 1.0 / 10000.0 ** (2 * i / 32)
        wavelen = 2 * math.pi / base
        if wavelen < 64 / 4:
            want = base
            kinds.add("high")
        elif wavelen > 64 / 1:
            want = base / 4
            kinds.add("low")
        else:
            smooth = (64 / wavelen - 1) / (4 - 1)
            want = (1 - smooth) * base / 4 + smooth * base
            kinds.add("medium")
        assert abs(freq - want) <= 1e-12 * want, (i, freq, want)
    assert kinds == {"high", "medium", "low"}


def dense_forward(model, ids):
    """The forward pass written out per head and per expert with plain loops (float64)."""
    cfg = model.cfg
    sd = {k: v.double() for k, v in model.state_dict().items()}
    T, H, KV, D = len(ids), cfg["num_attention_heads"], cfg["num_key_value_heads"], ref.head_dim(cfg)
    eps = cfg["rms_norm_eps"]

    def rms(x, w):
        return w * x / torch.sqrt((x * x).mean(-1, keepdim=True) + eps)

    def rope(v, pos):  # v (D,), rotate pairs (j, j + D/2)
        out = v.clone()
        for j in range(D // 2):
            ang = pos * ref.rope_inv_freq(cfg)[j].item()
            a, b = v[j].item(), v[j + D // 2].item()
            out[j], out[j + D // 2] = a * math.cos(ang) - b * math.sin(ang), b * math.cos(ang) + a * math.sin(ang)
        return out

    x = sd["model.embed_tokens.weight"][ids]
    for layer in range(cfg["num_hidden_layers"]):
        p = f"model.layers.{layer}."
        h = rms(x, sd[p + "input_layernorm.weight"])
        q, k, v = (h @ sd[p + f"self_attn.{n}_proj.weight"].t() for n in "qkv")
        att_out = torch.zeros(T, H * D, dtype=torch.float64)
        for head in range(H):
            kvh = head // (H // KV)
            for t in range(T):
                qt = rope(q[t, head * D:(head + 1) * D], t)
                scores = torch.tensor([qt @ rope(k[s, kvh * D:(kvh + 1) * D], s) / math.sqrt(D) for s in range(t + 1)])
                w = scores.softmax(0)
                att_out[t, head * D:(head + 1) * D] = sum(w[s] * v[s, kvh * D:(kvh + 1) * D] for s in range(t + 1))
        x = x + att_out @ sd[p + "self_attn.o_proj.weight"].t()
        h = rms(x, sd[p + "post_attention_layernorm.weight"])
        if ref.is_moe(cfg):
            out = torch.zeros_like(h)
            for t in range(T):
                probs = (sd[p + "block_sparse_moe.gate.weight"] @ h[t]).softmax(0)
                top = sorted(range(len(probs)), key=lambda e: -probs[e])[:cfg["num_experts_per_tok"]]
                norm = sum(probs[e] for e in top)
                for e in top:
                    w1, w2, w3 = (sd[p + f"block_sparse_moe.experts.{e}.w{i}.weight"] for i in (1, 2, 3))
                    out[t] += probs[e] / norm * (w2 @ (torch.nn.functional.silu(w1 @ h[t]) * (w3 @ h[t])))
        else:
            g, u, d = (sd[p + f"mlp.{n}_proj.weight"] for n in ("gate", "up", "down"))
            out = (torch.nn.functional.silu(h @ g.t()) * (h @ u.t())) @ d.t()
        x = x + out
    x = rms(x, sd["model.norm.weight"])
    head = sd["model.embed_tokens.weight"] if cfg.get("tie_word_embeddings") else sd["lm_head.weight"]
    return x @ head.t()


def test_forward_against_loops():
    fixtures = os.path.join(ROOT, "tests", "fixtures")
    for name in ("llama-tiny", "llama3-scaled", "mixtral-tiny"):
        model = ref.load_hf(os.path.join(fixtures, name), torch.float64)
        with open(os.path.join(fixtures, name, "reference.json")) as f:
            ids = json.load(f)["prompt_tokens"][:6]
        want = dense_forward(model, ids)
        with torch.no_grad():
            got = model(torch.tensor([ids]))[0]
        err = float((got - want).abs().max())
        assert err < 1e-10, (name, err)  # float64 both ways: only summation order differs


def test_fixtures_reproducible():
    subprocess.run([sys.executable, os.path.join(ROOT, "tools", "make_fixtures.py"), "--check"], check=True,
                    stdout=subprocess.DEVNULL)


def test_grads_against_finite_differences():
    """The autograd gradients grad_ref.py writes, against central differences of the loss in float64."""
    import grad_ref  # noqa: E402 (tools/ is on the path)
    for name, balance in (("llama-tiny", 0.0), ("mixtral-tiny", 0.0), ("mixtral-tiny", 0.02)):
        folder = os.path.join(ROOT, "tests", "fixtures", name)
        model = ref.load_hf(folder, torch.float64)
        ids, mask = grad_ref.batch(folder)
        _, grads = ref.loss_and_grads(model, ids, mask, balance)
        params = dict(model.named_parameters())
        gen = torch.Generator().manual_seed(7)
        for pname in ("model.embed_tokens.weight", "model.layers.0.self_attn.q_proj.weight",
                      "model.layers.1.input_layernorm.weight", "model.norm.weight"):
            p = params[pname]
            for _ in range(3):
                i = int(torch.randint(p.numel(), (1,), generator=gen))
                h, old = 1e-6, p.data.view(-1)[i].item()
                with torch.no_grad():
                    p.data.view(-1)[i] = old + h
                    up = ref.masked_lm_loss(model, ids, mask, balance).item()
                    p.data.view(-1)[i] = old - h
                    down = ref.masked_lm_loss(model, ids, mask, balance).item()
                    p.data.view(-1)[i] = old
                fd, ag = (up - down) / (2 * h), grads[pname].view(-1)[i].item()
                # Central differences in float64 err by about h^2 times the third derivative plus eps |loss| / h:
                # around 1e-9 here.
                assert abs(fd - ag) < 1e-7 + 1e-6 * abs(ag), (name, balance, pname, i, fd, ag)


def test_load_balance_even_routing_is_one():
    logits = torch.zeros(8, 4, dtype=torch.float64)  # equal probabilities; top-2 picks experts 0 and 1 each time
    # f = (1/2, 1/2, 0, 0), P = (1/4, ...): 4 * (1/8 + 1/8) = 1.
    assert abs(ref.load_balance_loss(logits, 2).item() - 1.0) < 1e-12
    logits = torch.tensor([[9.0, 0, 0, 0], [0, 9.0, 0, 0], [0, 0, 9.0, 0], [0, 0, 0, 9.0]], dtype=torch.float64)
    # Each expert gets a quarter of the slots and every mean probability is 1/4: 4 * 4 * (1/16) = 1.
    assert abs(ref.load_balance_loss(logits, 1).item() - 1.0) < 1e-12
    logits = torch.tensor([[9.0, 0, 0, 0]] * 4, dtype=torch.float64)  # all on expert 0: f_0 = 1, P_0 ~ 1
    assert ref.load_balance_loss(logits, 1).item() > 3.9


def test_kjv_tokenizer():
    path = os.path.join(ROOT, "models", "lathe-kjv-llama", "tokenizer.json")
    if not os.path.exists(path):
        print("SKIP kjv tokenizer: models/lathe-kjv-llama not trained yet")
        return
    tok = ref.Tokenizer(path)
    for text in ("In the beginning God created the heaven and the earth.",
                 "And Moses said unto the LORD, O my Lord, I am not eloquent",
                 "  two  spaces, tabs\tand\nnewlines; naïve ☃ 123_456 it's"):
        ids = tok.encode(text)
        assert ids[0] == tok.vocab["<|bos|>"] and tok.decode(ids) == text, (text, ids)
    assert len(tok.encode(" the", add_bos=False)) == 1


def main():
    torch.set_num_threads(1)
    tests = [v for k, v in globals().items() if k.startswith("test_")]
    for t in tests:
        t()
        print("ok", t.__name__)
    print(f"{len(tests)} checks passed")


if __name__ == "__main__":
    main()
