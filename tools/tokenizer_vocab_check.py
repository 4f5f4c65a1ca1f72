#!/usr/bin/env python3
"""Checks `lathe tokenize` against reference token ids: llama.cpp's tokenizer test set, whose expected ids were
written by the Hugging Face tokenizers of each model family (whitespace runs, digits, accents, emoji, CJK, code).

Usage: /usr/bin/python3 tools/tokenizer_vocab_check.py BUILD_BIN LLAMA_SRC [NAME ...]
  BUILD_BIN  the folder holding `lathe`
  LLAMA_SRC  a llama.cpp checkout kept outside this repository: its models/ggml-vocab-NAME.gguf (vocabulary-only
             GGUF files), .gguf.inp (test strings separated by a __ggml_vocab_test__ line) and .gguf.out (the ids,
             one line per test, without BOS) are read there, never copied here.
  NAME       the vocabularies to check (default: every one whose three files are there)
Prints, per vocabulary, its tokenizer.ggml.pre and how many tests give exactly the reference ids (a tokenizer model
Lathe refuses, such as BERT's WordPiece, is listed as refused); exits 1 when any differs. Nothing of llama.cpp is
built or run."""
import glob
import json
import os
import struct
import subprocess
import sys

SEP = "\n__ggml_vocab_test__\n"


def tests(inp, out):
    """The test strings of a .inp file and the id lists of its .out file."""
    raw = open(inp, encoding="utf-8").read()
    strings = []
    pos = 0
    while pos < len(raw):
        nxt = raw.find(SEP, pos)
        if nxt < 0:
            strings.append(raw[pos:])
            break
        strings.append(raw[pos:nxt])
        pos = nxt + len(SEP)
    ids = [[int(x) for x in line.split()] for line in open(out, encoding="utf-8").read().split("\n")]
    return strings, ids[: len(strings)]


def gguf_str(path, want):
    """The string value of key `want` in a GGUF file's header ("(none)" when absent)."""
    with open(path, "rb") as f:
        data = f.read(1 << 24)
    if data[:4] != b"GGUF":
        return "?"
    sizes = {0: 1, 1: 1, 2: 2, 3: 2, 4: 4, 5: 4, 6: 4, 7: 1, 10: 8, 11: 8, 12: 8}

    def string(at):
        n = struct.unpack_from("<Q", data, at)[0]
        return data[at + 8 : at + 8 + n].decode("utf-8", "replace"), at + 8 + n

    def skip(t, at):
        if t == 8:
            return string(at)[1]
        if t == 9:
            et, n = struct.unpack_from("<IQ", data, at)
            at += 12
            for _ in range(n):
                at = skip(et, at)
            return at
        return at + sizes[t]

    at = 24
    for _ in range(struct.unpack_from("<Q", data, 16)[0]):
        key, at = string(at)
        t = struct.unpack_from("<I", data, at)[0]
        at += 4
        if key == want and t == 8:
            return string(at)[0]
        at = skip(t, at)
    return "(none)"


def main():
    if len(sys.argv) < 3:
        print(__doc__)
        return 2
    lathe = os.path.join(sys.argv[1], "lathe")
    models = os.path.join(sys.argv[2], "models")
    names = sys.argv[3:] or sorted(
        os.path.basename(p)[len("ggml-vocab-") : -len(".gguf")]
        for p in glob.glob(os.path.join(models, "ggml-vocab-*.gguf"))
        if os.path.exists(p + ".inp") and os.path.exists(p + ".out")
    )
    bad = 0
    for name in names:
        gguf = os.path.join(models, "ggml-vocab-%s.gguf" % name)
        strings, want = tests(gguf + ".inp", gguf + ".out")
        ok, fails = 0, []
        for text, ids in zip(strings, want):
            r = subprocess.run([lathe, "tokenize", "--model", gguf, "--text", text, "--json"], capture_output=True)
            if r.returncode == 0:
                line = r.stdout.decode().strip().split("\n")[0]
                got = json.loads(line)["ids"] if line else []
            else:
                got = "exit %d: %s" % (r.returncode, r.stderr.decode().strip()[:300])
            if got == ids:
                ok += 1
            else:
                fails.append((text, ids, got))
        kind = gguf_str(gguf, "tokenizer.ggml.model")
        pre = gguf_str(gguf, "tokenizer.ggml.pre")
        if not ok and all(isinstance(g, str) and "is not supported" in g for _, _, g in fails):
            # A tokenizer model Lathe does not have (WordPiece: embedding models) is refused by name, not guessed.
            print("%-16s %-6s refused: %s" % (name, kind, fails[0][2].split(": ", 1)[-1]))
            continue
        bad += len(fails)
        print("%-16s %-6s pre %-16s %3d / %3d tests give the reference ids" % (name, kind, pre, ok, len(strings)))
        for text, ids, got in fails[:3]:
            print("    %r\n      want %s\n      got  %s" % (text, ids, got))
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
