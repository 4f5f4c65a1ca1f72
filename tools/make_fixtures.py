#!/usr/bin/env python3
"""Makes the tiny random fixture models under tests/fixtures/ and their reference outputs.

  /usr/bin/python3 tools/make_fixtures.py [--out tests/fixtures] [--only NAME ...] [--check]

Each fixture is a Hugging Face folder (config.json, model.safetensors, tokenizer.json, tokenizer_config.json,
generation_config.json) plus reference.json and logits.f32; tokenizer-cases.json holds known encodings for the
fixture tokenizer and the embedded KJV tokenizer (models/lathe-kjv-llama). tests/fixtures/README.md documents
the format.
Deterministic: weights come from fixed seeds, references are computed in float64 from the stored weights.
--only writes just the named fixtures (and not tokenizer-cases.json).
--check regenerates into a temporary folder and fails unless every file this tool writes is byte-identical to
--out, except reference.json, whose numbers may move with the CPU's float summation order: there every
non-float value must be equal, every float equal to 1e-9 relative, and f32_reference_max_abs_diff (the float32
run's error, which depends on the CPU's float32 kernels) below 1e-4 on both sides. Files other tools write into
the folders (grads, compress_ref.json) are not compared.
"""
import argparse
import filecmp
import json
import os
import shutil
import sys
import tempfile

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import lathe_ref as ref  # noqa: E402

VOCAB = 96
QWEN2_SEED, QWEN2_STD = 2, 0.3   # seeds picked for wide greedy margins and varied greedy tokens
MISTRAL_SEED = 7
PHI3_SEED = 9
# Gemma 2's tied head reads a residual stream that carries sqrt(hidden) * the last token's embedding, so most random
# Gemma 2 models just repeat the last token; this seed and std give three greedy tokens, a 0.2 margin and softcaps
# that move the logits by 0.4 (attention) and 1.4 (final).
GEMMA2_SEED, GEMMA2_STD = 229, 0.12
PROMPT_TEXT = "Lathe runs"     # BOS + 10 characters = 11 tokens
N_GREEDY = 8
MIN_GREEDY_MARGIN = 1e-3       # top-1 minus top-2 logit at each greedy step, so f32 engines pick the same token
MIN_ROUTER_GAP = 1e-4          # k-th minus (k+1)-th router probability, so f32 engines pick the same experts
MIN_EFFECT = 0.1               # |logit change| when the Qwen2 biases are dropped / the sliding window is widened
MIN_SOFTCAP_EFFECT = 0.05      # |logit change| when Gemma 2's attention / final softcap is switched off
CHECK_RTOL = 1e-9              # --check: float64 reference numbers may differ in the last bits across CPUs
CHECK_F32_DIFF = 1e-4          # --check: f32_reference_max_abs_diff must stay below the suggested engine tolerance
KJV_TOKENIZER = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "models", "lathe-kjv-llama",
                             "tokenizer.json")
KJV_TEXTS = [
    "In the beginning God created the heaven and the earth.",
    "And the LORD said unto Moses, Stretch out thine hand toward heaven.",
    "  two  spaces\tand a tab\n\nblank line ",
    "it's we're I've I'm we'll he'd don't",
    "Psalm 119:105 -- 1,000,000!!",
    "snake_case __init__",
    "caf\u00e9 na\u00efve \u2603 \U0001f642",
    "a<|eos|>b <|bos|>",
    "",
]
FIXTURE_TEXTS = [PROMPT_TEXT, "Hello, World! 42", "it's ~ok~ <|endoftext|>"]  # printable ASCII only

BASE = {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "vocab_size": VOCAB, "hidden_size": 64,
        "intermediate_size": 160, "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
        "rms_norm_eps": 1e-5, "rope_theta": 10000.0, "hidden_act": "silu", "max_position_embeddings": 256,
        "tie_word_embeddings": False, "bos_token_id": 0, "eos_token_id": 0, "attention_bias": False,
        "mlp_bias": False}

