#!/usr/bin/env python3
"""Reference logits of a quantised GGUF LLaMA from an independent implementation: ggml dequantises its weights
(tools/qblock_ggml.c dequant), this script lays them out as a Hugging Face folder (the q and k rows permuted back
from llama.cpp's interleaved RoPE pairs to rotate-half order) and runs the PyTorch reference (tools/lathe_ref.py)
in float64 on a fixed token sequence. tests/model/test_qmodels.c compares Lathe's logits, read from the blocks in
place, with these.

  /usr/bin/python3 tools/qblock_reference.py DEQUANT_DIR OUT_PREFIX

DEQUANT_DIR holds weights.safetensors and meta.json from `qblock_ggml dequant`; writes OUT_PREFIX.logits.f32 (raw
little-endian float32 [T, vocab], row t the logits after token t) and OUT_PREFIX.logits.json (the token ids, the
shape, the largest |logit| and the float32 reference's largest distance from the float64 one).
"""
import json
import os
import sys
import tempfile

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import hf_to_gguf  # noqa: E402
import lathe_ref  # noqa: E402

# The sequence test_qmodels.c runs (stories260K's "Once upon a time" story tokens).
IDS = [1, 403, 407, 261, 378, 275, 302, 261, 361, 401, 408, 384, 276, 293, 270, 302]


def main():
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    src, prefix = sys.argv[1], sys.argv[2]
    with open(os.path.join(src, "meta.json")) as f:
        meta = json.load(f)
    if meta["architecture"] != "llama":
        sys.exit(f"{src}: only llama files ({meta['architecture']})")
    gg, _ = lathe_ref.read_safetensors(os.path.join(src, "weights.safetensors"))
    H, KV, L = meta["attention.head_count"], meta["attention.head_count_kv"], meta["block_count"]
    D, V = meta["embedding_length"], gg["token_embd.weight"].shape[0]
    tied = "output.weight" not in gg
    cfg = {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": D,
           "intermediate_size": meta["feed_forward_length"], "num_hidden_layers": L, "num_attention_heads": H,
           "num_key_value_heads": KV, "vocab_size": V, "max_position_embeddings": meta.get("context_length", 2048),
           "rms_norm_eps": meta.get("attention.layer_norm_rms_epsilon", 1e-5),
           "rope_theta": meta.get("rope.freq_base", 10000.0), "tie_word_embeddings": tied, "hidden_act": "silu"}
    sd = {}
    for hf, name in hf_to_gguf.tensor_names("llama", L, tied):
        t = gg[name]
        if name.endswith(("attn_q.weight", "attn_k.weight")):
            t = hf_to_gguf.unpermute_interleaved(t, H if "attn_q" in name else KV)
        sd[hf] = t.contiguous()
    with tempfile.TemporaryDirectory() as tmp:
        with open(os.path.join(tmp, "config.json"), "w") as f:
            json.dump(cfg, f)
        lathe_ref.write_safetensors(os.path.join(tmp, "model.safetensors"), sd)
        ids = torch.tensor([IDS])
        with torch.no_grad():
            l64 = lathe_ref.load_hf(tmp, torch.float64)(ids)[0]
            l32 = lathe_ref.load_hf(tmp, torch.float32)(ids)[0].double()
    with open(prefix + ".logits.f32", "wb") as f:
        f.write(lathe_ref.tensor_bytes(l64.float()))
    info = {"ids": IDS, "shape": list(l64.shape), "reference_dtype": "float64",
            "max_abs_logit": float(l64.abs().max()), "f32_reference_max_abs_diff": float((l32 - l64).abs().max())}
    with open(prefix + ".logits.json", "w") as f:
        json.dump(info, f, indent=1)
    print(f"{prefix}: {info['shape']} logits, max |logit| {info['max_abs_logit']:.3f}, "
          f"f32 vs f64 {info['f32_reference_max_abs_diff']:.2e}")


if __name__ == "__main__":
    main()
