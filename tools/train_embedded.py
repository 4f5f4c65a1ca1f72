#!/usr/bin/env python3
"""Trains Lathe's embedded default models on the King James Bible and writes them as HF folders.

  nice -n 19 /usr/bin/python3 tools/train_embedded.py --model llama --steps N [--seed 1234] [--out models]
  nice -n 19 /usr/bin/python3 tools/train_embedded.py --model moe --steps N [--seed 1234] [--out models]

Corpus: the KJV text of Debian's bible-kjv-text package (public domain), printed by the `bible` program of the
bible-kjv package (scripts/deps.sh installs both with LATHE_TOOLS_DEPS=1). Each line "Ge1:1 In the beginning ..."
loses its reference; verses of a chapter are joined with newlines, and each chapter becomes
<|bos|> text <|eos|>. The last 3% of verses (933, from Hebrews 10 on) are held out for evaluation.

The tool trains a GPT-2-style byte-level BPE tokenizer (1024 tokens: <|bos|>, <|eos|>, <|pad|>, 256 bytes,
765 merges) on the training verses, then a small LLaMA or Mixtral-style MoE with AdamW and a cosine
schedule on random 128-token windows, reports held-out perplexity and sample generations, and writes
<out>/lathe-kjv-llama or <out>/lathe-kjv-moe with a README.md holding the recipe. Deterministic given the seed
and the thread count. The default is one thread: on the shared 2-core build machine two threads ran a training
step 5-10x slower than one whenever other jobs were busy (the OpenMP workers spin-wait for each other).
"""
import argparse
import collections
import json
import math
import os
import re
import subprocess
import sys
import time

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import lathe_ref as ref  # noqa: E402

SPECIALS = ["<|bos|>", "<|eos|>", "<|pad|>"]
VOCAB_SIZE = 1024
CONTEXT = 128
HELD_OUT = 0.03
VERSES = 31102

COMMON = {"vocab_size": VOCAB_SIZE, "hidden_size": 128, "num_hidden_layers": 4, "num_attention_heads": 4,
          "num_key_value_heads": 2, "rms_norm_eps": 1e-5, "rope_theta": 10000.0, "hidden_act": "silu",
          "max_position_embeddings": CONTEXT, "tie_word_embeddings": False, "bos_token_id": 0, "eos_token_id": 1,
          "pad_token_id": 2, "attention_bias": False, "mlp_bias": False, "initializer_range": 0.02}
MODELS = {
    "llama": {"dir": "lathe-kjv-llama", "lr": 3e-3,
              "cfg": dict(COMMON, architectures=["LlamaForCausalLM"], model_type="llama", intermediate_size=352)},
    "moe": {"dir": "lathe-kjv-moe", "lr": 3e-3,
            "cfg": dict(COMMON, architectures=["MixtralForCausalLM"], model_type="mixtral", intermediate_size=192,
                        num_local_experts=4, num_experts_per_tok=2, router_aux_loss_coef=0.02,
                        output_router_logits=False)},
}
PROMPTS = ["In the beginning", "And the LORD said unto Moses,", "Blessed are the", "The LORD is my shepherd;"]


def log(msg):
    print(time.strftime("%H:%M:%S"), msg, flush=True)


# ---------------------------------------------------------------------------------------------------------
# Corpus.

def read_kjv():
    """Returns [(book, chapter, text)] for all 31,102 verses, in canonical order."""
    out = subprocess.run(["bible", "-f", "Gen1:1-Rev22:21"], check=True, capture_output=True).stdout
    verses = []
    for line in out.decode("ascii").splitlines():
        m = re.fullmatch(r"(\d?[A-Za-z]+)(\d+):(\d+) (.+)", line)
        if not m:
            raise ValueError(f"unexpected line from bible: {line!r}")
        verses.append((m.group(1), int(m.group(2)), m.group(4).strip()))
    if len(verses) != VERSES:
        raise ValueError(f"bible printed {len(verses)} verses, expected {VERSES}")
    return verses


def chapters(verses):
    """Groups consecutive verses of the same chapter: [text of the chapter, verses joined by newlines]."""
    groups = []
    for (book, ch, text), prev in zip(verses, [None] + verses[:-1]):
        if prev is None or (prev[0], prev[1]) != (book, ch):
            groups.append([])
        groups[-1].append(text)
    return ["\n".join(g) for g in groups]


