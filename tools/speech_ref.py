#!/usr/bin/env python3
"""Lathe's PyTorch reference for the speech encoder and connector (engine/model/speech.c), and the maker of the
tests/fixtures/speech-tiny fixture.

A tool, never used at run time. The encoder is Whisper's (openai/whisper's AudioEncoder, Hugging Face's
WhisperEncoder), on features [T, n_mels] with time as rows:
  h = gelu(conv1(x))                kernel 3, padding 1                    -> [T, d]
  h = gelu(conv2(h))                kernel 3, stride 2, padding 1          -> [T2, d], T2 = (T - 1) // 2 + 1
  h = h + positions[:T2]            sinusoids(max_positions, d), fixed
  per block: h = h + out_proj(attn(q_proj(ln1(h)), k_proj(ln1(h)), v_proj(ln1(h))))   bidirectional, no k bias,
                                                                                       scores scaled by hd^-0.5
             h = h + fc2(gelu(fc1(ln2(h))))
  enc = layer_norm(h)
gelu is the exact (erf) one; LayerNorm eps 1e-5. The connector stacks `stack` consecutive frames (the last group
zero-padded) and projects them into the LLM's embedding space:
  out = proj2(gelu(proj1(stack(enc))))                                        -> [ceil(T2 / stack), llm_hidden]
Tensor names follow Hugging Face's Whisper (encoder.conv1.weight [d, n_mels, 3], encoder.layers.0.self_attn.q_proj,
encoder.layers.0.fc1, ..., encoder.layer_norm) plus connector.proj1 and connector.proj2.

Usage: speech_ref.py OUT_DIR    writes config.json, model.safetensors (random weights, fixed seed) and
                                ref.safetensors: the input "x" [T, n_mels], the probe "r", the encoder output
                                "enc", the connector output "out" and "grad.<name>" of every trained tensor for the
                                loss sum(out * r), all computed in float64 and stored as float32.
"""
import json
import math
import os
import sys

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from logmel_ref import write_safetensors  # noqa: E402  (float32 from numpy arrays)

torch.set_default_dtype(torch.float64)

CFG = {"architectures": ["LatheSpeechModel"], "llm": "",
       "encoder": {"num_mel_bins": 80, "d_model": 32, "encoder_layers": 2, "encoder_attention_heads": 4,
                   "encoder_ffn_dim": 64, "max_source_positions": 32, "layer_norm_eps": 1e-5},
       "connector": {"type": "stack-mlp", "stack": 2, "hidden": 48, "llm_hidden": 24}}
T = 41


