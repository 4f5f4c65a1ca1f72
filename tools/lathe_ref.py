#!/usr/bin/env python3
"""Lathe's PyTorch reference for LLaMA, Mistral, Qwen2, Mixtral, Phi-3 and Gemma 2 causal language models in Hugging
Face layout.

A tool, never used at run time: it makes the test fixtures (tools/make_fixtures.py), trains the embedded
models (tools/train_embedded.py) and is the oracle the C engine is compared against. It reads and writes
HF folders (config.json, model.safetensors, tokenizer.json, generation_config.json) without the
`safetensors`, `tokenizers` or `transformers` packages, and follows the semantics of transformers'
LlamaForCausalLM, MistralForCausalLM, Qwen2ForCausalLM, MixtralForCausalLM, Phi3ForCausalLM and Gemma2ForCausalLM
(Gemma 2's block differs: see the Gemma 2 paragraph below):

  h_0 = embed_tokens[ids]
  per block: h = h + o_proj(attn(rope(q_proj(rms(h))), rope(k_proj(rms(h))), v_proj(rms(h))))   causal, GQA
                                      (sliding window for Mistral/Mixtral/Phi-3 with `sliding_window`: see
                                       attention_mask)
             h = h + mlp(rms(h))      LLaMA: down(silu(gate(x)) * up(x))
                                      Mixtral: softmax(router(x)) -> top-k -> renormalise -> sum_e w_e * expert_e(x),
                                               expert_e(x) = w2(silu(w1(x)) * w3(x))
  logits = lm_head(rms(h_L))          (lm_head = embed_tokens when tie_word_embeddings)

The families differ only in biases, masking and fused projections (see family(), linear_biases(), sliding_window(),
fused_projections()):
  LLaMA    no biases unless `attention_bias` (q, k, v and o) / `mlp_bias` (gate, up, down); full causal attention
  Qwen2    biases on q_proj, k_proj, v_proj always (not o_proj, not the MLP); full causal attention (configs with
           `use_sliding_window` true are refused)
  Mistral  no biases; sliding-window causal attention of `sliding_window` keys (4096 when the key is absent,
           as MistralConfig's default; null is full attention)
  Mixtral  no biases; sliding window when `sliding_window` is set (MixtralConfig's default is null)
  Phi-3    no biases; LLaMA's layer with two fused weights: self_attn.qkv_proj [(H + 2 KV) * D, C] whose rows are
           q_proj, then k_proj, then v_proj, and mlp.gate_up_proj [2 F, C] whose first F rows are gate_proj and
           last F up_proj (Phi3MLP: gate, up = gate_up_proj(x).chunk(2); down(up * silu(gate))); sliding window
           when `sliding_window` is set (Phi3Config's default is null; Phi-3-mini-4k's config.json writes 2047);
           `rope_scaling` (longrope, su, yarn) and `partial_rotary_factor` other than 1 are refused
           (check_phi3). Without them a Phi-3 computes exactly what a Mistral with the split weights and the same
           window computes.
  Gemma 2  (Gemma2ForCausalLM, model_type "gemma2"; transformers' modeling_gemma2, rule by rule, see GemmaRMSNorm,
           Attention, MLP, Block and CausalLM):
             h_0 = embed_tokens[ids] * sqrt(hidden_size)                  (the normalizer)
             Gemma RMSNorm: x * rsqrt(mean(x^2) + eps) * (1 + weight)     (the stored weight is the offset from 1)
             per block: h = h + post_attention_layernorm(attn(input_layernorm(h)))
                        h = h + post_feedforward_layernorm(mlp(pre_feedforward_layernorm(h)))
             mlp(x) = down(gelu_tanh(gate(x)) * up(x))                    (hidden_activation gelu_pytorch_tanh)
             attention scores (q . k) * query_pre_attn_scalar^-0.5, then cap * tanh(scores / cap) with
               cap = attn_logit_softcapping, BEFORE the causal/window mask; GQA; head_dim from the config
             layer i: sliding window of `sliding_window` keys when i % 2 == 0, full causal attention when odd
               (`layer_types`, where the config has it, decides instead)
             logits = lm_head(norm(h_L)), tied by default; then cap * tanh(logits / cap) with
               cap = final_logit_softcapping
           no biases (`attention_bias` true is refused), other hidden_activations refused (check_gemma2).
Keys a config omits get the defaults of the transformers config classes (config_default): rope_theta 1e4 and
rms_norm_eps 1e-6 for LLaMA, Mistral and Qwen2 (Qwen2Config's rope_theta default is 1e4; real Qwen2 checkpoints
write 1e6), rope_theta 1e6 and rms_norm_eps 1e-5 for Mixtral, rope_theta 1e4 and rms_norm_eps 1e-5 for Phi-3;
Gemma2Config's for Gemma 2 (rms_norm_eps 1e-6, rope_theta 1e4, query_pre_attn_scalar 256, attn_logit_softcapping 50,
final_logit_softcapping 30, sliding_window 4096, head_dim 256, hidden_activation gelu_pytorch_tanh, tied head).

RoPE is the rotate-half form (the HF layout of q_proj/k_proj), with rope_theta and the optional Llama-3
`rope_scaling`. Weights stored as f16/bf16 are converted exactly to the compute dtype (f32 by default,
f64 for fixture references).

Command line:
  lathe_ref.py generate --model DIR (--prompt TEXT | --tokens 1,2,3) [--max-tokens N] [--temperature T]
                        [--top-k K] [--top-p P] [--seed S] [--dtype f32|f64] [--json]
  lathe_ref.py logits --model DIR --tokens 1,2,3 [--dtype f64]      prints the last position's top 5
"""
import argparse
import json
import math
import os
import re
import struct
import sys

import torch
import torch.nn as nn
import torch.nn.functional as F

assert sys.byteorder == "little", "safetensors data is little-endian; this tool assumes a little-endian host"

# ---------------------------------------------------------------------------------------------------------
# safetensors: 8-byte little-endian header length, JSON header, raw little-endian tensor data.