# ---------------------------------------------------------------------------------------------------------
# Byte-level BPE.

def train_bpe(texts, n_merges):
    """GPT-2-style BPE on the words of texts: each step merges the most frequent adjacent pair (ties: the
    lexicographically smallest pair). Returns merges [(a, b)] in rank order."""
    b2u = ref.bytes_to_unicode()
    counts = collections.Counter()
    for t in texts:
        counts.update(re.findall(ref.GPT2_PATTERN_PY, t))
    words = [[b2u[b] for b in w.encode("utf-8")] for w in counts]
    freq = list(counts.values())
    pairs, where = collections.Counter(), collections.defaultdict(set)
    for wi, syms in enumerate(words):
        for p in zip(syms, syms[1:]):
            pairs[p] += freq[wi]
            where[p].add(wi)
    merges = []
    for _ in range(n_merges):
        top = max(pairs.values())
        best = min(p for p, c in pairs.items() if c == top)
        merges.append(best)
        for wi in list(where[best]):
            syms = words[wi]
            for p in zip(syms, syms[1:]):
                pairs[p] -= freq[wi]
            out, i = [], 0
            while i < len(syms):
                if i + 1 < len(syms) and (syms[i], syms[i + 1]) == best:
                    out.append(syms[i] + syms[i + 1])
                    i += 2
                else:
                    out.append(syms[i])
                    i += 1
            words[wi] = out
            for p in zip(out, out[1:]):
                pairs[p] += freq[wi]
                where[p].add(wi)
        for p in [p for p, c in pairs.items() if c <= 0]:
            del pairs[p]
        del where[best]
    return merges


def make_tokenizer(train_texts):
    """tokenizer.json (dict) for the KJV byte-level BPE."""
    b2u = ref.bytes_to_unicode()
    merges = train_bpe(train_texts, VOCAB_SIZE - len(SPECIALS) - 256)
    vocab = {s: i for i, s in enumerate(SPECIALS)}
    for b in range(256):
        vocab[b2u[b]] = len(vocab)
    for a, b in merges:
        vocab[a + b] = len(vocab)
    assert len(vocab) == VOCAB_SIZE
    return ref.bytelevel_tokenizer_json(vocab, merges, SPECIALS, "<|bos|>")


def encode_chapters(tok, texts):
    """One int64 stream: <|bos|> chapter <|eos|> for each chapter; checks that decoding round-trips."""
    bos, eos = tok.vocab["<|bos|>"], tok.vocab["<|eos|>"]
    cache, stream = {}, []
    for text in texts:
        ids = []
        for w in re.findall(ref.GPT2_PATTERN_PY, text):
            if w not in cache:
                cache[w] = tok.encode(w, add_bos=False)
            ids += cache[w]
        if tok.decode(ids) != text:
            raise AssertionError("tokenizer does not round-trip a chapter")
        stream += [bos] + ids + [eos]
    return torch.tensor(stream, dtype=torch.int64)


# ---------------------------------------------------------------------------------------------------------
# Training and evaluation.

def load_balancing_loss(router_logits, n_experts, top_k):
    """Switch-style auxiliary loss, per layer and then averaged: E * sum_e (share of top-k slots routed to e) *
    (mean router probability of e); 2.0 (= top_k) when balanced. transformers' Mixtral computes it once over all
    layers together, which lets one layer starve an expert while another layer compensates."""
    probs = torch.stack(router_logits).softmax(-1)                              # (L, N, E)
    sel = torch.topk(probs, top_k, dim=-1).indices
    slots = F.one_hot(sel, n_experts).float().mean(1)                           # (L, k, E)
    return n_experts * (slots * probs.mean(1)[:, None, :]).sum((1, 2)).mean()


def lr_at(step, steps, peak, warmup):
    """Linear warm-up, then cosine decay to 10% of the peak."""
    if step < warmup:
        return peak * (step + 1) / warmup
    t = (step - warmup) / max(1, steps - warmup)
    return peak * (0.1 + 0.45 * (1 + math.cos(math.pi * t)))