# The keys transformers' Qwen2Config writes (no attention_bias: Qwen2 always has q/k/v biases). sliding_window is
# inert with use_sliding_window false, as in the released Qwen2/Qwen2.5 checkpoints.
QWEN2_BASE = {"architectures": ["Qwen2ForCausalLM"], "model_type": "qwen2", "vocab_size": VOCAB, "hidden_size": 64,
              "intermediate_size": 160, "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
              "hidden_act": "silu", "max_position_embeddings": 256, "initializer_range": 0.02, "rms_norm_eps": 1e-6,
              "use_cache": True, "tie_word_embeddings": True, "rope_theta": 1000000.0, "rope_scaling": None,
              "use_sliding_window": False, "sliding_window": 4096, "max_window_layers": 28,
              "attention_dropout": 0.0, "bos_token_id": 0, "eos_token_id": 0}
# The keys transformers' MistralConfig writes (no attention_bias or mlp_bias: Mistral has no biases).
MISTRAL_BASE = {"architectures": ["MistralForCausalLM"], "model_type": "mistral", "vocab_size": VOCAB,
                "hidden_size": 64, "intermediate_size": 160, "num_hidden_layers": 2, "num_attention_heads": 4,
                "num_key_value_heads": 2, "head_dim": 16, "hidden_act": "silu", "max_position_embeddings": 256,
                "initializer_range": 0.02, "rms_norm_eps": 1e-5, "use_cache": True, "rope_theta": 10000.0,
                "sliding_window": 4, "attention_dropout": 0.0, "tie_word_embeddings": False, "bos_token_id": 0,
                "eos_token_id": 0}
# The keys transformers' Phi3Config writes, in its order (no head_dim: Phi3Config has none, hidden / heads = 16; no
# attention_bias: Phi-3 has no biases). rope_scaling null and partial_rotary_factor 1.0: the only RoPE lathe_ref
# computes for Phi-3. original_max_position_embeddings only matters to longrope. pad_token_id null: transformers builds
# the embedding with padding_idx = pad_token_id, which zeroes that row's gradient, and 0 (the BOS/EOS) would do so
# for a token every batch row holds; Phi3Config's default 32000 is outside the vocabulary.
PHI3_BASE = {"architectures": ["Phi3ForCausalLM"], "model_type": "phi3", "vocab_size": VOCAB, "hidden_size": 64,
             "intermediate_size": 160, "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
             "resid_pdrop": 0.0, "embd_pdrop": 0.0, "attention_dropout": 0.0, "hidden_act": "silu",
             "max_position_embeddings": 256, "original_max_position_embeddings": 256, "initializer_range": 0.02,
             "rms_norm_eps": 1e-5, "use_cache": True, "tie_word_embeddings": False, "rope_theta": 10000.0,
             "rope_scaling": None, "partial_rotary_factor": 1.0, "bos_token_id": 0, "eos_token_id": 0,
             "pad_token_id": None, "sliding_window": 5}
# The keys transformers' Gemma2Config writes, in the order of its __init__ of the hybrid-cache era (4.42 .. 4.4x, the
# releases the Gemma 2 checkpoints were written with): head_dim 16 = hidden / heads here, query_pre_attn_scalar 24
# deliberately not head_dim (the scale is 24^-0.5, not 16^-0.5), softcaps small enough to bite on tiny random weights.
# No layer_types (the released configs have none): layer 0 slides (window 4), layer 1 is global. pad_token_id null as
# for Phi-3 (padding_idx 0 would zero the gradient of the BOS row).
GEMMA2_BASE = {"architectures": ["Gemma2ForCausalLM"], "model_type": "gemma2", "vocab_size": VOCAB, "hidden_size": 64,
               "intermediate_size": 160, "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
               "head_dim": 16, "hidden_activation": "gelu_pytorch_tanh", "max_position_embeddings": 256,
               "initializer_range": 0.02, "rms_norm_eps": 1e-6, "use_cache": True, "pad_token_id": None,
               "eos_token_id": 0, "bos_token_id": 0, "tie_word_embeddings": True, "rope_theta": 10000.0,
               "attention_bias": False, "attention_dropout": 0.0, "query_pre_attn_scalar": 24, "sliding_window": 4,
               "final_logit_softcapping": 4.0, "attn_logit_softcapping": 1.5, "cache_implementation": "hybrid"}