ST_DTYPES = {"F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
             "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8}
ST_NAMES = {v: k for k, v in ST_DTYPES.items()}
_SAME_SIZE_INT = {8: torch.int64, 4: torch.int32, 2: torch.int16, 1: torch.uint8}


def read_safetensors(path):
    """Returns {name: tensor} (tensors own their memory) and the header's __metadata__ dict."""
    with open(path, "rb") as f:
        data = f.read()
    (n,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8:8 + n])
    base = 8 + n
    tensors = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        a, b = info["data_offsets"]
        dtype = ST_DTYPES[info["dtype"]]
        raw = bytearray(data[base + a:base + b])
        t = torch.frombuffer(raw, dtype=dtype) if raw else torch.empty(0, dtype=dtype)
        tensors[name] = t.reshape(info["shape"])
    return tensors, header.get("__metadata__", {})


def tensor_bytes(t):
    """Raw little-endian bytes of a tensor (row-major)."""
    t = t.detach().contiguous().cpu()
    return t.view(_SAME_SIZE_INT[t.element_size()]).numpy().tobytes()


def write_safetensors(path, tensors, metadata=None):
    """Writes {name: tensor} in the given order; the header is padded with spaces to 8-byte alignment."""
    header = {"__metadata__": metadata or {"format": "pt"}}
    blobs, off = [], 0
    for name, t in tensors.items():
        raw = tensor_bytes(t)
        header[name] = {"dtype": ST_NAMES[t.dtype], "shape": list(t.shape), "data_offsets": [off, off + len(raw)]}
        blobs.append(raw)
        off += len(raw)
    h = json.dumps(header, separators=(",", ":")).encode()
    h += b" " * (-len(h) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(h)))
        f.write(h)
        for raw in blobs:
            f.write(raw)


# ---------------------------------------------------------------------------------------------------------
# Model.

FAMILIES = {"LlamaForCausalLM": "llama", "MistralForCausalLM": "mistral", "Qwen2ForCausalLM": "qwen2",
            "MixtralForCausalLM": "mixtral", "Phi3ForCausalLM": "phi3", "Gemma2ForCausalLM": "gemma2"}


def family(cfg):
    """"llama", "mistral", "qwen2", "mixtral", "phi3" or "gemma2", from `architectures` (else `model_type`); LLaMA when
    neither says. Raises on an architecture or model_type outside the six."""
    archs = cfg.get("architectures") or []
    if archs:
        if archs[0] not in FAMILIES:
            raise ValueError(f"architecture {archs[0]} unsupported ({', '.join(FAMILIES)})")
        return FAMILIES[archs[0]]
    kind = cfg.get("model_type", "llama")
    if kind not in FAMILIES.values():
        raise ValueError(f"model_type {kind!r} unsupported ({', '.join(FAMILIES.values())})")
    return kind


# transformers' config-class defaults for the keys this reference reads with a fallback. tie_word_embeddings: False
# in LlamaConfig, MistralConfig, Qwen2Config, MixtralConfig and Phi3Config, True in Gemma2Config.
DEFAULTS = {"llama": {"rope_theta": 10000.0, "rms_norm_eps": 1e-6, "tie_word_embeddings": False},
            "mistral": {"rope_theta": 10000.0, "rms_norm_eps": 1e-6, "tie_word_embeddings": False},
            "qwen2": {"rope_theta": 10000.0, "rms_norm_eps": 1e-6, "tie_word_embeddings": False},
            "mixtral": {"rope_theta": 1e6, "rms_norm_eps": 1e-5, "tie_word_embeddings": False},
            "phi3": {"rope_theta": 10000.0, "rms_norm_eps": 1e-5, "tie_word_embeddings": False},
            # Gemma2Config's defaults (its hybrid-cache-era __init__ and the current dataclass agree on these).
            "gemma2": {"rope_theta": 10000.0, "rms_norm_eps": 1e-6, "tie_word_embeddings": True,
                       "query_pre_attn_scalar": 256, "attn_logit_softcapping": 50.0, "final_logit_softcapping": 30.0,
                       "sliding_window": 4096, "head_dim": 256, "hidden_activation": "gelu_pytorch_tanh"}}


def config_default(cfg, key):
    """cfg[key], else the family's transformers default (DEFAULTS). A key present with null stays None (for Gemma 2's
    softcappings that switches them off, as transformers' `if ... is not None` does)."""
    return cfg.get(key, DEFAULTS[family(cfg)][key])


def is_gemma2(cfg):
    """True for a Gemma 2 config (Gemma RMSNorm, scaled embeddings, four norms per block, GeGLU, softcaps, alternating
    sliding/global attention)."""
    return family(cfg) == "gemma2"


GEMMA2_LAYER_TYPES = ("sliding_attention", "full_attention")


def check_gemma2(cfg):
    """Refuses the Gemma 2 configs this reference does not compute as transformers would: `attention_bias` true
    (Gemma2Attention would add q/k/v/o biases; no released checkpoint has them), a hidden_activation other than
    gelu_pytorch_tanh (Gemma2MLP applies ACT2FN[hidden_activation]), `use_bidirectional_attention` (no causal mask),
    a `layer_types` list of the wrong length or with other entries, non-positive query_pre_attn_scalar or softcaps,
    and a sliding layer without a positive integer window. Other families pass unchecked."""
    if not is_gemma2(cfg):
        return
    if cfg.get("attention_bias", False):
        raise ValueError("Gemma 2 attention_bias true unsupported (no biases)")
    act = config_default(cfg, "hidden_activation")
    if act != "gelu_pytorch_tanh":
        raise ValueError(f"Gemma 2 hidden_activation {act!r} unsupported (only gelu_pytorch_tanh)")
    if cfg.get("use_bidirectional_attention"):
        raise ValueError("Gemma 2 use_bidirectional_attention unsupported (causal attention only)")
    types = cfg.get("layer_types")
    if types is not None and (not isinstance(types, list) or len(types) != cfg["num_hidden_layers"]
                              or any(t not in GEMMA2_LAYER_TYPES for t in types)):
        raise ValueError(f"Gemma 2 layer_types {types!r}: one of {GEMMA2_LAYER_TYPES} per layer expected")
    for key in ("query_pre_attn_scalar", "attn_logit_softcapping", "final_logit_softcapping"):
        v = config_default(cfg, key)
        if key != "query_pre_attn_scalar" and v is None:
            continue
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not v > 0:
            raise ValueError(f"Gemma 2 {key} {v!r}: a positive number expected")
    for layer in range(cfg["num_hidden_layers"]):
        sliding_window(cfg, layer)  # raises on a sliding layer without a valid window


def is_moe(cfg):
    """True for a Mixtral config."""
    return family(cfg) == "mixtral"