@torch.no_grad()
def evaluate(model, stream, max_chunks=None):
    """Mean NLL per predicted token over consecutive non-overlapping CONTEXT-token chunks, and per-expert
    routing fractions (MoE) as {layer: [fraction of top-k slots per expert]}."""
    n = (len(stream) - 1) // CONTEXT
    if max_chunks:
        n = min(n, max_chunks)
    total, count = 0.0, 0
    routed = None
    for i in range(0, n, 32):
        rows = torch.stack([stream[j * CONTEXT:(j + 1) * CONTEXT + 1] for j in range(i, min(n, i + 32))])
        router = []
        logits = model(rows[:, :-1], router)
        total += float(F.cross_entropy(logits.reshape(-1, logits.shape[-1]), rows[:, 1:].reshape(-1), reduction="sum"))
        count += rows[:, 1:].numel()
        if router:
            k = model.cfg["num_experts_per_tok"]
            hits = torch.stack([F.one_hot(torch.topk(r, k, -1).indices, r.shape[-1]).sum((0, 1)) for r in router])
            routed = hits if routed is None else routed + hits
    fractions = None if routed is None else (routed / routed.sum(-1, keepdim=True)).tolist()
    return total / count, fractions


def samples(model, tok):
    """Greedy and sampled (T 0.8, top-p 0.9, seed 1) continuations of PROMPTS: [(prompt, greedy, sampled)]."""
    out = []
    eos = model.cfg["eos_token_id"]
    for p in PROMPTS:
        ids = tok.encode(p)
        g = tok.decode(ref.generate(model, ids, 48, eos_id=eos))
        s = tok.decode(ref.generate(model, ids, 48, temperature=0.8, top_p=0.9, seed=1, eos_id=eos))
        out.append((p, g, s))
    return out


