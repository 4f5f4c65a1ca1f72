#!/usr/bin/env python3
"""Writes the seed corpus of fuzz/fuzz_files.c into fuzz/corpus-files/: each file is one selector byte (which parser)
followed by a small valid input for that parser, taken from the test fixtures or built here.

  /usr/bin/python3 tools/fuzz_corpus.py
"""
import glob
import json
import os
import struct

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
OUT = os.path.join(ROOT, "fuzz", "corpus-files")
FIX = os.path.join(ROOT, "tests", "fixtures")


def put(name, selector, payload):
    with open(os.path.join(OUT, name), "wb") as f:
        f.write(bytes([selector]) + payload)


def safetensors():
    header = {"w": {"dtype": "F32", "shape": [2, 2], "data_offsets": [0, 16]},
              "b": {"dtype": "F16", "shape": [2], "data_offsets": [16, 20]}, "__metadata__": {"format": "pt"}}
    h = json.dumps(header).encode()
    h += b" " * (-len(h) % 8)
    return struct.pack("<Q", len(h)) + h + struct.pack("<4f", 1, 2, 3, 4) + struct.pack("<2e", 0.5, -1)


def gguf():
    def s(x):
        b = x.encode()
        return struct.pack("<Q", len(b)) + b
    kv = [s("general.architecture") + struct.pack("<I", 8) + s("llama"),
          s("llama.context_length") + struct.pack("<II", 4, 128),
          s("llama.embedding_length") + struct.pack("<II", 4, 8),
          s("llama.block_count") + struct.pack("<II", 4, 1),
          s("llama.feed_forward_length") + struct.pack("<II", 4, 16),
          s("llama.attention.head_count") + struct.pack("<II", 4, 2),
          s("llama.attention.head_count_kv") + struct.pack("<II", 4, 2),
          s("llama.attention.layer_norm_rms_epsilon") + struct.pack("<If", 6, 1e-5),
          s("tokenizer.ggml.tokens") + struct.pack("<IIQ", 9, 8, 2) + s("a") + s("b")]
    tensors = s("token_embd.weight") + struct.pack("<I", 2) + struct.pack("<QQ", 8, 2) + struct.pack("<IQ", 0, 0)
    body = b"GGUF" + struct.pack("<IQQ", 3, 1, len(kv)) + b"".join(kv) + tensors
    body += b"\0" * (-len(body) % 32)
    return body + struct.pack("<16f", *range(16))


def main():
    os.makedirs(OUT, exist_ok=True)
    put("safetensors-tiny", 0, safetensors())
    put("gguf-tiny", 1, gguf())
    put("tokenizer-llama-tiny", 2, open(os.path.join(FIX, "llama-tiny", "tokenizer.json"), "rb").read())
    put("config-llama-tiny", 3, open(os.path.join(FIX, "llama-tiny", "config.json"), "rb").read())
    put("config-mixtral-tiny", 3, open(os.path.join(FIX, "mixtral-tiny", "config.json"), "rb").read())
    for path in sorted(glob.glob(os.path.join(FIX, "chat", "*", "tokenizer_config.json"))):
        tmpl = json.load(open(path)).get("chat_template")
        if isinstance(tmpl, list):
            tmpl = tmpl[0]["template"]
        put("chat-" + os.path.basename(os.path.dirname(path)), 4, tmpl.encode())
    rows = [{"text": "In the beginning"}, {"prompt": "ab", "completion": "ba"}, {"prompt": "", "completion": "a"}]
    put("jsonl-rows", 5, ("\n".join(json.dumps(r) for r in rows) + "\n\n[1, 2]\n").encode())


if __name__ == "__main__":
    main()