def fused_projections(cfg):
    """True for Phi-3, whose attention holds one qkv_proj (q rows, then k, then v) and whose MLP holds one
    gate_up_proj (gate rows, then up) instead of LLaMA's separate q/k/v_proj and gate/up_proj."""
    return family(cfg) == "phi3"


def check_phi3(cfg):
    """Refuses the Phi-3 configs this reference does not compute: any `rope_scaling` (Phi-3's longrope, written
    "su" or "yarn" by older checkpoints, switches short/long factors per sequence length) and a
    `partial_rotary_factor` other than 1 (RoPE on a leading part of each head only, as Phi-4-mini). Other families
    pass unchecked."""
    if family(cfg) != "phi3":
        return
    rs = cfg.get("rope_scaling")
    if rs is not None:
        kind = rs.get("rope_type", rs.get("type")) if isinstance(rs, dict) else rs
        raise ValueError(f"Phi-3 rope_scaling {kind!r} unsupported (only null: no longrope/su/yarn)")
    prf = cfg.get("partial_rotary_factor", 1.0)
    if isinstance(prf, bool) or not isinstance(prf, (int, float)) or prf != 1.0:
        raise ValueError(f"Phi-3 partial_rotary_factor {prf!r} unsupported (only 1.0: RoPE on the whole head)")


def linear_biases(cfg):
    """(q/k/v bias, o bias, MLP bias) as transformers builds them: Qwen2Attention has bias=True on q, k, v and
    bias=False on o; LlamaAttention uses config.attention_bias on all four and LlamaMLP config.mlp_bias; Mistral,
    Mixtral and Phi-3 have none (Phi3Attention and Phi3MLP hard-code bias=False, whatever attention_bias says)."""
    fam = family(cfg)
    if fam == "qwen2":
        return True, False, False
    if fam == "llama":
        return bool(cfg.get("attention_bias", False)), bool(cfg.get("attention_bias", False)), \
            bool(cfg.get("mlp_bias", False))
    return False, False, False


def sliding_window(cfg, layer):
    """The attention window W of block `layer` (an int: a query sees its own position and the W-1 before it), or
    None for full causal attention.
      Mistral: config.sliding_window on every layer; MistralConfig's default 4096 when the key is absent, null
               means full attention (the transformers behaviour: a config.json without the key gets 4096).
      Mixtral: config.sliding_window on every layer, default null.
      Phi-3:   config.sliding_window on every layer, default null (Phi3Config's default; Phi3Model picks
               create_sliding_window_causal_mask, the Mistral rule, whenever it is set). Released checkpoints write
               it (2047 for Phi-3-mini-4k and Phi-3-medium-4k).
      Qwen2:   only with use_sliding_window, which this reference refuses (transformers applies it to the layers
               from max_window_layers on, and its versions disagreed on that); real checkpoints carry a
               sliding_window value with use_sliding_window false, and then it is ignored, as transformers does.
      Gemma 2: per layer. transformers' Gemma2Config fills `layer_types` with "sliding_attention" where
               (i + 1) % 2 is 1 and "full_attention" elsewhere (the older Gemma2Attention: is_sliding =
               not bool(layer_idx % 2)): layer i % 2 == 0 gets the window, odd layers full causal attention. A config
               that writes `layer_types` is followed instead. The window is config.sliding_window (Gemma2Config's
               default 4096 when absent); a sliding layer without one is refused (transformers cannot build it).
               Same mask rule as Mistral's (attention_mask): the older Gemma2DecoderLayer masked
               tril(ones, diagonal=-sliding_window), i.e. j <= i - W, leaving i - j < W.
      LLaMA:   never."""
    fam = family(cfg)
    if fam == "gemma2":
        types = cfg.get("layer_types") or [GEMMA2_LAYER_TYPES[i % 2] for i in range(cfg["num_hidden_layers"])]
        if types[layer] == "full_attention":
            return None
        w = config_default(cfg, "sliding_window")
        if isinstance(w, bool) or not isinstance(w, int) or w < 1:
            raise ValueError(f"Gemma 2 sliding_window {w!r} on sliding layer {layer}: a positive integer expected")
        return w
    if fam == "qwen2":
        types = cfg.get("layer_types") or []
        if cfg.get("use_sliding_window") or any(t != "full_attention" for t in types):
            raise ValueError("Qwen2 with use_sliding_window (or sliding_attention layer_types) unsupported")
        return None
    if fam == "mistral":
        w = cfg.get("sliding_window", 4096)
    elif fam in ("mixtral", "phi3"):
        w = cfg.get("sliding_window")
    else:
        return None
    if w is None:
        return None
    if isinstance(w, bool) or not isinstance(w, int) or w < 1:
        raise ValueError(f"sliding_window {w!r}: a positive integer or null expected")
    return w


def attention_mask(T, window=None, device=None):
    """(T, T) bool, True where query i may attend to key j (positions 0..T-1 of one sequence, no cache):
    j <= i (causal) and, with a window W, i - j < W.

    The window rule is transformers' current one: masking_utils.sliding_window_overlay allows
    `kv_idx > q_idx - sliding_window`, AND-ed with causal_mask_function's `kv_idx <= q_idx`, and the earlier
    _prepare_4d_causal_attention_mask_with_cache_position of Mistral/Mixtral/Qwen2 masked
    `arange(target) <= cache_position - sliding_window`, the same set. So the window holds W keys, the query's
    own position included: query i sees keys max(0, i-W+1)..i, and query W is the first to lose key 0.
    Not every implementation agrees: Mistral's original one_file_ref (triu(diagonal=-sliding_window)) and the
    AttentionMaskConverter of some older transformers releases (`diagonal = past - sliding_window - 1`) keep W+1
    keys, j >= i - W, like flash-attn's window_size=(W, W); current transformers and vLLM (flash-attn window
    (W-1, 0)) keep W. This reference follows current transformers, as the fixtures must."""
    i = torch.arange(T, device=device)[:, None]
    j = torch.arange(T, device=device)[None, :]
    allowed = j <= i
    if window is not None:
        allowed = allowed & (i - j < window)
    return allowed


def head_dim(cfg):
    """Per-head size: config head_dim if present, else hidden_size / num_attention_heads; for Gemma 2 config head_dim,
    else Gemma2Config's default 256 (never derived from hidden_size: Gemma 2 heads are wider than hidden / heads)."""
    if is_gemma2(cfg):
        return config_default(cfg, "head_dim")
    return cfg.get("head_dim") or cfg["hidden_size"] // cfg["num_attention_heads"]