def train(kind, steps, seed, batch, out_root, threads, cmdline):
    torch.set_num_threads(threads)
    torch.use_deterministic_algorithms(True)
    spec = MODELS[kind]
    t0 = time.time()
    verses = read_kjv()
    n_eval = round(HELD_OUT * len(verses))
    train_verses, eval_verses = verses[:-n_eval], verses[-n_eval:]
    first_eval = eval_verses[0]
    train_texts, eval_texts = chapters(train_verses), chapters(eval_verses)
    log(f"corpus: {len(train_verses)} train verses, {len(eval_verses)} held out from {first_eval[0]}{first_eval[1]}")

    tok_json = make_tokenizer(train_texts)
    folder = os.path.join(out_root, spec["dir"])
    os.makedirs(folder, exist_ok=True)
    tok_path = os.path.join(folder, "tokenizer.json")
    with open(tok_path, "w") as f:
        json.dump(tok_json, f, indent=1, ensure_ascii=False)
    tok = ref.Tokenizer(tok_path)
    train_ids, eval_ids = encode_chapters(tok, train_texts), encode_chapters(tok, eval_texts)
    eval_bytes = sum(len(t) for t in eval_texts)
    log(f"tokenizer: {VOCAB_SIZE} tokens; train {len(train_ids)} tokens, held out {len(eval_ids)} tokens "
        f"({eval_bytes} bytes) [{time.time() - t0:.0f}s]")

    cfg = spec["cfg"]
    model = ref.CausalLM(cfg)
    ref.init_weights(model, torch.Generator().manual_seed(seed), std=cfg["initializer_range"])
    n_params = sum(p.numel() for p in model.parameters())
    decay = [p for n, p in model.named_parameters() if p.dim() == 2]
    no_decay = [p for n, p in model.named_parameters() if p.dim() < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.1}, {"params": no_decay, "weight_decay": 0.0}],
                            lr=spec["lr"], betas=(0.9, 0.95), eps=1e-8)
    rng = np.random.RandomState(seed)
    warmup = max(1, steps // 50)
    moe = ref.is_moe(cfg)
    log(f"{kind}: {n_params} parameters, {steps} steps of {batch}x{CONTEXT} tokens, peak lr {spec['lr']}")
    t_train = time.time()
    model.train()
    for step in range(steps):
        starts = rng.randint(0, len(train_ids) - CONTEXT - 1, size=batch)
        rows = torch.stack([train_ids[s:s + CONTEXT + 1] for s in starts])
        router = [] if moe else None
        logits = model(rows[:, :-1], router)
        loss = F.cross_entropy(logits.reshape(-1, VOCAB_SIZE), rows[:, 1:].reshape(-1))
        aux = load_balancing_loss(router, cfg["num_local_experts"], cfg["num_experts_per_tok"]) if moe else None
        total = loss + cfg["router_aux_loss_coef"] * aux if moe else loss
        for g in opt.param_groups:
            g["lr"] = lr_at(step, steps, spec["lr"], warmup)
        opt.zero_grad(set_to_none=True)
        total.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        if step % 50 == 0 or step == steps - 1:
            el = time.time() - t_train
            msg = f"step {step:5d}/{steps} loss {loss.item():.4f}" + (f" aux {aux.item():.4f}" if moe else "")
            log(f"{msg} lr {opt.param_groups[0]['lr']:.2e} {el:.0f}s ({(step + 1) * batch * CONTEXT / el:.0f} tok/s)")
        if step > 0 and step % 500 == 0:
            model.eval()
            nll, routing = evaluate(model, eval_ids)
            shares = "" if routing is None else \
                " expert shares " + " | ".join(" ".join(f"{x:.2f}" for x in row) for row in routing)
            log(f"step {step}: held-out ppl {math.exp(nll):.2f}{shares}")
            model.train()
    train_s = time.time() - t_train
    model.eval()

    nll, routing = evaluate(model, eval_ids)
    train_nll, _ = evaluate(model, train_ids, max_chunks=len(eval_ids) // CONTEXT)
    ppl, bpb = math.exp(nll), nll * ((len(eval_ids) - 1) // CONTEXT * CONTEXT) / math.log(2) / eval_bytes
    log(f"held-out: nll {nll:.4f} ppl {ppl:.2f}; train sample ppl {math.exp(train_nll):.2f}")
    gens = samples(model, tok)
    for p, g, s in gens:
        log(f"greedy  {p!r} -> {g!r}")
        log(f"sampled {p!r} -> {s!r}")
    results = {"kind": kind, "seed": seed, "steps": steps, "batch": batch, "context": CONTEXT,
               "parameters": n_params, "train_tokens": len(train_ids), "held_out_tokens": len(eval_ids),
               "held_out_nll": nll, "held_out_ppl": ppl, "train_sample_ppl": math.exp(train_nll),
               "train_seconds": train_s, "threads": threads, "expert_fractions": routing,
               "samples": [{"prompt": p, "greedy": g, "sampled": s} for p, g, s in gens]}
    readme = make_readme(kind, spec, results, cmdline, first_eval, n_eval, bpb)
    ref.save_hf(folder, model, tok_json, torch.float32, extra_files={"README.md": readme})
    with open(os.path.join(folder, "training.json"), "w") as f:
        json.dump(results, f, indent=1)
        f.write("\n")
    log(f"wrote {folder} [{time.time() - t0:.0f}s total]")


def make_readme(kind, spec, r, cmdline, first_eval, n_eval, bpb):
    cfg = spec["cfg"]
    arch = (f"Mixtral-style MoE: hidden {cfg['hidden_size']}, {cfg['num_hidden_layers']} blocks, "
            f"{cfg['num_attention_heads']} heads / {cfg['num_key_value_heads']} KV heads, "
            f"{cfg['num_local_experts']} SwiGLU experts of width {cfg['intermediate_size']}, top-"
            f"{cfg['num_experts_per_tok']} routing (renormalised), per-layer load-balancing loss x{cfg['router_aux_loss_coef']}"
            if kind == "moe" else
            f"LLaMA: hidden {cfg['hidden_size']}, {cfg['num_hidden_layers']} blocks, {cfg['num_attention_heads']} "
            f"heads / {cfg['num_key_value_heads']} KV heads, SwiGLU width {cfg['intermediate_size']}")
    lines = [
        f"# {spec['dir']}: Lathe's embedded default {'MoE' if kind == 'moe' else 'LLaMA'} model",
        "",
        "A small model trained by the Lathe project on the King James Version of the Bible. It writes",
        "recognisable KJV-style English and is the default for `make demo` and for the steering, tuning and",
        "compression tests. It is not a useful language model beyond that.",
        "",
        "## Model",
        f"- {arch}; untied output head; vocabulary {cfg['vocab_size']}; context {CONTEXT}; RoPE theta "
        f"{cfg['rope_theta']:.0f}; RMSNorm eps {cfg['rms_norm_eps']}; f32 weights; {r['parameters']:,} parameters.",
        "- Tokenizer: byte-level BPE (GPT-2 byte map and pre-tokenizer regex) trained on the training verses;",
        "  ids 0 `<|bos|>`, 1 `<|eos|>`, 2 `<|pad|>`, 3..258 the 256 bytes, then 765 merges. The post-processor",
        "  prepends `<|bos|>`. Training text: each chapter as `<|bos|>` verses joined by newlines `<|eos|>`.",
        "",
        "## Training recipe",
        f"- Command (from the repository root): `{cmdline}`",
        f"- Seed {r['seed']}; {r['steps']} steps of {r['batch']} random {CONTEXT}-token windows "
        f"({r['steps'] * r['batch'] * CONTEXT / 1e6:.1f}M tokens, {r['steps'] * r['batch'] * CONTEXT / r['train_tokens']:.1f} "
        f"epochs of {r['train_tokens']:,} training tokens).",
        f"- AdamW (betas 0.9/0.95, weight decay 0.1 on matrices), peak lr {spec['lr']}, linear warm-up "
        f"{max(1, r['steps'] // 50)} steps, cosine decay to 10%, gradient clip 1.0; init N(0, 0.02), output "
        "projections scaled by 1/sqrt(2 x blocks).",
        f"- Time: {r['train_seconds'] / 60:.1f} min on {r['threads']} CPU thread(s) (Debian python3-torch 1.13, shared "
        "machine, nice 19). Deterministic given the seed and thread count.",
        "",
        "## Evaluation",
        f"- Held out: the last {n_eval} verses (3%, from {first_eval[0]}{first_eval[1]} to Rev22:21), "
        f"{r['held_out_tokens']:,} tokens.",
        f"- Held-out perplexity per token: **{r['held_out_ppl']:.2f}** (mean NLL {r['held_out_nll']:.4f} nats; "
        f"{bpb:.3f} bits per byte), over non-overlapping {CONTEXT}-token windows. Same measure on an equal-size "
        f"sample of training text: {r['train_sample_ppl']:.2f}.",
    ]
    if r["expert_fractions"]:
        fr = "; ".join(f"layer {i}: " + " ".join(f"{x:.2f}" for x in row) for i, row in enumerate(r["expert_fractions"]))
        lines.append(f"- Share of top-2 routing slots per expert on held-out text: {fr}.")
    lines += ["", "## Samples (48 new tokens, BOS + prompt)", ""]
    for s in r["samples"]:
        lines.append(f"- `{s['prompt']}` greedy: {json.dumps(s['greedy'])}")
        lines.append(f"  - sampled (T 0.8, top-p 0.9, seed 1): {json.dumps(s['sampled'])}")
    lines += [
        "",
        "## Licence",
        "- Corpus: the King James Version text from Debian's `bible-kjv-text` package, printed with `bible -f",
        "  \"Gen1:1-Rev22:21\"` from `bible-kjv`. The KJV text is in the public domain (in the United Kingdom the",
        "  Crown's letters patent still govern printing it).",
        "- Weights and tokenizer: made by the Lathe project with `tools/train_embedded.py`; they carry the",
        "  project's licence.",
        "- `training.json` holds the same figures in machine-readable form.",
        "",
    ]
    return "\n".join(lines)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", choices=sorted(MODELS), required=True)
    ap.add_argument("--steps", type=int, required=True)
    ap.add_argument("--seed", type=int, default=1234)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", default="models")
    a = ap.parse_args()
    cmdline = ("nice -n 19 /usr/bin/python3 tools/train_embedded.py "
               f"--model {a.model} --steps {a.steps} --seed {a.seed} --batch {a.batch} --threads {a.threads} --out {a.out}")
    train(a.model, a.steps, a.seed, a.batch, a.out, a.threads, cmdline)


if __name__ == "__main__":
    main()
