#!/usr/bin/env python3
"""Writes the KJV text as JSONL in the split the embedded models were trained with (tools/train_embedded.py):

  /usr/bin/python3 tools/kjv_jsonl.py OUT_DIR

OUT_DIR/kjv-train.jsonl holds the training chapters and OUT_DIR/kjv-heldout.jsonl the held-out ones (the last 3%
of verses, from Hebrews 10 on), one {"text": chapter} row each: calibration and evaluation data for the compress
job and bench_compress. Needs the `bible` program (bible-kjv, installed by scripts/deps.sh with LATHE_TOOLS_DEPS=1).
"""
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import train_embedded as te  # noqa: E402


def main():
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    out = sys.argv[1]
    os.makedirs(out, exist_ok=True)
    verses = te.read_kjv()
    n_eval = round(te.HELD_OUT * len(verses))
    for name, part in (("kjv-train.jsonl", verses[:-n_eval]), ("kjv-heldout.jsonl", verses[-n_eval:])):
        with open(os.path.join(out, name), "w") as f:
            for text in te.chapters(part):
                f.write(json.dumps({"text": text}) + "\n")
        print(f"wrote {os.path.join(out, name)}")


if __name__ == "__main__":
    main()
