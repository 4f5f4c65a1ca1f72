#!/usr/bin/env python3
"""Makes the tiny random fixture models under tests/fixtures/ and their reference outputs.

  /usr/bin/python3 tools/make_fixtures.py [--out tests/fixtures] [--check]

Each fixture is a Hugging Face folder (config.json, model.safetensors, tokenizer.json, tokenizer_config.json,
generation_config.json) plus reference.json and logits.f32; tokenizer-cases.json holds known encodings for the
fixture tokenizer and the embedded KJV tokenizer (models/lathe-kjv-llama). tests/fixtures/README.md documents
the format.
Deterministic: weights come from fixed seeds, references are computed in float64 from the stored weights.
--check regenerates into a temporary folder and fails unless every file is byte-identical to --out.
"""
import argparse
import filecmp
import json
import os
import sys
import tempfile

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import lathe_ref as ref  # noqa: E402

VOCAB = 96
PROMPT_TEXT = "Lathe runs"     # BOS + 10 characters = 11 tokens
N_GREEDY = 8
MIN_GREEDY_MARGIN = 1e-3       # top-1 minus top-2 logit at each greedy step, so f32 engines pick the same token
MIN_ROUTER_GAP = 1e-4          # k-th minus (k+1)-th router probability, so f32 engines pick the same experts
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

# name: (config overrides, stored dtype, seed, init std); the tied model needs a larger std, or its greedy
# output just repeats the last token (the tied head favours the embedding the residual stream carries)
FIXTURES = {
    "llama-tiny": ({}, torch.float32, 1, 0.15),
    "llama-tiny-f16": ({}, torch.float16, 1, 0.15),
    "llama3-scaled": ({"hidden_size": 32, "intermediate_size": 64, "num_attention_heads": 4,
                       "num_key_value_heads": 1, "rms_norm_eps": 1e-6, "tie_word_embeddings": True,
                       "rope_scaling": {"rope_type": "llama3", "factor": 4.0, "low_freq_factor": 1.0,
                                        "high_freq_factor": 4.0, "original_max_position_embeddings": 64}},
                      torch.bfloat16, 3, 0.3),
    "mixtral-tiny": ({"architectures": ["MixtralForCausalLM"], "model_type": "mixtral", "intermediate_size": 20,
                      "num_local_experts": 4, "num_experts_per_tok": 2, "router_aux_loss_coef": 0.02,
                      "output_router_logits": False},
                     torch.float32, 4, 0.15),
}


def fixture_tokenizer():
    """Byte-level BPE without merges: id 0 is <|endoftext|> (BOS and EOS), ids 1..95 the bytes 0x20..0x7E."""
    b2u = ref.bytes_to_unicode()
    vocab = {"<|endoftext|>": 0}
    for b in range(0x20, 0x7F):
        vocab[b2u[b]] = len(vocab)
    return ref.bytelevel_tokenizer_json(vocab, [], ["<|endoftext|>"], "<|endoftext|>")


def make(out, name, overrides, store_dtype, seed, std, tok_json):
    cfg = dict(BASE, **overrides)
    model = ref.CausalLM(cfg)
    ref.init_weights(model, torch.Generator().manual_seed(seed), std=std, norm_jitter=0.1)
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


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "..", "tests", "fixtures"))
    ap.add_argument("--check", action="store_true")
    a = ap.parse_args()
    torch.set_num_threads(1)
    tok_json = fixture_tokenizer()
    dest = tempfile.mkdtemp() if a.check else a.out
    for name, (overrides, dtype, seed, std) in FIXTURES.items():
        info = make(dest, name, overrides, dtype, seed, std, tok_json)
        print(f"{name}: greedy {info['greedy_tokens']} margin {info['min_greedy_margin']:.3g} "
              f"f32-vs-f64 {info['f32_reference_max_abs_diff']:.2e} max|logit| {info['max_abs_logit']:.2f}"
              + (f" router gap {info['min_router_gap']:.3g}" if "min_router_gap" in info else ""))
    fixture_tok = os.path.join(dest, "llama-tiny", "tokenizer.json")
    cases = {"models/lathe-kjv-llama/tokenizer.json": tokenizer_cases(KJV_TOKENIZER, KJV_TEXTS),
             "tests/fixtures/llama-tiny/tokenizer.json": tokenizer_cases(fixture_tok, FIXTURE_TEXTS)}
    with open(os.path.join(dest, "tokenizer-cases.json"), "w") as f:
        json.dump(cases, f, indent=1, ensure_ascii=False)
        f.write("\n")
    if a.check:
        bad = []
        for name in FIXTURES:
            mine, theirs = os.path.join(dest, name), os.path.join(a.out, name)
            names = sorted(set(os.listdir(mine)) | set(os.listdir(theirs) if os.path.isdir(theirs) else []))
            _, mismatch, missing = filecmp.cmpfiles(mine, theirs, names, shallow=False)
            bad += [f"{name}/{f}" for f in mismatch + missing]
        if not filecmp.cmp(os.path.join(dest, "tokenizer-cases.json"), os.path.join(a.out, "tokenizer-cases.json"),
                           shallow=False):
            bad.append("tokenizer-cases.json")
        if bad:
            sys.exit(f"make_fixtures --check: differ from {a.out}: {sorted(set(bad))}")
        print("make_fixtures --check: identical")


if __name__ == "__main__":
    main()