def rope_inv_freq(cfg, dtype=torch.float64):
    """Per-pair inverse frequencies (head_dim/2,), Llama-3 `rope_scaling` applied as transformers does (a Phi-3
    config with rope_scaling or partial rotary is refused: check_phi3)."""
    check_phi3(cfg)
    d = head_dim(cfg)
    theta = float(config_default(cfg, "rope_theta"))
    inv = 1.0 / (theta ** (torch.arange(0, d, 2, dtype=torch.int64).to(dtype) / d))
    rs = cfg.get("rope_scaling")
    if not rs:
        return inv
    kind = rs.get("rope_type", rs.get("type"))
    if kind == "default":
        return inv
    if kind != "llama3":
        raise ValueError(f"rope_scaling type {kind!r} unsupported (only llama3)")
    factor, lo, hi = rs["factor"], rs["low_freq_factor"], rs["high_freq_factor"]
    old_ctx = rs["original_max_position_embeddings"]
    lo_wavelen, hi_wavelen = old_ctx / lo, old_ctx / hi
    wavelen = 2 * math.pi / inv
    scaled = torch.where(wavelen > lo_wavelen, inv / factor, inv)             # low frequencies: divided
    smooth = (old_ctx / wavelen - lo) / (hi - lo)
    smoothed = (1 - smooth) * scaled / factor + smooth * scaled               # medium: interpolated
    medium = ~(wavelen < hi_wavelen) & ~(wavelen > lo_wavelen)
    return torch.where(medium, smoothed, scaled)                              # high frequencies: unchanged


def rope_cos_sin(cfg, positions, dtype):
    """cos, sin of shape (T, head_dim) for rotate-half RoPE (each angle repeated in both halves)."""
    freqs = positions.to(dtype)[:, None] * rope_inv_freq(cfg, dtype)[None, :]
    emb = torch.cat([freqs, freqs], dim=-1)
    return emb.cos(), emb.sin()


def apply_rope(x, cos, sin):
    """x (B,H,T,D): x*cos + rotate_half(x)*sin, where rotate_half(x) = (-x2, x1) on the two halves of D."""
    half = x.shape[-1] // 2
    rot = torch.cat([-x[..., half:], x[..., :half]], dim=-1)
    return x * cos + rot * sin


class RMSNorm(nn.Module):
    def __init__(self, dim, eps):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x):
        return self.weight * (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps))


class GemmaRMSNorm(nn.Module):
    """Gemma2RMSNorm: x * rsqrt(mean(x^2) + eps) * (1 + weight). The stored weight is the offset from 1
    (transformers initialises it to zeros), and the product is taken before casting back to x's dtype
    ((x * w).to(dtype), where LLaMA's RMSNorm casts first): the same thing in the f32/f64 this reference computes in."""

    def __init__(self, dim, eps):
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(dim))
        self.eps = eps

    def forward(self, x):
        return (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps)) * (1.0 + self.weight)


def softcap(x, cap):
    """cap * tanh(x / cap), in transformers' order of operations (divide, tanh, multiply); x unchanged when cap is
    None (Gemma 2's attn_logit_softcapping and final_logit_softcapping)."""
    if cap is None:
        return x
    return torch.tanh(x / cap) * cap


class Attention(nn.Module):
    def __init__(self, cfg, layer=0):
        super().__init__()
        c, d = cfg["hidden_size"], head_dim(cfg)
        self.n_head, self.n_kv, self.d = cfg["num_attention_heads"], cfg["num_key_value_heads"], d
        qkv_bias, o_bias, _ = linear_biases(cfg)
        self.window = sliding_window(cfg, layer)  # None: full causal attention
        # Gemma 2: scores * query_pre_attn_scalar^-0.5 (Gemma2Attention.scaling; not head_dim^-0.5), then the
        # attention softcap. Other families: scores / sqrt(head_dim), no cap.
        self.gemma2 = is_gemma2(cfg)
        self.scaling = config_default(cfg, "query_pre_attn_scalar") ** -0.5 if self.gemma2 else None
        self.softcap = config_default(cfg, "attn_logit_softcapping") if self.gemma2 else None
        self.fused = fused_projections(cfg)
        if self.fused:  # Phi3Attention's order: o_proj, then qkv_proj
            self.o_proj = nn.Linear(self.n_head * d, c, bias=False)
            self.qkv_proj = nn.Linear(c, (self.n_head + 2 * self.n_kv) * d, bias=False)
            return
        self.q_proj = nn.Linear(c, self.n_head * d, bias=qkv_bias)
        self.k_proj = nn.Linear(c, self.n_kv * d, bias=qkv_bias)
        self.v_proj = nn.Linear(c, self.n_kv * d, bias=qkv_bias)
        self.o_proj = nn.Linear(self.n_head * d, c, bias=o_bias)

    def project(self, x):
        """q (B,T,H*D), k and v (B,T,KV*D). Fused (Phi-3): columns [0, H*D) of qkv_proj(x) are q,
        [H*D, H*D + KV*D) k and [H*D + KV*D, H*D + 2*KV*D) v, as Phi3Attention slices them."""
        if not self.fused:
            return self.q_proj(x), self.k_proj(x), self.v_proj(x)
        qd, kvd = self.n_head * self.d, self.n_kv * self.d
        qkv = self.qkv_proj(x)
        return qkv[..., :qd], qkv[..., qd:qd + kvd], qkv[..., qd + kvd:]

    def forward(self, x, cos, sin):
        B, T, _ = x.shape  # x is (B,T,C)
        q, k, v = self.project(x)
        q = q.reshape(B, T, self.n_head, self.d).transpose(1, 2)             # (B,H,T,D)
        k = k.reshape(B, T, self.n_kv, self.d).transpose(1, 2)               # (B,KV,T,D)
        v = v.reshape(B, T, self.n_kv, self.d).transpose(1, 2)
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        rep = self.n_head // self.n_kv                                       # query head h reads kv head h // rep
        k, v = k.repeat_interleave(rep, dim=1), v.repeat_interleave(rep, dim=1)
        if self.scaling is None:
            att = (q @ k.transpose(-2, -1)) / math.sqrt(self.d)              # (B,H,T,T)
        else:
            att = (q @ k.transpose(-2, -1)) * self.scaling                   # Gemma 2: query_pre_attn_scalar^-0.5
        att = softcap(att, self.softcap)     # Gemma 2: cap * tanh(scores / cap) on every score, BEFORE the mask
        masked = ~attention_mask(T, self.window, x.device)
        att = att.masked_fill(masked, float("-inf")).softmax(dim=-1)
        y = (att @ v).transpose(1, 2).reshape(B, T, self.n_head * self.d)
        return self.o_proj(y)


