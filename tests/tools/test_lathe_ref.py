#!/usr/bin/env python3
"""Checks tools/lathe_ref.py against a real model and against independent, written-out formulas (per-head, per-key
and per-expert loops with their own reading of biases, sliding windows and Phi-3's fused weights), Phi-3 against the
Mistral model made of its split weights, and the fixtures against it.

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


def dense_forward(model, ids):
    """The forward pass written out per head and per expert with plain loops (float64). Query t of a Mistral or
    Phi-3 model with a window W reads the keys t-W+1..t (the window holds W keys, the query's own included), others
    the keys 0..t; the linear layers add their bias where the checkpoint has one; Phi-3's fused weights are split
    by split_phi3."""
    cfg = model.cfg
    sd = split_phi3({k: v.double() for k, v in model.state_dict().items()}, cfg)
    T, H, KV, D = len(ids), cfg["num_attention_heads"], cfg["num_key_value_heads"], ref.head_dim(cfg)
    eps = cfg["rms_norm_eps"]
    window = cfg.get("sliding_window") if cfg["architectures"][0] in ("MistralForCausalLM", "Phi3ForCausalLM") \
        else None

    def keys(t):
        return range(0 if window is None else max(0, t - window + 1), t + 1)

    def linear(x, name):
        y = x @ sd[name + ".weight"].t()
        return y + sd[name + ".bias"] if name + ".bias" in sd else y

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
        q, k, v = (linear(h, p + f"self_attn.{n}_proj") for n in "qkv")
        att_out = torch.zeros(T, H * D, dtype=torch.float64)
        for head in range(H):
            kvh = head // (H // KV)
            for t in range(T):
                qt = rope(q[t, head * D:(head + 1) * D], t)
                scores = torch.tensor([qt @ rope(k[s, kvh * D:(kvh + 1) * D], s) / math.sqrt(D) for s in keys(t)])
                w = scores.softmax(0)
                att_out[t, head * D:(head + 1) * D] = sum(w[n] * v[s, kvh * D:(kvh + 1) * D]
                                                          for n, s in enumerate(keys(t)))
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
    head = sd["model.embed_tokens.weight"] if cfg.get("tie_word_embeddings") else sd["lm_head.weight"]
    return x @ head.t()


def test_forward_against_loops():
    fixtures = os.path.join(ROOT, "tests", "fixtures")
    for name in ("llama-tiny", "llama3-scaled", "mixtral-tiny", "qwen2-tiny", "mistral-swa-tiny", "phi3-tiny"):
        model = ref.load_hf(os.path.join(fixtures, name), torch.float64)
        with open(os.path.join(fixtures, name, "reference.json")) as f:
            ids = json.load(f)["prompt_tokens"][:7]  # past mistral-swa-tiny's window of 4 and phi3-tiny's of 5
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


def test_fixture_effects():
    """qwen2-tiny's biases and mistral-swa-tiny's and phi3-tiny's windows matter, by the amounts reference.json
    records."""
    fixtures = os.path.join(ROOT, "tests", "fixtures")
    for name in ("qwen2-tiny", "mistral-swa-tiny", "phi3-tiny"):
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