# name: (base config, overrides, stored dtype, seed, init std, bias std or None); the tied models need a larger
# std, or their greedy output just repeats the last token (the tied head favours the embedding the residual stream
# carries)
FIXTURES = {
    "llama-tiny": (BASE, {}, torch.float32, 1, 0.15, None),
    "llama-tiny-f16": (BASE, {}, torch.float16, 1, 0.15, None),
    "llama3-scaled": (BASE, {"hidden_size": 32, "intermediate_size": 64, "num_attention_heads": 4,
                             "num_key_value_heads": 1, "rms_norm_eps": 1e-6, "tie_word_embeddings": True,
                             "rope_scaling": {"rope_type": "llama3", "factor": 4.0, "low_freq_factor": 1.0,
                                              "high_freq_factor": 4.0, "original_max_position_embeddings": 64}},
                      torch.bfloat16, 3, 0.3, None),
    "mixtral-tiny": (BASE, {"architectures": ["MixtralForCausalLM"], "model_type": "mixtral", "intermediate_size": 20,
                            "num_local_experts": 4, "num_experts_per_tok": 2, "router_aux_loss_coef": 0.02,
                            "output_router_logits": False},
                     torch.float32, 4, 0.15, None),
    "qwen2-tiny": (QWEN2_BASE, {}, torch.float32, QWEN2_SEED, QWEN2_STD, 0.5),
    "mistral-swa-tiny": (MISTRAL_BASE, {}, torch.float32, MISTRAL_SEED, 0.15, None),
    "phi3-tiny": (PHI3_BASE, {}, torch.float32, PHI3_SEED, 0.15, None),
    "gemma2-tiny": (GEMMA2_BASE, {}, torch.float32, GEMMA2_SEED, GEMMA2_STD, None),
}


def fixture_tokenizer():
    """Byte-level BPE without merges: id 0 is <|endoftext|> (BOS and EOS), ids 1..95 the bytes 0x20..0x7E."""
    b2u = ref.bytes_to_unicode()
    vocab = {"<|endoftext|>": 0}
    for b in range(0x20, 0x7F):
        vocab[b2u[b]] = len(vocab)
    return ref.bytelevel_tokenizer_json(vocab, [], ["<|endoftext|>"], "<|endoftext|>")