class MLP(nn.Module):
    """LLaMA / Mistral / Qwen2 SwiGLU: down(silu(gate(x)) * up(x)). Phi-3 (fused): gate, up =
    gate_up_proj(x).chunk(2, dim=-1), the first intermediate_size outputs being the gate; down(up * silu(gate)).
    Gemma 2 GeGLU: down(gelu_tanh(gate(x)) * up(x)), gelu_tanh(x) = 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3)))
    (hidden_activation gelu_pytorch_tanh: F.gelu(approximate="tanh"))."""

    def __init__(self, cfg):
        super().__init__()
        c, f = cfg["hidden_size"], cfg["intermediate_size"]
        bias = linear_biases(cfg)[2]
        self.gelu = is_gemma2(cfg)
        self.fused = fused_projections(cfg)
        if self.fused:  # Phi3MLP's order: gate_up_proj, then down_proj
            self.gate_up_proj = nn.Linear(c, 2 * f, bias=False)
        else:
            self.gate_proj = nn.Linear(c, f, bias=bias)
            self.up_proj = nn.Linear(c, f, bias=bias)
        self.down_proj = nn.Linear(f, c, bias=bias)

    def forward(self, x, router_logits=None):
        if self.fused:
            gate, up = self.gate_up_proj(x).chunk(2, dim=-1)
            return self.down_proj(up * F.silu(gate))
        if self.gelu:
            return self.down_proj(F.gelu(self.gate_proj(x), approximate="tanh") * self.up_proj(x))
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class Expert(nn.Module):
    """Mixtral expert: w2(silu(w1(x)) * w3(x)); w1 is the gate, w3 the up projection, w2 the down."""

    def __init__(self, cfg):
        super().__init__()
        c, f = cfg["hidden_size"], cfg["intermediate_size"]
        self.w1 = nn.Linear(c, f, bias=False)
        self.w2 = nn.Linear(f, c, bias=False)
        self.w3 = nn.Linear(c, f, bias=False)

    def forward(self, x):
        return self.w2(F.silu(self.w1(x)) * self.w3(x))


class SparseMoE(nn.Module):
    """Mixtral block_sparse_moe: softmax router, top-k experts, top-k weights renormalised to sum to 1."""

    def __init__(self, cfg):
        super().__init__()
        self.top_k = cfg["num_experts_per_tok"]
        self.gate = nn.Linear(cfg["hidden_size"], cfg["num_local_experts"], bias=False)
        self.experts = nn.ModuleList(Expert(cfg) for _ in range(cfg["num_local_experts"]))

    def forward(self, x, router_logits=None):
        B, T, C = x.shape
        h = x.reshape(B * T, C)
        logits = self.gate(h)                                     # (N,E)
        if router_logits is not None:
            router_logits.append(logits)
        w, sel = torch.topk(logits.softmax(dim=-1), self.top_k, dim=-1)
        w = w / w.sum(dim=-1, keepdim=True)
        out = torch.zeros_like(h)
        for e, expert in enumerate(self.experts):                  # summed in expert order, as transformers does
            tok, slot = torch.where(sel == e)
            if tok.numel():
                out.index_add_(0, tok, expert(h[tok]) * w[tok, slot, None])
        return out.view(B, T, C)


class Block(nn.Module):
    """One decoder layer. LLaMA-like: h + attn(input_layernorm(h)), then + mlp(post_attention_layernorm(h)) (there
    post_attention_layernorm is the norm BEFORE the MLP). Gemma 2 (Gemma2DecoderLayer, four Gemma RMSNorms):
      h = h + post_attention_layernorm(attn(input_layernorm(h)))          post_attention_layernorm: on attn's OUTPUT
      h = h + post_feedforward_layernorm(mlp(pre_feedforward_layernorm(h)))"""

    def __init__(self, cfg, layer=0):
        super().__init__()
        eps = config_default(cfg, "rms_norm_eps")
        self.sandwich = is_gemma2(cfg)
        norm = GemmaRMSNorm if self.sandwich else RMSNorm
        self.input_layernorm = norm(cfg["hidden_size"], eps)
        self.self_attn = Attention(cfg, layer)
        self.post_attention_layernorm = norm(cfg["hidden_size"], eps)
        if self.sandwich:
            self.pre_feedforward_layernorm = norm(cfg["hidden_size"], eps)
            self.post_feedforward_layernorm = norm(cfg["hidden_size"], eps)
        if is_moe(cfg):
            self.block_sparse_moe = SparseMoE(cfg)
        else:
            self.mlp = MLP(cfg)

    def forward(self, x, cos, sin, router_logits=None):
        if self.sandwich:
            x = x + self.post_attention_layernorm(self.self_attn(self.input_layernorm(x), cos, sin))
            return x + self.post_feedforward_layernorm(self.mlp(self.pre_feedforward_layernorm(x)))
        x = x + self.self_attn(self.input_layernorm(x), cos, sin)
        ff = self.block_sparse_moe if hasattr(self, "block_sparse_moe") else self.mlp
        return x + ff(self.post_attention_layernorm(x), router_logits)


class Body(nn.Module):
    """transformers' LlamaModel / MistralModel / Qwen2Model / MixtralModel / Phi3Model / Gemma2Model: the `model.`
    prefix of the tensor names (Gemma 2's final norm is a Gemma RMSNorm too)."""

    def __init__(self, cfg):
        super().__init__()
        self.embed_tokens = nn.Embedding(cfg["vocab_size"], cfg["hidden_size"])
        self.layers = nn.ModuleList(Block(cfg, i) for i in range(cfg["num_hidden_layers"]))
        norm = GemmaRMSNorm if is_gemma2(cfg) else RMSNorm
        self.norm = norm(cfg["hidden_size"], config_default(cfg, "rms_norm_eps"))


