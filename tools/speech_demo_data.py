#!/usr/bin/env python3
"""Synthesised speech for the speech demo (docs/speech.md): short KJV verses spoken by Debian's espeak-ng.

  /usr/bin/python3 tools/speech_demo_data.py OUT_DIR [--train N] [--heldout N]

Verses of 5 to 14 words; training verses from the part of the text the embedded LLM was trained on, held-out ones
from its held-out tail (tools/train_embedded.py's split). Each verse is spoken once, the voice and speed taken in
turn from VOICES (so every voice is in both sets). Writes OUT_DIR/wav/*.wav (espeak-ng's 22,050 Hz 16-bit mono),
OUT_DIR/train.jsonl and OUT_DIR/heldout.jsonl ({"audio": "wav/NAME.wav", "text": verse, "voice", "wpm", "pitch":
espeak-ng's settings}), and the instruction
pools OUT_DIR/instructions-train.txt and OUT_DIR/instructions-heldout.txt. Needs `bible` (bible-kjv) and
espeak-ng (scripts/deps.sh with LATHE_TOOLS_DEPS=1). Deterministic: the same files on every run.
"""
import argparse
import json
import os
import random
import subprocess
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import train_embedded as te  # noqa: E402

# (voice, words per minute, pitch)
VOICES = [("en-us", 165, 50), ("en-gb", 150, 40), ("en-gb-x-rp", 175, 60), ("en-us+f2", 160, 55),
          ("en-029", 155, 45)]
TRAIN_INSTRUCTIONS = ["Continue the verse.", "What comes next?", "Go on from these words.",
                      "Say the words that follow."]
HELDOUT_INSTRUCTIONS = ["Carry on from here.", "Keep going with the passage."]


def short(verses, lo=5, hi=14):
    return [v for v in verses if lo <= len(v[2].split()) <= hi]


def speak(text, voice, wpm, pitch, path):
    subprocess.run(["espeak-ng", "-v", voice, "-s", str(wpm), "-p", str(pitch), "-w", path, text], check=True)


def write_set(out, name, verses, start):
    with open(os.path.join(out, f"{name}.jsonl"), "w") as f:
        for i, (book, ch, text) in enumerate(verses):
            voice, wpm, pitch = VOICES[(start + i) % len(VOICES)]
            wav = f"wav/{name}-{i:05d}.wav"
            speak(text, voice, wpm, pitch, os.path.join(out, wav))
            f.write(json.dumps({"audio": wav, "text": text, "voice": voice, "wpm": wpm, "pitch": pitch}) + "\n")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("out")
    ap.add_argument("--train", type=int, default=1500)
    ap.add_argument("--heldout", type=int, default=80)
    a = ap.parse_args()
    os.makedirs(os.path.join(a.out, "wav"), exist_ok=True)
    verses = te.read_kjv()
    n_eval = round(te.HELD_OUT * len(verses))
    rng = random.Random(19)
    train = rng.sample(short(verses[:-n_eval]), a.train)
    held = rng.sample(short(verses[-n_eval:]), a.heldout)
    write_set(a.out, "train", train, 0)
    write_set(a.out, "heldout", held, 0)
    for name, pool in (("instructions-train.txt", TRAIN_INSTRUCTIONS), ("instructions-heldout.txt",
                                                                       HELDOUT_INSTRUCTIONS)):
        with open(os.path.join(a.out, name), "w") as f:
            f.write("\n".join(pool) + "\n")
    print(f"{a.out}: {len(train)} training and {len(held)} held-out verses, {len(VOICES)} voices")


if __name__ == "__main__":
    main()
