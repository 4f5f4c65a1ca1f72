#!/usr/bin/env python3
"""Checks tools/lathe_ref.py against a real model and against independent, written-out formulas (per-head, per-key
and per-expert loops with their own reading of biases, sliding windows, Phi-3's fused weights and Gemma 2's rules),
Phi-3 against the Mistral model made of its split weights, and the fixtures against it.

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


def split_phi3(sd, cfg):
    """A Phi-3 state dict with its fused weights cut apart under the LLaMA names: rows [0, H*D) of qkv_proj are
    q_proj, the next KV*D k_proj, the last KV*D v_proj; the first intermediate_size rows of gate_up_proj are
    gate_proj, the rest up_proj."""
    qd = cfg["num_attention_heads"] * ref.head_dim(cfg)
    kvd = cfg["num_key_value_heads"] * ref.head_dim(cfg)
    f = cfg["intermediate_size"]
    out = {}
    for name, t in sd.items():
        if name.endswith("self_attn.qkv_proj.weight"):
            assert t.shape[0] == qd + 2 * kvd, (name, t.shape)
            p = name[:-len("qkv_proj.weight")]
            out[p + "q_proj.weight"], out[p + "k_proj.weight"] = t[:qd].clone(), t[qd:qd + kvd].clone()
            out[p + "v_proj.weight"] = t[qd + kvd:].clone()
        elif name.endswith("mlp.gate_up_proj.weight"):
            assert t.shape[0] == 2 * f, (name, t.shape)
            p = name[:-len("gate_up_proj.weight")]
            out[p + "gate_proj.weight"], out[p + "up_proj.weight"] = t[:f].clone(), t[f:].clone()
        else:
            out[name] = t.clone()
    return out


GEMMA2_RULES = ("norm_offset", "embed_scale", "scalar", "attn_softcap", "cap_after_mask", "final_softcap", "alternate",
                "sandwich", "gelu")


def dense_forward(model, ids, wrong=()):
    """The forward pass written out per head and per expert with plain loops (float64). Query t of a Mistral or
    Phi-3 model with a window W reads the keys t-W+1..t (the window holds W keys, the query's own included), others
    the keys 0..t; the linear layers add their bias where the checkpoint has one; Phi-3's fused weights are split
    by split_phi3.

    Gemma 2, rule by rule as modeling_gemma2 writes them: the embedding times sqrt(hidden_size); every norm
    x / sqrt(mean(x^2) + eps) * (1 + w); scores q.k / sqrt(query_pre_attn_scalar), then c * tanh(score / c) with
    c = attn_logit_softcapping, over the allowed keys only; layer l slides (window sliding_window) when
    layer_types[l] == "sliding_attention", or without layer_types when l is even; the block
    x + post_attention_layernorm(attn(input_layernorm(x))), then x + post_feedforward_layernorm(mlp(
    pre_feedforward_layernorm(x))); the MLP down(gelu_tanh(gate) * up) with gelu_tanh written out; the head tied
    unless tie_word_embeddings is false; the logits c * tanh(logits / c) with c = final_logit_softcapping.
    `wrong` names Gemma 2 rules (GEMMA2_RULES) to get wrong the way an engine might: norm_offset (w instead of 1 + w),
    embed_scale (no sqrt(hidden)), scalar (1 / sqrt(head_dim)), attn_softcap (none), cap_after_mask (the cap applied
    after an additive -inf mask, which turns masked and future keys into -c: they get weight), final_softcap (none),
    alternate (the window on every layer), sandwich (LLaMA's block: no post-norms, pre_feedforward_layernorm before
    the MLP), gelu (silu instead)."""
    cfg = model.cfg
    assert set(wrong) <= set(GEMMA2_RULES), wrong
    sd = split_phi3({k: v.double() for k, v in model.state_dict().items()}, cfg)
    T, H, KV, D = len(ids), cfg["num_attention_heads"], cfg["num_key_value_heads"], ref.head_dim(cfg)
    C = cfg["hidden_size"]
    eps = cfg["rms_norm_eps"]
    arch = cfg["architectures"][0]
    gemma = arch == "Gemma2ForCausalLM"
    inv_freq = ref.rope_inv_freq(cfg).tolist()

    def window(layer):
        if arch in ("MistralForCausalLM", "Phi3ForCausalLM"):
            return cfg.get("sliding_window")
        if gemma:
            types = cfg.get("layer_types")
            sliding = types[layer] == "sliding_attention" if types else layer % 2 == 0
            return cfg["sliding_window"] if sliding or "alternate" in wrong else None
        return None

    def keys(t, w):
        return range(0 if w is None else max(0, t - w + 1), t + 1)

    def linear(x, name):
        y = x @ sd[name + ".weight"].t()
        return y + sd[name + ".bias"] if name + ".bias" in sd else y

    def rms(x, w):
        if gemma and "norm_offset" not in wrong:
            w = 1 + w
        return w * x / torch.sqrt((x * x).mean(-1, keepdim=True) + eps)

    def rope(v, pos):  # v (D,), rotate pairs (j, j + D/2)
        out = v.clone()
        for j in range(D // 2):
            ang = pos * inv_freq[j]
            a, b = v[j].item(), v[j + D // 2].item()
            out[j], out[j + D // 2] = a * math.cos(ang) - b * math.sin(ang), b * math.cos(ang) + a * math.sin(ang)
        return out

    def cap(value, c):
        return value if c is None else c * math.tanh(value / c)

    def gelu_tanh(x):
        return 0.5 * x * (1 + torch.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * x ** 3)))

    if gemma:
        scale = 1 / math.sqrt(D if "scalar" in wrong else cfg["query_pre_attn_scalar"])
        attn_cap = None if "attn_softcap" in wrong else cfg.get("attn_logit_softcapping")
    else:
        scale, attn_cap = 1 / math.sqrt(D), None
    x = sd["model.embed_tokens.weight"][ids]
    if gemma and "embed_scale" not in wrong:
        x = x * math.sqrt(C)
    for layer in range(cfg["num_hidden_layers"]):
        p = f"model.layers.{layer}."
        h = rms(x, sd[p + "input_layernorm.weight"])
        q, k, v = (linear(h, p + f"self_attn.{n}_proj") for n in "qkv")
        att_out = torch.zeros(T, H * D, dtype=torch.float64)
        for head in range(H):
            kvh = head // (H // KV)
            ks = [rope(k[s, kvh * D:(kvh + 1) * D], s) for s in range(T)]
            for t in range(T):
                qt = rope(q[t, head * D:(head + 1) * D], t)
                if "cap_after_mask" in wrong:  # every key, masked ones at -inf, then the cap
                    allowed = set(keys(t, window(layer)))
                    seen = range(T)
                    scores = torch.tensor([cap(float(qt @ ks[s]) * scale if s in allowed else -math.inf, attn_cap)
                                           for s in seen], dtype=torch.float64)
                else:
                    seen = keys(t, window(layer))
                    scores = torch.tensor([cap(float(qt @ ks[s]) * scale, attn_cap) for s in seen],
                                          dtype=torch.float64)
                w = scores.softmax(0)
                att_out[t, head * D:(head + 1) * D] = sum(w[n] * v[s, kvh * D:(kvh + 1) * D]
                                                          for n, s in enumerate(seen))
        if gemma and "sandwich" in wrong:  # LLaMA's block with Gemma's names: no post-norms
            x = x + linear(att_out, p + "self_attn.o_proj")
            h = rms(x, sd[p + "pre_feedforward_layernorm.weight"])
            act = torch.nn.functional.silu if "gelu" in wrong else gelu_tanh
            x = x + linear(act(linear(h, p + "mlp.gate_proj")) * linear(h, p + "mlp.up_proj"), p + "mlp.down_proj")
            continue
        if gemma:
            x = x + rms(linear(att_out, p + "self_attn.o_proj"), sd[p + "post_attention_layernorm.weight"])
            h = rms(x, sd[p + "pre_feedforward_layernorm.weight"])
            act = torch.nn.functional.silu if "gelu" in wrong else gelu_tanh
            out = linear(act(linear(h, p + "mlp.gate_proj")) * linear(h, p + "mlp.up_proj"), p + "mlp.down_proj")
            x = x + rms(out, sd[p + "post_feedforward_layernorm.weight"])
            continue
        x = x + linear(att_out, p + "self_attn.o_proj")
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
            out = linear(torch.nn.functional.silu(linear(h, p + "mlp.gate_proj")) * linear(h, p + "mlp.up_proj"),
                         p + "mlp.down_proj")
        x = x + out
    x = rms(x, sd["model.norm.weight"])
    head = sd["model.embed_tokens.weight"] if cfg.get("tie_word_embeddings", gemma) else sd["lm_head.weight"]
    logits = x @ head.t()
    final_cap = cfg.get("final_logit_softcapping") if gemma and "final_softcap" not in wrong else None
    return logits if final_cap is None else final_cap * torch.tanh(logits / final_cap)


def test_forward_against_loops():
    fixtures = os.path.join(ROOT, "tests", "fixtures")
    for name in ("llama-tiny", "llama3-scaled", "mixtral-tiny", "qwen2-tiny", "mistral-swa-tiny", "phi3-tiny",
                 "gemma2-tiny"):
        model = ref.load_hf(os.path.join(fixtures, name), torch.float64)
        with open(os.path.join(fixtures, name, "reference.json")) as f:
            ids = json.load(f)["prompt_tokens"][:7]  # past the windows of 4 (mistral-swa-tiny, gemma2-tiny) and 5
        want = dense_forward(model, ids)
        with torch.no_grad():
            got = model(torch.tensor([ids]))[0]
        err = float((got - want).abs().max())
        assert err < 1e-10, (name, err)  # float64 both ways: only summation order differs


def random_model(cfg, seed, bias_std=0.5):
    model = ref.CausalLM(cfg).double()
    ref.init_weights(model, torch.Generator().manual_seed(seed), std=0.3, norm_jitter=0.1, bias_std=bias_std)
    return model.eval()


TINY = {"vocab_size": 40, "hidden_size": 24, "intermediate_size": 40, "num_hidden_layers": 2,
        "num_attention_heads": 6, "num_key_value_heads": 2, "rms_norm_eps": 1e-5, "rope_theta": 10000.0,
        "bos_token_id": 0, "eos_token_id": 0}


def test_sliding_window_mask():
    """attention_mask against the rule spelled out, and a random Mistral model (windows 1, 3 and 5 over 12 tokens,
    GQA) against the per-query loop over its allowed keys."""
    for T, W in ((1, 1), (5, 1), (6, 3), (9, 4), (4, 9)):
        m = ref.attention_mask(T, W)
        for i in range(T):
            for j in range(T):
                assert bool(m[i, j]) == (j <= i and i - j < W), (T, W, i, j)
            assert int(m[i].sum()) == min(i + 1, W)  # the window holds W keys, the query's own position included
    assert torch.equal(ref.attention_mask(7), torch.ones(7, 7, dtype=torch.bool).tril())
    gen = torch.Generator().manual_seed(11)
    for W in (1, 3, 5):
        cfg = dict(TINY, architectures=["MistralForCausalLM"], model_type="mistral", sliding_window=W)
        model = random_model(cfg, 20 + W)
        ids = torch.randint(cfg["vocab_size"], (12,), generator=gen).tolist()
        with torch.no_grad():
            got = model(torch.tensor([ids]))[0]
            for layer in model.model.layers:
                layer.self_attn.window = None
            full = model(torch.tensor([ids]))[0]
        for layer in model.model.layers:
            layer.self_attn.window = W
        err = float((got - dense_forward(model, ids)).abs().max())
        assert err < 1e-10, (W, err)
        row = (got - full).abs().max(-1).values  # rows before W see every key either way
        assert float(row[:W].max()) == 0 and float(row[W:].min()) > 1e-3, (W, row.tolist())


def test_config_semantics():
    """Which configs get biases and windows, and the defaults of omitted keys, as transformers' config classes."""
    mistral = dict(TINY, architectures=["MistralForCausalLM"], model_type="mistral")
    assert ref.sliding_window(mistral, 0) == 4096                         # MistralConfig's default
    assert ref.sliding_window(dict(mistral, sliding_window=None), 0) is None
    assert ref.sliding_window(dict(mistral, sliding_window=7), 1) == 7
    mixtral = dict(TINY, architectures=["MixtralForCausalLM"], model_type="mixtral")
    assert ref.sliding_window(mixtral, 0) is None and ref.sliding_window(dict(mixtral, sliding_window=8), 0) == 8
    qwen2 = dict(TINY, architectures=["Qwen2ForCausalLM"], model_type="qwen2", sliding_window=4,
                 use_sliding_window=False)
    assert ref.sliding_window(qwen2, 1) is None                           # inert without use_sliding_window
    for bad in (dict(qwen2, use_sliding_window=True), dict(qwen2, layer_types=["full_attention", "sliding_attention"]),
                dict(mistral, sliding_window=0), dict(mistral, sliding_window=2.5)):
        try:
            ref.sliding_window(bad, 1)
        except ValueError:
            continue
        raise AssertionError(f"accepted {bad}")
    llama = dict(TINY, architectures=["LlamaForCausalLM"], model_type="llama", sliding_window=3)
    assert ref.sliding_window(llama, 0) is None
    assert ref.linear_biases(qwen2) == (True, False, False)
    assert ref.linear_biases(dict(qwen2, attention_bias=False)) == (True, False, False)
    assert ref.linear_biases(llama) == (False, False, False)
    assert ref.linear_biases(dict(llama, attention_bias=True, mlp_bias=True)) == (True, True, True)
    assert ref.linear_biases(dict(mistral, attention_bias=True)) == (False, False, False)
    names = set(ref.CausalLM(qwen2).state_dict())
    assert {n for n in names if n.endswith(".bias")} == {f"model.layers.{i}.self_attn.{p}_proj.bias"
                                                          for i in range(2) for p in "qkv"}
    bare = {k: v for k, v in TINY.items() if k not in ("rope_theta", "rms_norm_eps")}
    for arch, theta, eps in (("LlamaForCausalLM", 1e4, 1e-6), ("MistralForCausalLM", 1e4, 1e-6),
                             ("Qwen2ForCausalLM", 1e4, 1e-6), ("MixtralForCausalLM", 1e6, 1e-5)):
        cfg = dict(bare, architectures=[arch])
        assert ref.config_default(cfg, "rope_theta") == theta and ref.config_default(cfg, "rms_norm_eps") == eps, arch
    assert ref.family({"model_type": "qwen2"}) == "qwen2" and ref.family({}) == "llama"
    try:
        ref.family({"architectures": ["GPT2LMHeadModel"]})
    except ValueError:
        pass
    else:
        raise AssertionError("accepted GPT2LMHeadModel")


PHI3 = dict(TINY, architectures=["Phi3ForCausalLM"], model_type="phi3", rope_scaling=None, partial_rotary_factor=1.0,
            original_max_position_embeddings=64, sliding_window=3)


def test_phi3_config():
    """Phi-3's family, defaults, window, fused tensor names and shapes, tied head, and the configs it refuses
    (rope_scaling of any kind, partial rotary), from CausalLM and from load_hf."""
    assert ref.family(PHI3) == "phi3" and ref.family({"model_type": "phi3"}) == "phi3"
    bare = {k: v for k, v in PHI3.items() if k not in ("rope_theta", "rms_norm_eps", "sliding_window")}
    assert ref.config_default(bare, "rope_theta") == 1e4 and ref.config_default(bare, "rms_norm_eps") == 1e-5
    assert ref.sliding_window(bare, 0) is None                           # Phi3Config's default: no window
    assert ref.sliding_window(dict(bare, sliding_window=None), 1) is None
    assert ref.sliding_window(PHI3, 1) == 3
    assert ref.fused_projections(PHI3) and not ref.fused_projections(dict(PHI3, architectures=["MistralForCausalLM"]))
    assert ref.linear_biases(dict(PHI3, attention_bias=True, mlp_bias=True)) == (False, False, False)
    H, KV, D, F = 6, 2, 4, 40
    shapes = {n: list(t.shape) for n, t in ref.CausalLM(PHI3).state_dict().items()}
    for i in range(2):
        p = f"model.layers.{i}."
        assert shapes.pop(p + "self_attn.qkv_proj.weight") == [(H + 2 * KV) * D, 24]
        assert shapes.pop(p + "self_attn.o_proj.weight") == [24, H * D]
        assert shapes.pop(p + "mlp.gate_up_proj.weight") == [2 * F, 24]
        assert shapes.pop(p + "mlp.down_proj.weight") == [24, F]
        assert shapes.pop(p + "input_layernorm.weight") == shapes.pop(p + "post_attention_layernorm.weight") == [24]
    assert shapes == {"model.embed_tokens.weight": [40, 24], "model.norm.weight": [24], "lm_head.weight": [40, 24]}
    tied = ref.CausalLM(dict(PHI3, tie_word_embeddings=True))
    assert not hasattr(tied, "lm_head") and "lm_head.weight" not in tied.state_dict()
    for ok in (dict(PHI3, partial_rotary_factor=1), {k: v for k, v in PHI3.items() if k != "partial_rotary_factor"},
               {k: v for k, v in PHI3.items() if k != "rope_scaling"}):
        ref.CausalLM(ok)
    longrope = {"type": "longrope", "short_factor": [1.0] * 2, "long_factor": [2.0] * 2,
                "original_max_position_embeddings": 64}
    bad = [dict(PHI3, rope_scaling=longrope), dict(PHI3, rope_scaling=dict(longrope, type="su")),
           dict(PHI3, rope_scaling={"rope_type": "longrope", "short_factor": [1.0] * 2, "long_factor": [2.0] * 2}),
           dict(PHI3, rope_scaling={"rope_type": "llama3", "factor": 4.0, "low_freq_factor": 1.0,
                                    "high_freq_factor": 4.0, "original_max_position_embeddings": 64}),
           dict(PHI3, partial_rotary_factor=0.75), dict(PHI3, partial_rotary_factor=None)]
    for cfg in bad:
        for make in (ref.CausalLM, ref.rope_inv_freq):
            try:
                make(cfg)
            except ValueError as e:
                assert "Phi-3" in str(e), e
                continue
            raise AssertionError(f"{make.__name__} accepted {cfg}")
    src = os.path.join(ROOT, "tests", "fixtures", "phi3-tiny")
    with tempfile.TemporaryDirectory() as d:
        for name in ("model.safetensors", "tokenizer.json"):
            with open(os.path.join(src, name), "rb") as f, open(os.path.join(d, name), "wb") as g:
                g.write(f.read())
        with open(os.path.join(src, "config.json")) as f:
            cfg = json.load(f)
        for change in ({"rope_scaling": longrope}, {"partial_rotary_factor": 0.5}):
            with open(os.path.join(d, "config.json"), "w") as f:
                json.dump(dict(cfg, **change), f)
            try:
                ref.load_hf(d)
            except ValueError as e:
                assert "Phi-3" in str(e), e
                continue
            raise AssertionError(f"load_hf accepted {change}")
        with open(os.path.join(d, "config.json"), "w") as f:
            json.dump(cfg, f)
        assert ref.load_hf(d).model.layers[0].self_attn.window == 5


def mistral_of_phi3(phi3):
    """The MistralForCausalLM with phi3's split weights (split_phi3) and the same window, eps, theta and head."""
    cfg = {k: v for k, v in phi3.cfg.items() if k not in ("rope_scaling", "partial_rotary_factor",
                                                             "original_max_position_embeddings")}
    cfg.update(architectures=["MistralForCausalLM"], model_type="mistral",
               sliding_window=ref.sliding_window(phi3.cfg, 0))             # Mistral's own default would be 4096
    mistral = ref.CausalLM(cfg).double()
    mistral.load_state_dict(split_phi3(phi3.state_dict(), phi3.cfg))
    return mistral.eval()


def test_phi3_equals_mistral():
    """A Phi-3 without rope scaling is the Mistral made of its split weights with the same window: random models
    (windows 1, 3, none; GQA 6/2 and MHA; untied and tied) and phi3-tiny give the same logits to float64 rounding,
    while the wrong cuts (up before gate, v before k) land far away."""
    gen = torch.Generator().manual_seed(13)
    cases = [dict(PHI3, sliding_window=1), PHI3, dict(PHI3, sliding_window=None),
             dict(PHI3, num_key_value_heads=6, tie_word_embeddings=True)]
    models = [random_model(cfg, 40 + i, bias_std=None) for i, cfg in enumerate(cases)]
    models.append(ref.load_hf(os.path.join(ROOT, "tests", "fixtures", "phi3-tiny"), torch.float64))
    for model in models:
        cfg = model.cfg
        ids = torch.randint(cfg["vocab_size"], (12,), generator=gen).tolist()
        mistral = mistral_of_phi3(model)
        assert [b.self_attn.window for b in mistral.model.layers] == [b.self_attn.window for b in model.model.layers]
        with torch.no_grad():
            got, want = model(torch.tensor([ids]))[0], mistral(torch.tensor([ids]))[0]
            err = float((got - want).abs().max())
            assert err < 1e-12, (cfg.get("sliding_window"), err)
            f, kvd = cfg["intermediate_size"], cfg["num_key_value_heads"] * ref.head_dim(cfg)
            for block in mistral.model.layers:  # gate and up swapped
                g, u = block.mlp.gate_proj.weight.clone(), block.mlp.up_proj.weight.clone()
                block.mlp.gate_proj.weight.copy_(u)
                block.mlp.up_proj.weight.copy_(g)
            swapped = float((mistral(torch.tensor([ids]))[0] - got).abs().max())
            mistral = mistral_of_phi3(model)
            for block in mistral.model.layers:  # k and v swapped
                k, v = block.self_attn.k_proj.weight.clone(), block.self_attn.v_proj.weight.clone()
                block.self_attn.k_proj.weight.copy_(v)
                block.self_attn.v_proj.weight.copy_(k)
            kv_swapped = float((mistral(torch.tensor([ids]))[0] - got).abs().max())
        assert swapped > 1e-2 and kv_swapped > 1e-2, (swapped, kv_swapped, f, kvd)
        err = float((got - dense_forward(model, ids)).abs().max())
        assert err < 1e-10, err


def test_biases_against_loops():
    """Random LLaMA with attention_bias and mlp_bias (biases on q, k, v, o, gate, up, down) and a random untied
    Qwen2, against the loops."""
    gen = torch.Generator().manual_seed(12)
    for extra in ({"architectures": ["LlamaForCausalLM"], "model_type": "llama", "attention_bias": True,
                   "mlp_bias": True},
                  {"architectures": ["Qwen2ForCausalLM"], "model_type": "qwen2"}):
        model = random_model(dict(TINY, **extra), 30)
        ids = torch.randint(TINY["vocab_size"], (9,), generator=gen).tolist()
        with torch.no_grad():
            got = model(torch.tensor([ids]))[0]
        err = float((got - dense_forward(model, ids)).abs().max())
        assert err < 1e-10, (extra["architectures"], err)


GEMMA2 = dict(TINY, architectures=["Gemma2ForCausalLM"], model_type="gemma2", num_hidden_layers=4, head_dim=6,
              hidden_activation="gelu_pytorch_tanh", rms_norm_eps=1e-6, tie_word_embeddings=True,
              query_pre_attn_scalar=10, attn_logit_softcapping=1.0, final_logit_softcapping=2.0, sliding_window=3)


def gemma2_model(cfg, seed):
    """A random Gemma 2 in float64 with norm offsets N(0, 0.5) (1 + w from about 0 to 2) and std 0.3 matrices."""
    model = ref.CausalLM(cfg).double()
    ref.init_weights(model, torch.Generator().manual_seed(seed), std=0.3, norm_jitter=0.5)
    return model.eval()


def expect_refusal(make, cfg, word):
    try:
        make(cfg)
    except ValueError as e:
        assert word in str(e), e
        return
    raise AssertionError(f"{make.__name__} accepted {cfg}")


def test_gemma2_config():
    """Gemma 2's family, Gemma2Config's defaults, the alternating windows (and layer_types), tensor names (four norms
    per block, tied head by default) and the configs it refuses."""
    assert ref.family(GEMMA2) == "gemma2" and ref.family({"model_type": "gemma2"}) == "gemma2"
    bare = {k: v for k, v in GEMMA2.items() if k not in (
        "rms_norm_eps", "rope_theta", "query_pre_attn_scalar", "attn_logit_softcapping", "final_logit_softcapping",
        "sliding_window", "head_dim", "hidden_activation", "tie_word_embeddings")}
    for key, want in (("rms_norm_eps", 1e-6), ("rope_theta", 1e4), ("query_pre_attn_scalar", 256),
                      ("attn_logit_softcapping", 50.0), ("final_logit_softcapping", 30.0), ("sliding_window", 4096),
                      ("head_dim", 256), ("hidden_activation", "gelu_pytorch_tanh"), ("tie_word_embeddings", True)):
        assert ref.config_default(bare, key) == want, key
    assert ref.head_dim(bare) == 256 and ref.head_dim(GEMMA2) == 6       # never hidden / heads (24 / 6 = 4)
    model = ref.CausalLM(bare)
    assert model.tied and not hasattr(model, "lm_head") and model.final_softcap == 30.0
    attn = model.model.layers[0].self_attn
    assert attn.scaling == 256 ** -0.5 and attn.softcap == 50.0 and attn.d == 256
    # Layer i % 2 == 0 slides, odd layers are global; layer_types, where given, decides.
    assert [ref.sliding_window(bare, i) for i in range(4)] == [4096, None, 4096, None]
    assert [ref.sliding_window(GEMMA2, i) for i in range(4)] == [3, None, 3, None]
    types = ["full_attention", "sliding_attention", "sliding_attention", "full_attention"]
    assert [ref.sliding_window(dict(GEMMA2, layer_types=types), i) for i in range(4)] == [None, 3, 3, None]
    layers = ref.CausalLM(dict(GEMMA2, layer_types=types)).model.layers
    assert [b.self_attn.window for b in layers] == [None, 3, 3, None]
    off = ref.CausalLM(dict(GEMMA2, attn_logit_softcapping=None, final_logit_softcapping=None))
    assert off.final_softcap is None and all(b.self_attn.softcap is None for b in off.model.layers)
    assert ref.linear_biases(GEMMA2) == (False, False, False)
    shapes = {n: list(t.shape) for n, t in ref.CausalLM(GEMMA2).state_dict().items()}
    want = {"model.embed_tokens.weight": [40, 24], "model.norm.weight": [24]}
    for i in range(4):
        p = f"model.layers.{i}."
        want.update({p + "self_attn.q_proj.weight": [36, 24], p + "self_attn.k_proj.weight": [12, 24],
                     p + "self_attn.v_proj.weight": [12, 24], p + "self_attn.o_proj.weight": [24, 36],
                     p + "mlp.gate_proj.weight": [40, 24], p + "mlp.up_proj.weight": [40, 24],
                     p + "mlp.down_proj.weight": [24, 40]})
        for n in ("input_layernorm", "post_attention_layernorm", "pre_feedforward_layernorm",
                  "post_feedforward_layernorm"):
            want[p + n + ".weight"] = [24]
    assert shapes == want, sorted(set(shapes) ^ set(want))
    assert "lm_head.weight" in ref.CausalLM(dict(GEMMA2, tie_word_embeddings=False)).state_dict()
    fresh = ref.CausalLM(GEMMA2)  # Gemma RMSNorm weights start at 0: 1 + w = 1
    assert all(float(p.abs().max()) == 0 for n, p in fresh.named_parameters() if n.endswith("norm.weight"))
    for bad, word in ((dict(GEMMA2, attention_bias=True), "attention_bias"),
                      (dict(GEMMA2, hidden_activation="gelu"), "hidden_activation"),
                      (dict(GEMMA2, hidden_activation="silu"), "hidden_activation"),
                      (dict(GEMMA2, use_bidirectional_attention=True), "bidirectional"),
                      (dict(GEMMA2, layer_types=["sliding_attention"] * 3), "layer_types"),
                      (dict(GEMMA2, layer_types=["sliding_attention", "global", "full_attention", "full_attention"]),
                       "layer_types"),
                      (dict(GEMMA2, sliding_window=None), "sliding_window"),
                      (dict(GEMMA2, sliding_window=0), "sliding_window"),
                      (dict(GEMMA2, query_pre_attn_scalar=0), "query_pre_attn_scalar"),
                      (dict(GEMMA2, attn_logit_softcapping=-1.0), "attn_logit_softcapping"),
                      (dict(GEMMA2, final_logit_softcapping=0), "final_logit_softcapping")):
        expect_refusal(ref.CausalLM, bad, word)
    # Without a sliding layer the window may be null.
    ref.CausalLM(dict(GEMMA2, sliding_window=None, layer_types=["full_attention"] * 4))


def test_gemma2_pieces():
    """Each Gemma 2 rule in isolation: the norm multiplies by 1 + w, the embedding enters the first block times
    sqrt(hidden_size), the logits are cap * tanh(raw / cap) of the tied head's raw logits, and the attention softcap,
    the scale and the window act where the loop says (the model with a rule switched off equals the loop with that
    rule dropped)."""
    gen = torch.Generator().manual_seed(21)
    norm = ref.GemmaRMSNorm(24, 1e-6).double()
    x = torch.randn(5, 24, generator=gen, dtype=torch.float64)
    with torch.no_grad():
        norm.weight.copy_(0.5 * torch.randn(24, generator=gen, dtype=torch.float64))
        unit = x / torch.sqrt((x * x).mean(-1, keepdim=True) + 1e-6)
        assert float((norm(x) - unit * (1 + norm.weight)).abs().max()) < 1e-14
        assert float((norm(x) - unit * norm.weight).abs().max()) > 0.1   # not LLaMA's w
        norm.weight.zero_()
        assert float((norm(x) - unit).abs().max()) < 1e-14                # a zero offset: a plain RMS normalisation

    model = gemma2_model(GEMMA2, 50)
    ids = torch.randint(GEMMA2["vocab_size"], (11,), generator=gen).tolist()
    seen = {}
    model.model.layers[0].register_forward_pre_hook(lambda m, args: seen.__setitem__("h0", args[0]))
    model.model.norm.register_forward_hook(lambda m, args, out: seen.__setitem__("final", out))
    with torch.no_grad():
        logits = model(torch.tensor([ids]))[0]
    emb = model.model.embed_tokens.weight[ids]
    assert torch.equal(seen["h0"][0], emb * math.sqrt(24))              # sqrt(24) = 4.899: the normalizer
    raw = seen["final"][0] @ model.model.embed_tokens.weight.t()         # tied head
    assert float(raw.abs().max()) > 2.5                                  # the cap (2) bites
    assert float((logits - 2.0 * torch.tanh(raw / 2.0)).abs().max()) < 1e-14 and float(logits.abs().max()) < 2.0
    assert [b.self_attn.window for b in model.model.layers] == [3, None, 3, None]

    want = dense_forward(model, ids)
    assert float((logits - want).abs().max()) < 1e-10
    with torch.no_grad():
        for rule, switch, restore in (
                ("final_softcap", lambda: setattr(model, "final_softcap", None),
                 lambda: setattr(model, "final_softcap", 2.0)),
                ("attn_softcap", lambda: [setattr(b.self_attn, "softcap", None) for b in model.model.layers],
                 lambda: [setattr(b.self_attn, "softcap", 1.0) for b in model.model.layers]),
                ("alternate", lambda: [setattr(b.self_attn, "window", 3) for b in model.model.layers],
                 lambda: [setattr(b.self_attn, "window", (3, None)[i % 2]) for i, b in enumerate(model.model.layers)]),
                ("scalar", lambda: [setattr(b.self_attn, "scaling", 6 ** -0.5) for b in model.model.layers],
                 lambda: [setattr(b.self_attn, "scaling", 10 ** -0.5) for b in model.model.layers]),
                ("embed_scale", lambda: setattr(model, "embed_scale", 1.0),
                 lambda: setattr(model, "embed_scale", 24 ** 0.5))):
            switch()
            changed = model(torch.tensor([ids]))[0]
            restore()
            assert float((changed - dense_forward(model, ids, wrong=(rule,))).abs().max()) < 1e-10, rule
            assert float((changed - logits).abs().max()) > 1e-2, rule
        assert torch.equal(model(torch.tensor([ids]))[0], logits)


def test_gemma2_against_loops():
    """Random Gemma 2 models (4 layers: windows 3 / none / 3 / none; windows 1 and 5; layer_types; softcaps off;
    MHA; untied head) against the loop; on the first, every rule the loop can get wrong (GEMMA2_RULES) moves the
    logits, so each one is exercised."""
    gen = torch.Generator().manual_seed(22)
    types = ["full_attention", "sliding_attention", "sliding_attention", "full_attention"]
    cases = [GEMMA2, dict(GEMMA2, sliding_window=1), dict(GEMMA2, sliding_window=5, num_hidden_layers=3),
             dict(GEMMA2, layer_types=types), dict(GEMMA2, attn_logit_softcapping=None, final_logit_softcapping=None),
             dict(GEMMA2, num_key_value_heads=6, tie_word_embeddings=False)]
    for i, cfg in enumerate(cases):
        model = gemma2_model(cfg, 60 + i)
        ids = torch.randint(cfg["vocab_size"], (12,), generator=gen).tolist()
        with torch.no_grad():
            got = model(torch.tensor([ids]))[0]
        err = float((got - dense_forward(model, ids)).abs().max())
        assert err < 1e-10, (i, err)
        if i == 0:
            for rule in GEMMA2_RULES:
                moved = float((got - dense_forward(model, ids, wrong=(rule,))).abs().max())
                assert moved > 1e-2, (rule, moved)


def test_fixture_effects():
    """qwen2-tiny's biases, mistral-swa-tiny's and phi3-tiny's windows, and gemma2-tiny's softcaps and window matter,
    by the amounts reference.json records; and every Gemma 2 rule the loop can get wrong moves gemma2-tiny's logits
    far past the suggested tolerance."""
    fixtures = os.path.join(ROOT, "tests", "fixtures")
    for name in ("qwen2-tiny", "mistral-swa-tiny", "phi3-tiny", "gemma2-tiny"):
        folder = os.path.join(fixtures, name)
        with open(os.path.join(folder, "reference.json")) as f:
            info = json.load(f)
        seq = torch.tensor([info["prompt_tokens"] + info["greedy_tokens"][:-1]])
        model = ref.load_hf(folder, torch.float64)
        with torch.no_grad():
            base = model(seq)[0]
            want = torch.frombuffer(bytearray(open(os.path.join(folder, "logits.f32"), "rb").read()),
                                    dtype=torch.float32).reshape(info["logits_shape"]).double()
            assert float((base - want).abs().max()) < 1e-6, name
            if name == "qwen2-tiny":
                assert model.cfg["tie_word_embeddings"] and not hasattr(model, "lm_head")
                diffs = {}
                for p in "qkv":  # each bias on its own moves the logits
                    changed = ref.load_hf(folder, torch.float64)
                    for layer in changed.model.layers:
                        getattr(layer.self_attn, f"{p}_proj").bias.zero_()
                    diffs[p] = float((changed(seq)[0] - base).abs().max())
                assert min(diffs.values()) > 1, diffs
                for layer in model.model.layers:
                    for p in "qkv":
                        getattr(layer.self_attn, f"{p}_proj").bias.zero_()
                diff = float((model(seq)[0] - base).abs().max())
                assert abs(diff - info["zero_bias_max_abs_diff"]) < 1e-9 and diff > 1, (diff, info)
            elif name == "gemma2-tiny":
                assert model.tied and not hasattr(model, "lm_head") and model.final_softcap == 4.0
                assert [layer.self_attn.window for layer in model.model.layers] == [4, None]  # local, then global
                assert [layer.self_attn.softcap for layer in model.model.layers] == [1.5, 1.5]

                def rows(change):  # per-row largest |logit change| with one feature switched off
                    changed = ref.load_hf(folder, torch.float64)
                    change(changed)
                    return (changed(seq)[0] - base).abs().max(-1).values

                for key, change in (
                        ("no_attn_softcap_max_abs_diff",
                         lambda m: [setattr(layer.self_attn, "softcap", None) for layer in m.model.layers]),
                        ("no_final_softcap_max_abs_diff", lambda m: setattr(m, "final_softcap", None)),
                        ("full_attention_max_abs_diff",
                         lambda m: [setattr(layer.self_attn, "window", None) for layer in m.model.layers])):
                    row = rows(change)
                    assert abs(float(row.max()) - info[key]) < 1e-9 and float(row.max()) > 0.05, (key, row, info)
                assert float(row[:4].max()) == 0 and float(row[4]) > 1e-3 and info["full_attention_first_diff_row"] == 4
                ids = seq[0].tolist()
                for rule in GEMMA2_RULES:
                    moved = float((dense_forward(model, ids, wrong=(rule,)) - base).abs().max())
                    assert moved > 0.1, (rule, moved)
            else:
                W = {"mistral-swa-tiny": 4, "phi3-tiny": 5}[name]
                assert [layer.self_attn.window for layer in model.model.layers] == [W, W]
                for layer in model.model.layers:
                    layer.self_attn.window = None
                row = (model(seq)[0] - base).abs().max(-1).values
                assert abs(float(row.max()) - info["full_attention_max_abs_diff"]) < 1e-9, (row, info)
                assert float(row[:W].max()) == 0 and info["full_attention_first_diff_row"] == W
                assert float(row[W]) > 1e-3 and float(row.max()) > 1, row


def test_fixtures_reproducible():
    subprocess.run([sys.executable, os.path.join(ROOT, "tools", "make_fixtures.py"), "--check"], check=True,
                    stdout=subprocess.DEVNULL)


def test_grads_against_finite_differences():
    """The autograd gradients grad_ref.py writes, against central differences of the loss in float64."""
    import grad_ref  # noqa: E402 (tools/ is on the path)
    for name, balance in (("llama-tiny", 0.0), ("mixtral-tiny", 0.0), ("mixtral-tiny", 0.02), ("qwen2-tiny", 0.0),
                          ("phi3-tiny", 0.0)):
        folder = os.path.join(ROOT, "tests", "fixtures", name)
        model = ref.load_hf(folder, torch.float64)
        ids, mask = grad_ref.batch(folder)
        _, grads = ref.loss_and_grads(model, ids, mask, balance)
        params = dict(model.named_parameters())
        gen = torch.Generator().manual_seed(7)
        with open(os.path.join(folder, "grad_ref.json")) as f:
            stored = json.load(f)
        assert stored["ids"] == ids.tolist(), name
        assert abs(stored["loss"] - ref.masked_lm_loss(model, ids, mask).item()) < 1e-12, name
        saved = ref.read_safetensors(os.path.join(folder, stored["grads_file"] if balance == 0 else
                                                  stored["grads_balance_file"]))[0]
        assert sorted(saved) == sorted(grads), name  # every parameter, by its HF name
        for pname, g in grads.items():
            assert torch.allclose(saved[pname].double(), g, rtol=1e-6, atol=1e-12), (name, pname)
        biases = [n for n in params if n.endswith(".bias")]
        picks = []  # (name, flat index): 3 random elements of each, and for Phi-3's fused weights one per part
        for pname in ["model.embed_tokens.weight", "model.layers.0.self_attn.q_proj.weight",
                      "model.layers.1.input_layernorm.weight", "model.norm.weight"] + biases[:3]:
            if pname not in params:
                continue
            for _ in range(3):
                picks.append((pname, int(torch.randint(params[pname].numel(), (1,), generator=gen))))
        if "model.layers.0.self_attn.qkv_proj.weight" in params:
            cfg, C = model.cfg, model.cfg["hidden_size"]
            qd = cfg["num_attention_heads"] * ref.head_dim(cfg)
            kvd = cfg["num_key_value_heads"] * ref.head_dim(cfg)
            f = cfg["intermediate_size"]
            for layer in range(cfg["num_hidden_layers"]):
                p = f"model.layers.{layer}."
                for part, lo, n in (("self_attn.qkv_proj", 0, qd), ("self_attn.qkv_proj", qd, kvd),  # q, k, v rows
                                    ("self_attn.qkv_proj", qd + kvd, kvd),
                                    ("mlp.gate_up_proj", 0, f), ("mlp.gate_up_proj", f, f)):       # gate, up rows
                    row = lo + int(torch.randint(n, (1,), generator=gen))
                    picks.append((p + part + ".weight", row * C + int(torch.randint(C, (1,), generator=gen))))
        for pname, i in picks:
            p = params[pname]
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