class CausalLM(nn.Module):
    """LlamaForCausalLM, MistralForCausalLM, Qwen2ForCausalLM, MixtralForCausalLM, Phi3ForCausalLM or
    Gemma2ForCausalLM; state_dict() names are the HF tensor names (biases, where the family has them, as
    `<linear>.bias`; Phi-3's fused self_attn.qkv_proj and mlp.gate_up_proj as such; Gemma 2's four norms per block).
    Refuses the configs check_phi3 and check_gemma2 refuse."""

    def __init__(self, cfg):
        super().__init__()
        check_phi3(cfg)
        check_gemma2(cfg)
        self.cfg = cfg
        self.model = Body(cfg)
        # Gemma 2: the embedding output is multiplied by sqrt(hidden_size) (Gemma2Model's normalizer,
        # torch.tensor(hidden_size**0.5, dtype=hidden_states.dtype): in the f32/f64 this reference computes in that is
        # sqrt(C) rounded once; a bf16 run of transformers rounds it to bf16, e.g. sqrt(3584) = 59.87 -> 59.75), and
        # the logits are soft-capped by final_logit_softcapping (null: no cap). Other families: neither.
        gemma2 = is_gemma2(cfg)
        self.embed_scale = cfg["hidden_size"] ** 0.5 if gemma2 else None
        self.final_softcap = config_default(cfg, "final_logit_softcapping") if gemma2 else None
        self.tied = bool(config_default(cfg, "tie_word_embeddings"))
        if not self.tied:
            self.lm_head = nn.Linear(cfg["hidden_size"], cfg["vocab_size"], bias=False)

    def forward(self, ids, router_logits=None):
        """ids (B,T) int64 -> logits (B,T,V) in the parameter dtype; appends each MoE layer's router logits
        (B*T, E) to router_logits when a list is given."""
        x = self.model.embed_tokens(ids)
        if self.embed_scale is not None:
            x = x * torch.tensor(self.embed_scale, dtype=x.dtype)           # Gemma 2: * sqrt(hidden_size)
        cos, sin = rope_cos_sin(self.cfg, torch.arange(ids.shape[1]), x.dtype)
        for block in self.model.layers:
            x = block(x, cos, sin, router_logits)
        x = self.model.norm(x)
        head = self.model.embed_tokens.weight if self.tied else self.lm_head.weight
        return softcap(x @ head.t(), self.final_softcap)                   # Gemma 2: cap * tanh(logits / cap)


def init_weights(model, gen, std=0.02, norm_jitter=0.0, bias_std=None):
    """Random init from a torch.Generator, in named_parameters() order: N(0, std) matrices, output projections
    scaled by 1/sqrt(2L) (GPT-2), norm weights 1 + N(0, norm_jitter), biases N(0, bias_std) (std when None). Gemma 2's
    norm weights are stored as the offset from 1 (GemmaRMSNorm multiplies by 1 + weight), so they get N(0, norm_jitter)
    and still scale by 1 + N(0, norm_jitter)."""
    n_layers = model.cfg["num_hidden_layers"]
    norm_base = 0.0 if is_gemma2(model.cfg) else 1.0
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith(".bias"):
                p.copy_((std if bias_std is None else bias_std) * torch.randn(p.shape, generator=gen))
            elif name.endswith("layernorm.weight") or name == "model.norm.weight":
                p.copy_(norm_base + norm_jitter * torch.randn(p.shape, generator=gen))
            elif name.endswith(("o_proj.weight", "down_proj.weight", "w2.weight")):
                p.copy_(std / math.sqrt(2 * n_layers) * torch.randn(p.shape, generator=gen))
            else:
                p.copy_(std * torch.randn(p.shape, generator=gen))


def masked_lm_loss(model, ids, mask, balance=0.0):
    """The training loss Lathe's `tune` minimises: the mean, over the target tokens whose mask is 1, of the
    cross-entropy of predicting ids[b, t+1] from ids[b, :t+1]. ids (B,T) int64; mask (B,T-1) of 0/1, mask[b, t]
    covering target ids[b, t+1]. With balance > 0 on a Mixtral model, adds balance * the load-balancing loss of
    each MoE layer (mean over layers; see load_balance_loss). Returns a 0-d tensor in the model's dtype."""
    router = [] if balance > 0 else None
    logits = model(ids, router)[:, :-1, :]
    nll = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), ids[:, 1:].reshape(-1), reduction="none")
    m = mask.reshape(-1).to(nll.dtype)
    loss = (nll * m).sum() / m.sum()
    if router:
        loss = loss + balance * sum(load_balance_loss(r, model.cfg["num_experts_per_tok"]) for r in router) / len(router)
    return loss


def load_balance_loss(router_logits, top_k):
    """Switch/Mixtral load balancing for one MoE layer over its N tokens: E * sum_e f_e * P_e, where f_e is the
    share of the N * top_k routing slots that chose expert e (a constant: no gradient flows through the
    choice) and P_e the mean router probability of e. Equals 1 when routing is perfectly even."""
    n, e = router_logits.shape
    probs = router_logits.softmax(dim=-1)
    sel = torch.topk(probs, top_k, dim=-1).indices
    f = torch.zeros(e, dtype=probs.dtype).index_add_(0, sel.reshape(-1), torch.ones(n * top_k, dtype=probs.dtype))
    f = f / (n * top_k)
    return e * (f * probs.mean(dim=0)).sum()


def loss_and_grads(model, ids, mask, balance=0.0):
    """The masked LM loss and its gradient with respect to every parameter, by autograd in the model's dtype.
    Returns (loss as a float, {HF tensor name: gradient}); a tied head's gradient is the embedding's."""
    model.zero_grad(set_to_none=True)
    with torch.enable_grad():
        loss = masked_lm_loss(model, ids, mask, balance)
        loss.backward()
    return loss.item(), {name: p.grad.detach().clone() for name, p in model.named_parameters()}


# ---------------------------------------------------------------------------------------------------------
# Hugging Face folders.