def make(out, name, base, overrides, store_dtype, seed, std, bias_std, tok_json):
    cfg = dict(base, **overrides)
    model = ref.CausalLM(cfg)
    ref.init_weights(model, torch.Generator().manual_seed(seed), std=std, norm_jitter=0.1, bias_std=bias_std)
    folder = os.path.join(out, name)
    ref.save_hf(folder, model, tok_json, store_dtype)

    # The reference runs on the weights as stored (f16/bf16 values converted exactly), in float64.
    m64 = ref.load_hf(folder, torch.float64)
    tok = ref.Tokenizer(os.path.join(folder, "tokenizer.json"))
    prompt = tok.encode(PROMPT_TEXT)
    greedy = ref.generate(m64, prompt, N_GREEDY, eos_id=cfg["eos_token_id"])
    assert len(greedy) == N_GREEDY, f"{name}: greedy run hit EOS; pick another seed"
    seq = torch.tensor([prompt + greedy[:-1]])
    router = []
    with torch.no_grad():
        logits = m64(seq, router)[0]                                        # (T+7, V)
        f32 = ref.load_hf(folder, torch.float32)(seq)[0].double()
    steps = logits[len(prompt) - 1:]
    top2 = torch.topk(steps, 2, dim=-1).values
    margin = float((top2[:, 0] - top2[:, 1]).min())
    assert margin > MIN_GREEDY_MARGIN, f"{name}: greedy margin {margin:.2e} too small; pick another seed"
    info = {
        "name": name,
        "prompt_text": PROMPT_TEXT,
        "prompt_tokens": prompt,
        "greedy_tokens": greedy,
        "greedy_text": tok.decode(greedy),
        "logits_file": "logits.f32",
        "logits_shape": list(logits.shape),
        "logits_rows": "row i = next-token logits after token i of prompt_tokens + greedy_tokens[:-1]",
        "reference_dtype": "float64",
        "stored_dtype": ref.ST_NAMES[store_dtype],
        "min_greedy_margin": margin,
        "f32_reference_max_abs_diff": float((f32 - logits).abs().max()),
        "max_abs_logit": float(logits.abs().max()),
    }
    if router:
        k = cfg["num_experts_per_tok"]
        probs = torch.stack(router).softmax(-1)                             # (L, T+7, E)
        top = torch.topk(probs, k + 1, dim=-1).values
        gap = float((top[..., k - 1] - top[..., k]).min())
        assert gap > MIN_ROUTER_GAP, f"{name}: router gap {gap:.2e} too small; pick another seed"
        info["min_router_gap"] = gap
        info["router_top_k"] = torch.topk(probs, k, dim=-1).indices.tolist()
    biases = [n for n in m64.state_dict() if n.endswith(".bias")]
    if biases:  # the biases must matter: the same model without them lands far away
        plain = ref.load_hf(folder, torch.float64)
        with torch.no_grad():
            for n, p in plain.named_parameters():
                if n.endswith(".bias"):
                    p.zero_()
            diff = float((plain(seq)[0] - logits).abs().max())
        assert diff > MIN_EFFECT, f"{name}: dropping the biases moves the logits by only {diff:.3g}"
        info["zero_bias_max_abs_diff"] = diff
    if any(layer.self_attn.softcap is not None for layer in m64.model.layers):
        # Gemma 2's attention softcap must matter: the same weights without it land far away
        plain = ref.load_hf(folder, torch.float64)
        for layer in plain.model.layers:
            layer.self_attn.softcap = None
        with torch.no_grad():
            diff = float((plain(seq)[0] - logits).abs().max())
        assert diff > MIN_SOFTCAP_EFFECT, f"{name}: no attention softcap moves the logits by only {diff:.3g}"
        info["no_attn_softcap_max_abs_diff"] = diff
    if m64.final_softcap is not None:  # and the final one
        plain = ref.load_hf(folder, torch.float64)
        plain.final_softcap = None
        with torch.no_grad():
            diff = float((plain(seq)[0] - logits).abs().max())
        assert diff > MIN_SOFTCAP_EFFECT, f"{name}: no final softcap moves the logits by only {diff:.3g}"
        info["no_final_softcap_max_abs_diff"] = diff
    windows = {layer.self_attn.window for layer in m64.model.layers}
    if windows != {None}:  # the window must matter: full causal attention on the same weights lands far away
        full = ref.load_hf(folder, torch.float64)
        for layer in full.model.layers:
            layer.self_attn.window = None
        with torch.no_grad():
            row_diff = (full(seq)[0] - logits).abs().max(dim=-1).values
        diff, w = float(row_diff.max()), min(windows - {None})
        assert diff > MIN_EFFECT, f"{name}: full attention moves the logits by only {diff:.3g}"
        first = int(torch.nonzero(row_diff > 0)[0])
        assert first == w, f"{name}: first row changed by full attention is {first}, not {w}"
        info["full_attention_max_abs_diff"] = diff
        info["full_attention_first_diff_row"] = first
    with open(os.path.join(folder, "logits.f32"), "wb") as f:
        f.write(ref.tensor_bytes(logits.float()))
    with open(os.path.join(folder, "reference.json"), "w") as f:
        json.dump(info, f, indent=1)
        f.write("\n")
    return info


def tokenizer_cases(path, texts):
    """Known encodings of texts (BOS included, as the post-processor adds it) by lathe_ref's encoder."""
    tok = ref.Tokenizer(path)
    cases = []
    for text in texts:
        ids = tok.encode(text)
        assert tok.decode(ids, skip_special=False) == tok.id_to_token[ids[0]] + text, text
        cases.append({"text": text, "ids": ids})
    return cases


