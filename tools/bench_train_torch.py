#!/usr/bin/env python3
"""The PyTorch CPU peer of bench_train: full-parameter training steps (forward, backward, AdamW) of a model in
Hugging Face layout on a given batch, with the masked LM loss Lathe's `tune` uses (tools/lathe_ref.py).

  /usr/bin/python3 tools/bench_train_torch.py MODEL_DIR IDS_FILE N_SEQ T STEPS

IDS_FILE holds N_SEQ * T little-endian int32 token ids. Prints one line: "tokens_per_s <value> loss <first>".
A bench tool only: PyTorch is never used at run time."""
import os
import struct
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import lathe_ref as ref  # noqa: E402


def main():
    model_dir, ids_file, n_seq, T, steps = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
    torch.set_num_threads(int(os.environ.get("LATHE_BENCH_THREADS", "2")))
    data = open(ids_file, "rb").read()
    ids = torch.tensor(struct.unpack(f"<{n_seq * T}i", data), dtype=torch.int64).view(n_seq, T)
    mask = torch.ones(n_seq, T - 1)
    model = ref.load_hf(model_dir, torch.float32).train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    first = None
    for i in range(steps + 1):  # step 0 warms up
        if i == 1:
            t0 = time.perf_counter()
        opt.zero_grad()
        loss = ref.masked_lm_loss(model, ids, mask)
        loss.backward()
        opt.step()
        first = first if first is not None else loss.item()
    dt = time.perf_counter() - t0
    print(f"tokens_per_s {steps * n_seq * T / dt:.1f} loss {first:.6f}")


if __name__ == "__main__":
    main()