TORCH_DTYPE_NAMES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def load_hf(folder, dtype=torch.float32):
    """Loads config.json + model.safetensors (or a sharded index) into a CausalLM computing in `dtype`.
    Refuses missing or unexpected tensors and shape mismatches."""
    with open(os.path.join(folder, "config.json")) as f:
        cfg = json.load(f)
    arch = cfg.get("architectures", ["?"])[0]
    if arch not in FAMILIES:
        raise ValueError(f"{folder}: architecture {arch} unsupported ({', '.join(FAMILIES)})")
    index = os.path.join(folder, "model.safetensors.index.json")
    if os.path.exists(index):
        with open(index) as f:
            files = sorted(set(json.load(f)["weight_map"].values()))
    else:
        files = ["model.safetensors"]
    sd = {}
    for name in files:
        sd.update(read_safetensors(os.path.join(folder, name))[0])
    model = CausalLM(cfg)
    if model.tied:
        sd.pop("lm_head.weight", None)  # some tied checkpoints store the copy too
    want = model.state_dict()
    missing, extra = sorted(set(want) - set(sd)), sorted(set(sd) - set(want))
    if missing or extra:
        raise ValueError(f"{folder}: missing tensors {missing[:5]}, unexpected tensors {extra[:5]}")
    for name, t in sd.items():
        if tuple(t.shape) != tuple(want[name].shape):
            raise ValueError(f"{folder}: {name} has shape {list(t.shape)}, config says {list(want[name].shape)}")
    model.load_state_dict({k: v.to(dtype) for k, v in sd.items()})
    return model.to(dtype).eval()


def save_hf(folder, model, tokenizer_json, store_dtype=torch.float32, extra_files=None):
    """Writes config.json, model.safetensors (weights cast to store_dtype), tokenizer.json,
    tokenizer_config.json and generation_config.json into folder (created if needed)."""
    os.makedirs(folder, exist_ok=True)
    cfg = dict(model.cfg)
    cfg["torch_dtype"] = {v: k for k, v in TORCH_DTYPE_NAMES.items()}[store_dtype]
    with open(os.path.join(folder, "config.json"), "w") as f:
        json.dump(cfg, f, indent=2)
        f.write("\n")
    tensors = {k: v.detach().to(store_dtype) for k, v in model.state_dict().items()}
    write_safetensors(os.path.join(folder, "model.safetensors"), tensors)
    with open(os.path.join(folder, "tokenizer.json"), "w") as f:
        json.dump(tokenizer_json, f, indent=1, ensure_ascii=False)
        f.write("\n")
    specials = {t["id"]: t["content"] for t in tokenizer_json.get("added_tokens", [])}
    tok_cfg = {"bos_token": specials.get(cfg.get("bos_token_id")), "eos_token": specials.get(cfg.get("eos_token_id")),
               "model_max_length": cfg.get("max_position_embeddings"), "tokenizer_class": "PreTrainedTokenizerFast"}
    gen_cfg = {"bos_token_id": cfg.get("bos_token_id"), "eos_token_id": cfg.get("eos_token_id")}
    for name, obj in (("tokenizer_config.json", tok_cfg), ("generation_config.json", gen_cfg)):
        with open(os.path.join(folder, name), "w") as f:
            json.dump(obj, f, indent=2)
            f.write("\n")
    for name, text in (extra_files or {}).items():
        with open(os.path.join(folder, name), "w") as f:
            f.write(text)


# ---------------------------------------------------------------------------------------------------------
# Tokenizers from tokenizer.json: byte-level BPE (GPT-2 / Llama-3) and SentencePiece-style BPE (`▁`, byte
# fallback; Llama-2 / Mistral / TinyLlama).

GPT2_PATTERN = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"
# Python's `re` has no \p{..}: letters are [^\W\d_], numbers \d, the rest (_ included) is "other".
# Exact on ASCII text; on other scripts it approximates \p{L} / \p{N} (e.g. Python counts '²' as a letter).
GPT2_PATTERN_PY = r"'s|'t|'re|'ve|'m|'ll|'d| ?[^\W\d_]+| ?\d+| ?(?:[^\s\w]|_)+|\s+(?!\S)|\s+"