def same_reference(mine, theirs, key=None):
    """reference.json equality up to the CPU: non-floats equal, floats within CHECK_RTOL, the float32 error below
    CHECK_F32_DIFF on both sides."""
    if key == "f32_reference_max_abs_diff":
        return all(isinstance(v, float) and 0 <= v < CHECK_F32_DIFF for v in (mine, theirs))
    if isinstance(mine, float) or isinstance(theirs, float):
        return all(isinstance(v, float) for v in (mine, theirs)) and \
            abs(mine - theirs) <= CHECK_RTOL * max(abs(mine), abs(theirs))
    if isinstance(mine, dict):
        return isinstance(theirs, dict) and list(mine) == list(theirs) and \
            all(same_reference(mine[k], theirs[k], k) for k in mine)
    if isinstance(mine, list):
        return isinstance(theirs, list) and len(mine) == len(theirs) and \
            all(same_reference(a, b, key) for a, b in zip(mine, theirs))
    return type(mine) is type(theirs) and mine == theirs


def same_file(mine, theirs):
    if not os.path.isfile(theirs):
        return False
    if filecmp.cmp(mine, theirs, shallow=False):
        return True
    if os.path.basename(mine) != "reference.json":
        return False
    with open(mine) as f, open(theirs) as g:
        return same_reference(json.load(f), json.load(g))


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "..", "tests", "fixtures"))
    ap.add_argument("--only", nargs="+", choices=list(FIXTURES), metavar="NAME")
    ap.add_argument("--check", action="store_true")
    a = ap.parse_args()
    torch.set_num_threads(1)
    tok_json = fixture_tokenizer()
    dest = tempfile.mkdtemp() if a.check else a.out
    names = a.only or list(FIXTURES)
    for name in names:
        base, overrides, dtype, seed, std, bias_std = FIXTURES[name]
        info = make(dest, name, base, overrides, dtype, seed, std, bias_std, tok_json)
        print(f"{name}: greedy {info['greedy_tokens']} margin {info['min_greedy_margin']:.3g} "
              f"f32-vs-f64 {info['f32_reference_max_abs_diff']:.2e} max|logit| {info['max_abs_logit']:.2f}"
              + (f" router gap {info['min_router_gap']:.3g}" if "min_router_gap" in info else "")
              + (f" no-bias diff {info['zero_bias_max_abs_diff']:.3g}" if "zero_bias_max_abs_diff" in info else "")
              + (f" no-attn-softcap diff {info['no_attn_softcap_max_abs_diff']:.3g}"
                 if "no_attn_softcap_max_abs_diff" in info else "")
              + (f" no-final-softcap diff {info['no_final_softcap_max_abs_diff']:.3g}"
                 if "no_final_softcap_max_abs_diff" in info else "")
              + (f" full-attention diff {info['full_attention_max_abs_diff']:.3g} from row "
                 f"{info['full_attention_first_diff_row']}" if "full_attention_max_abs_diff" in info else ""))
    if not a.only:
        fixture_tok = os.path.join(dest, "llama-tiny", "tokenizer.json")
        cases = {"models/lathe-kjv-llama/tokenizer.json": tokenizer_cases(KJV_TOKENIZER, KJV_TEXTS),
                 "tests/fixtures/llama-tiny/tokenizer.json": tokenizer_cases(fixture_tok, FIXTURE_TEXTS)}
        with open(os.path.join(dest, "tokenizer-cases.json"), "w") as f:
            json.dump(cases, f, indent=1, ensure_ascii=False)
            f.write("\n")
    if a.check:
        bad = [os.path.join(name, f) for name in names for f in sorted(os.listdir(os.path.join(dest, name)))
               if not same_file(os.path.join(dest, name, f), os.path.join(a.out, name, f))]
        if not a.only and not same_file(os.path.join(dest, "tokenizer-cases.json"),
                                        os.path.join(a.out, "tokenizer-cases.json")):
            bad.append("tokenizer-cases.json")
        shutil.rmtree(dest)
        if bad:
            sys.exit(f"make_fixtures --check: differ from {a.out}: {bad}")
        print("make_fixtures --check: identical")


if __name__ == "__main__":
    main()