def sinusoids(length, channels, max_timescale=10000):
    inc = math.log(max_timescale) / (channels // 2 - 1)
    inv = torch.exp(-inc * torch.arange(channels // 2))
    t = torch.arange(length)[:, None] * inv[None, :]
    return torch.cat([torch.sin(t), torch.cos(t)], dim=1)


def make_weights(cfg, gen):
    e, c = cfg["encoder"], cfg["connector"]
    d, m, f, L = e["d_model"], e["num_mel_bins"], e["encoder_ffn_dim"], e["encoder_layers"]
    w = {}

    def lin(name, out, inp, bias=True):
        b = 1 / math.sqrt(inp)
        w[name + ".weight"] = (torch.rand(out, inp, generator=gen) * 2 - 1) * b
        if bias:
            w[name + ".bias"] = (torch.rand(out, generator=gen) * 2 - 1) * b

    def ln(name, n):
        w[name + ".weight"] = 1 + 0.2 * (torch.rand(n, generator=gen) * 2 - 1)
        w[name + ".bias"] = 0.2 * (torch.rand(n, generator=gen) * 2 - 1)

    b1, b2 = 1 / math.sqrt(3 * m), 1 / math.sqrt(3 * d)
    w["encoder.conv1.weight"] = (torch.rand(d, m, 3, generator=gen) * 2 - 1) * b1
    w["encoder.conv1.bias"] = (torch.rand(d, generator=gen) * 2 - 1) * b1
    w["encoder.conv2.weight"] = (torch.rand(d, d, 3, generator=gen) * 2 - 1) * b2
    w["encoder.conv2.bias"] = (torch.rand(d, generator=gen) * 2 - 1) * b2
    w["encoder.embed_positions.weight"] = sinusoids(e["max_source_positions"], d)
    for i in range(L):
        p = f"encoder.layers.{i}."
        ln(p + "self_attn_layer_norm", d)
        lin(p + "self_attn.q_proj", d, d)
        lin(p + "self_attn.k_proj", d, d, bias=False)
        lin(p + "self_attn.v_proj", d, d)
        lin(p + "self_attn.out_proj", d, d)
        ln(p + "final_layer_norm", d)
        lin(p + "fc1", f, d)
        lin(p + "fc2", d, f)
    ln("encoder.layer_norm", d)
    lin("connector.proj1", c["hidden"], c["stack"] * d)
    lin("connector.proj2", c["llm_hidden"], c["hidden"])
    return w


def forward(cfg, w, x):
    """x [T, n_mels] -> (enc [T2, d], out [T3, llm_hidden])."""
    e, c = cfg["encoder"], cfg["connector"]
    d, H, eps = e["d_model"], e["encoder_attention_heads"], e["layer_norm_eps"]
    h = F.gelu(F.conv1d(x.T[None], w["encoder.conv1.weight"], w["encoder.conv1.bias"], padding=1))
    h = F.gelu(F.conv1d(h, w["encoder.conv2.weight"], w["encoder.conv2.bias"], stride=2, padding=1))[0].T
    T2 = h.shape[0]
    h = h + w["encoder.embed_positions.weight"][:T2]
    hd = d // H
    for i in range(e["encoder_layers"]):
        p = f"encoder.layers.{i}."
        a = F.layer_norm(h, (d,), w[p + "self_attn_layer_norm.weight"], w[p + "self_attn_layer_norm.bias"], eps)
        q = F.linear(a, w[p + "self_attn.q_proj.weight"], w[p + "self_attn.q_proj.bias"]).view(T2, H, hd)
        k = F.linear(a, w[p + "self_attn.k_proj.weight"]).view(T2, H, hd)
        v = F.linear(a, w[p + "self_attn.v_proj.weight"], w[p + "self_attn.v_proj.bias"]).view(T2, H, hd)
        s = torch.einsum("thd,jhd->htj", q, k) * hd ** -0.5
        o = torch.einsum("htj,jhd->thd", torch.softmax(s, dim=-1), v).reshape(T2, d)
        h = h + F.linear(o, w[p + "self_attn.out_proj.weight"], w[p + "self_attn.out_proj.bias"])
        a = F.layer_norm(h, (d,), w[p + "final_layer_norm.weight"], w[p + "final_layer_norm.bias"], eps)
        h = h + F.linear(F.gelu(F.linear(a, w[p + "fc1.weight"], w[p + "fc1.bias"])), w[p + "fc2.weight"],
                         w[p + "fc2.bias"])
    enc = F.layer_norm(h, (d,), w["encoder.layer_norm.weight"], w["encoder.layer_norm.bias"], eps)
    S = c["stack"]
    T3 = (T2 + S - 1) // S
    st = torch.cat([enc, torch.zeros(T3 * S - T2, d)]).reshape(T3, S * d)
    z = F.gelu(F.linear(st, w["connector.proj1.weight"], w["connector.proj1.bias"]))
    return enc, F.linear(z, w["connector.proj2.weight"], w["connector.proj2.bias"])


def main():
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    out = sys.argv[1]
    os.makedirs(out, exist_ok=True)
    gen = torch.Generator().manual_seed(19)
    w = make_weights(CFG, gen)
    # Round the weights to float32 first: the engine reads the float32 file, so both start from the same values.
    w = {k: v.to(torch.float32).to(torch.float64) for k, v in w.items()}
    x = (torch.rand(T, CFG["encoder"]["num_mel_bins"], generator=gen) * 2 - 1).to(torch.float32).to(torch.float64)
    params = {k: v.clone().requires_grad_(k != "encoder.embed_positions.weight") for k, v in w.items()}
    enc, o = forward(CFG, params, x)
    r = (torch.rand(o.shape, generator=gen) * 2 - 1).to(torch.float32).to(torch.float64)
    (o * r).sum().backward()
    with open(os.path.join(out, "config.json"), "w") as f:
        json.dump(CFG, f, indent=2)
        f.write("\n")
    write_safetensors(os.path.join(out, "model.safetensors"), {k: v.numpy() for k, v in w.items()})
    ref = {"x": x, "r": r, "enc": enc, "out": o}
    for k, p in params.items():
        if p.grad is not None:
            ref["grad." + k] = p.grad
    write_safetensors(os.path.join(out, "ref.safetensors"), {k: v.detach().numpy() for k, v in ref.items()})
    print(f"{out}: T {T} -> encoder {tuple(enc.shape)} -> connector {tuple(o.shape)}; "
          f"{sum(v.numel() for v in w.values())} weights")


if __name__ == "__main__":
    main()
