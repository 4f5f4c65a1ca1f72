#!/usr/bin/env python3
"""Writes a Hugging Face LLaMA, Qwen2 or Phi-3 folder as an F32 GGUF file laid out as llama.cpp's converter lays it out,
for the tests of Lathe's GGUF reader on architectures the stored real models do not cover (a tool, never used at
run time).

  /usr/bin/python3 tools/hf_to_gguf.py HF_FOLDER OUT.gguf

What it writes: general.architecture "llama" or "qwen2" with <arch>.context_length, embedding_length,
feed_forward_length, block_count, attention.head_count, attention.head_count_kv, rope.freq_base,
attention.layer_norm_rms_epsilon; the tensors under GGUF's names (token_embd, blk.N.attn_q ... ffn_down,
output_norm, output unless tied; Qwen2's attn_q/k/v.bias), F32, dims innermost first. LLaMA's q and k rows are
permuted from Hugging Face's rotate-half order into interleaved pairs (as llama.cpp's converter does); Qwen2's are
not, nor Phi-3's (llama.cpp runs both with rotate-half RoPE); Phi-3 keeps its fused attn_qkv and ffn_up (gate rows,
then up rows) and writes phi3.attention.sliding_window. No tokenizer is written: the vocabulary size comes from the
embedding table.
"""
import json
import os
import struct
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import lathe_ref  # noqa: E402

ALIGN = 32


def gguf_string(s):
    b = s.encode()
    return struct.pack("<Q", len(b)) + b


def kv_u32(key, v):
    return gguf_string(key) + struct.pack("<II", 4, v)


def kv_f32(key, v):
    return gguf_string(key) + struct.pack("<If", 6, v)


def kv_str(key, v):
    return gguf_string(key) + struct.pack("<I", 8) + gguf_string(v)


def permute_interleaved(w, n_head):
    """Hugging Face's rotate-half rows of each head (first halves, then second halves) into pairs."""
    rows, cols = w.shape
    return w.reshape(n_head, 2, rows // n_head // 2, cols).transpose(1, 2).reshape(rows, cols)


def unpermute_interleaved(w, n_head):
    """The inverse: llama.cpp's interleaved pairs (2i, 2i+1) of each head back to (i, i + hd/2)."""
    rows, cols = w.shape
    return w.reshape(n_head, rows // n_head // 2, 2, cols).transpose(1, 2).reshape(rows, cols)


def tensor_names(arch, n_layers, tied):
    """(Hugging Face name, GGUF name) of every tensor of a llama, qwen2 or phi3 model, in llama.cpp's order."""
    names = [("model.embed_tokens.weight", "token_embd.weight")]
    for i in range(n_layers):
        p, q = f"model.layers.{i}.", f"blk.{i}."
        names.append((p + "input_layernorm.weight", q + "attn_norm.weight"))
        if arch == "phi3":  # fused as in the HF folder: attn_qkv, and ffn_up holding the gate rows, then the up rows
            names.append((p + "self_attn.qkv_proj.weight", q + "attn_qkv.weight"))
        else:
            names += [(p + "self_attn.q_proj.weight", q + "attn_q.weight"),
                      (p + "self_attn.k_proj.weight", q + "attn_k.weight"),
                      (p + "self_attn.v_proj.weight", q + "attn_v.weight")]
        if arch == "qwen2":
            names += [(p + f"self_attn.{x}_proj.bias", q + f"attn_{x}.bias") for x in "qkv"]
        names += [(p + "self_attn.o_proj.weight", q + "attn_output.weight"),
                  (p + "post_attention_layernorm.weight", q + "ffn_norm.weight")]
        if arch == "phi3":
            names.append((p + "mlp.gate_up_proj.weight", q + "ffn_up.weight"))
        else:
            names += [(p + "mlp.gate_proj.weight", q + "ffn_gate.weight"),
                      (p + "mlp.up_proj.weight", q + "ffn_up.weight")]
        names.append((p + "mlp.down_proj.weight", q + "ffn_down.weight"))
    names.append(("model.norm.weight", "output_norm.weight"))
    if not tied:
        names.append(("lm_head.weight", "output.weight"))
    return names


def main():
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    src, out = sys.argv[1], sys.argv[2]
    with open(os.path.join(src, "config.json")) as f:
        cfg = json.load(f)
    archs = cfg.get("architectures") or []
    arch = ("qwen2" if "Qwen2ForCausalLM" in archs else "phi3" if "Phi3ForCausalLM" in archs
            else "llama" if "LlamaForCausalLM" in archs else None)
    if arch is None:
        sys.exit(f"{src}: only LlamaForCausalLM, Qwen2ForCausalLM and Phi3ForCausalLM are written, not {archs}")
    tensors, _ = lathe_ref.read_safetensors(os.path.join(src, "model.safetensors"))
    H = cfg["num_attention_heads"]
    KV = cfg.get("num_key_value_heads", H)
    L = cfg["num_hidden_layers"]
    kvs = [kv_str("general.architecture", arch), kv_str("general.name", os.path.basename(os.path.normpath(src))),
           kv_u32(f"{arch}.context_length", cfg.get("max_position_embeddings", 2048)),
           kv_u32(f"{arch}.embedding_length", cfg["hidden_size"]),
           kv_u32(f"{arch}.feed_forward_length", cfg["intermediate_size"]),
           kv_u32(f"{arch}.block_count", L), kv_u32(f"{arch}.attention.head_count", H),
           kv_u32(f"{arch}.attention.head_count_kv", KV),
           kv_f32(f"{arch}.rope.freq_base", cfg.get("rope_theta", 10000.0)),
           kv_f32(f"{arch}.attention.layer_norm_rms_epsilon", cfg.get("rms_norm_eps", 1e-6))]
    if arch == "phi3" and cfg.get("sliding_window"):
        kvs.append(kv_u32(f"{arch}.attention.sliding_window", cfg["sliding_window"]))
    names = tensor_names(arch, L, cfg.get("tie_word_embeddings", False))
    infos, blobs, off = [], [], 0
    for hf, gg in names:
        t = tensors[hf].float()
        if arch == "llama" and hf.endswith(("q_proj.weight", "k_proj.weight")):
            t = permute_interleaved(t, H if "q_proj" in hf else KV)
        data = lathe_ref.tensor_bytes(t)
        dims = list(reversed(t.shape))
        infos.append(gguf_string(gg) + struct.pack("<I", len(dims)) + b"".join(struct.pack("<Q", d) for d in dims) +
                     struct.pack("<IQ", 0, off))
        pad = (-len(data)) % ALIGN
        blobs.append(data + b"\0" * pad)
        off += len(data) + pad
    head = b"GGUF" + struct.pack("<IQQ", 3, len(infos), len(kvs)) + b"".join(kvs) + b"".join(infos)
    head += b"\0" * ((-len(head)) % ALIGN)
    with open(out, "wb") as f:
        f.write(head + b"".join(blobs))
    print(f"{out}: {arch}, {len(infos)} tensors, {len(head) + off} bytes")


if __name__ == "__main__":
    main()