def bytes_to_unicode():
    """GPT-2's reversible map from the 256 byte values to printable unicode characters."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, map(chr, cs)))


def bpe_merge(symbols, ranks):
    """Applies BPE merges to a list of symbols: repeatedly merges every occurrence of the lowest-ranked
    adjacent pair, left to right."""
    while len(symbols) > 1:
        pairs = {(a, b) for a, b in zip(symbols, symbols[1:])}
        best = min(pairs, key=lambda p: ranks.get(p, math.inf))
        if best not in ranks:
            break
        out, i = [], 0
        while i < len(symbols):
            if i + 1 < len(symbols) and (symbols[i], symbols[i + 1]) == best:
                out.append(symbols[i] + symbols[i + 1])
                i += 2
            else:
                out.append(symbols[i])
                i += 1
        symbols = out
    return symbols


def bytelevel_tokenizer_json(vocab, merges, specials, bos):
    """A HF tokenizer.json for a GPT-2-style byte-level BPE: vocab {token: id} (specials included), merges
    [(a, b)] in rank order, specials [names] as added special tokens, bos (a name or None) prepended by the
    post-processor. Pre-tokenizer: Split on the GPT-2 regex, then ByteLevel without its own regex."""
    by_name = {s: vocab[s] for s in specials}
    tj = {
        "version": "1.0", "truncation": None, "padding": None,
        "added_tokens": [{"id": by_name[s], "content": s, "single_word": False, "lstrip": False, "rstrip": False,
                          "normalized": False, "special": True} for s in specials],
        "normalizer": None,
        "pre_tokenizer": {"type": "Sequence", "pretokenizers": [
            {"type": "Split", "pattern": {"Regex": GPT2_PATTERN}, "behavior": "Isolated", "invert": False},
            {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": False}]},
        "post_processor": None,
        "decoder": {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": True, "use_regex": True},
        "model": {"type": "BPE", "dropout": None, "unk_token": None, "continuing_subword_prefix": None,
                  "end_of_word_suffix": None, "fuse_unk": False, "byte_fallback": False, "ignore_merges": False,
                  "vocab": dict(sorted(vocab.items(), key=lambda kv: kv[1])),
                  "merges": [f"{a} {b}" for a, b in merges]},
    }
    if bos is not None:
        tj["post_processor"] = {
            "type": "TemplateProcessing",
            "single": [{"SpecialToken": {"id": bos, "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}}],
            "pair": [{"SpecialToken": {"id": bos, "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}},
                     {"SpecialToken": {"id": bos, "type_id": 1}}, {"Sequence": {"id": "B", "type_id": 1}}],
            "special_tokens": {bos: {"id": bos, "ids": [by_name[bos]], "tokens": [bos]}},
        }
    return tj


class Tokenizer:
    """Encoder/decoder for the two tokenizer.json families Lathe supports."""

    def __init__(self, path):
        with open(path, encoding="utf-8") as f:
            self.json = tj = json.load(f)
        model = tj["model"]
        if model["type"] != "BPE":
            raise ValueError(f"{path}: tokenizer model {model['type']} unsupported (BPE)")
        self.vocab = dict(model["vocab"])
        for t in tj.get("added_tokens", []):
            self.vocab[t["content"]] = t["id"]
        self.id_to_token = {i: s for s, i in self.vocab.items()}
        self.special = {t["content"]: t["id"] for t in tj.get("added_tokens", []) if t.get("special")}
        merges = [tuple(m.split(" ", 1)) if isinstance(m, str) else tuple(m) for m in model["merges"]]
        self.ranks = {m: i for i, m in enumerate(merges)}
        self.byte_level = (tj.get("decoder") or {}).get("type") == "ByteLevel"
        self.byte_fallback = bool(model.get("byte_fallback"))
        self.b2u = bytes_to_unicode()
        self.u2b = {c: b for b, c in self.b2u.items()}
        self.bos_id = None
        single = (tj.get("post_processor") or {}).get("single") or []
        if single and "SpecialToken" in single[0]:
            self.bos_id = self.vocab[single[0]["SpecialToken"]["id"]]

    def encode(self, text, add_bos=True):
        """Token ids of text; special token strings in the text become their ids; a BOS is prepended when
        the post-processor asks for one and add_bos is set."""
        ids = [self.bos_id] if add_bos and self.bos_id is not None else []
        if self.special:
            pieces = re.split("(" + "|".join(map(re.escape, self.special)) + ")", text)
        else:
            pieces = [text]
        for piece in pieces:
            if piece in self.special:
                ids.append(self.special[piece])
            elif piece:
                ids += self._encode_bytelevel(piece) if self.byte_level else self._encode_sentencepiece(piece)
        return ids

    def _encode_bytelevel(self, text):
        ids = []
        for word in re.findall(GPT2_PATTERN_PY, text):
            syms = bpe_merge([self.b2u[b] for b in word.encode("utf-8")], self.ranks)
            ids += [self.vocab[s] for s in syms]
        return ids

    def _encode_sentencepiece(self, text):
        text = "▁" + text.replace(" ", "▁")
        syms = []
        for ch in text:
            if ch in self.vocab:
                syms.append(ch)
            elif self.byte_fallback:
                syms += [f"<0x{b:02X}>" for b in ch.encode("utf-8")]
            else:
                syms.append(self.json["model"]["unk_token"])
        return [self.vocab[s] for s in bpe_merge(syms, self.ranks)]

    def decode(self, ids, skip_special=True):
        """Text of token ids (invalid UTF-8 becomes U+FFFD); special tokens dropped when skip_special."""
        out = bytearray()
        for i in ids:
            tok = self.id_to_token[i]
            if tok in self.special:
                if not skip_special:
                    out += tok.encode("utf-8")
            elif self.byte_level:
                out += bytes(self.u2b[c] for c in tok)
            elif re.fullmatch(r"<0x[0-9A-F]{2}>", tok):
                out.append(int(tok[3:5], 16))
            else:
                out += tok.replace("▁", " ").encode("utf-8")
        text = out.decode("utf-8", errors="replace")
        if not self.byte_level and text.startswith(" "):
            text = text[1:]  # the SentencePiece decoder strips the space the normaliser prepended
        return text


# ---------------------------------------------------------------------------------------------------------
# Generation (full recompute per step: the reference favours obviousness over speed).

@torch.no_grad()
def generate(model, ids, max_tokens, temperature=0.0, top_k=0, top_p=1.0, seed=0, eos_id=None):
    """Continues one prompt (list of ids); returns the new ids. temperature 0 is greedy (argmax, lowest id on
    ties); else softmax(logits / T) restricted to the top_k and then to the smallest top_p nucleus."""
    gen = torch.Generator().manual_seed(seed)
    ids = list(ids)
    ctx = model.cfg.get("max_position_embeddings", 1 << 30)
    new = []
    for _ in range(max_tokens):
        logits = model(torch.tensor([ids[-ctx:]]))[0, -1].double()
        if temperature <= 0:
            tok = int(torch.argmax(logits))
        else:
            probs = (logits / temperature).softmax(-1)
            order = torch.argsort(probs, descending=True)
            p = probs[order]
            if top_k > 0:
                p[top_k:] = 0
            keep = (p.cumsum(0) - p) < top_p
            p = torch.where(keep, p, torch.zeros_like(p))
            tok = int(order[torch.multinomial(p / p.sum(), 1, generator=gen)])
        new.append(tok)
        ids.append(tok)
        if tok == eos_id:
            break
    return new


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("command", choices=["generate", "logits"])
    ap.add_argument("--model", required=True)
    ap.add_argument("--prompt")
    ap.add_argument("--tokens", help="comma-separated ids, used as is (no BOS added)")
    ap.add_argument("--max-tokens", type=int, default=32)
    ap.add_argument("--temperature", type=float, default=0.0)
    ap.add_argument("--top-k", type=int, default=0)
    ap.add_argument("--top-p", type=float, default=1.0)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--dtype", choices=["f32", "f64"], default="f32")
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args()
    model = load_hf(a.model, torch.float64 if a.dtype == "f64" else torch.float32)
    tok = Tokenizer(os.path.join(a.model, "tokenizer.json"))
    ids = [int(x) for x in a.tokens.split(",")] if a.tokens else tok.encode(a.prompt or "")
    if a.command == "logits":
        logits = model(torch.tensor([ids]))[0, -1]
        top = torch.topk(logits, 5)
        for v, i in zip(top.values.tolist(), top.indices.tolist()):
            print(f"{i:6d} {v:+.6f} {tok.decode([i])!r}")
        return
    new = generate(model, ids, a.max_tokens, a.temperature, a.top_k, a.top_p, a.seed, model.cfg.get("eos_token_id"))
    text = tok.decode(new)
    if a.json:
        print(json.dumps({"prompt": a.prompt, "prompt_tokens": ids, "text": text, "tokens": new}))
    else:
        print(tok.decode(ids + new))


if __name__ == "__main__":
    main()
