#!/usr/bin/env python3
"""Lathe's numpy reference for Whisper's log-mel features, and the maker of the audio fixture.

A tool, never used at run time. The features, as Whisper computes them (and as engine/ops/ops_audio.c does on the
device):
  frames   centred: frame t covers samples [t*hop - n_fft/2, t*hop + n_fft/2), the signal reflected at both ends;
           the last centred frame is dropped, so n samples give n // hop frames
  window   periodic Hann, n_fft samples
  power    |rfft(frame * window)|^2, n_fft/2 + 1 bins
  mel      filters [n_mels, n_bins] as librosa.filters.mel(sr, n_fft, n_mels) builds them by default: Slaney's mel
           scale (linear below 1 kHz, logarithmic above), n_mels + 2 edges evenly spaced in mels from 0 Hz to sr/2,
           triangles normalised to unit area (2 / (f[m+2] - f[m]))
  log      log10(max(mel, 1e-10)), clamped to 8 below its largest value, then (v + 4) / 4

Usage:
  logmel_ref.py --fixture DIR      writes DIR/tones-16k.wav (a test signal: a chirp, two tones, noise and a
                                   silent stretch, 16-bit PCM) and DIR/logmel-ref.safetensors (its features
                                   "logmel" [T, 80] and the filters "filters" [80, 201], float32, computed in
                                   float64)
  logmel_ref.py --wav FILE.wav --out OUT.safetensors
                                   the features of a 16 kHz mono 16-bit WAV
With PyTorch present the spectra are also checked against torch.stft (the call Whisper itself makes).
"""
import argparse
import json
import struct
import sys
import wave

import numpy as np

RATE, N_FFT, HOP, N_MELS = 16000, 400, 160, 80


def hz_to_mel(f):
    f = np.asarray(f, dtype=np.float64)
    f_sp, min_log_hz = 200.0 / 3.0, 1000.0
    min_log_mel, step = min_log_hz / f_sp, np.log(6.4) / 27.0
    return np.where(f >= min_log_hz, min_log_mel + np.log(np.maximum(f, 1e-300) / min_log_hz) / step, f / f_sp)


def mel_to_hz(m):
    m = np.asarray(m, dtype=np.float64)
    f_sp, min_log_hz = 200.0 / 3.0, 1000.0
    min_log_mel, step = min_log_hz / f_sp, np.log(6.4) / 27.0
    return np.where(m >= min_log_mel, min_log_hz * np.exp(step * (m - min_log_mel)), m * f_sp)


def mel_filters(sr=RATE, n_fft=N_FFT, n_mels=N_MELS):
    """[n_mels, n_fft // 2 + 1] float64, librosa's default (Slaney) filter bank."""
    fft_f = np.arange(n_fft // 2 + 1) * sr / n_fft
    edges = mel_to_hz(np.linspace(hz_to_mel(0.0), hz_to_mel(sr / 2.0), n_mels + 2))
    fdiff = np.diff(edges)
    ramps = edges[:, None] - fft_f[None, :]
    w = np.zeros((n_mels, len(fft_f)))
    for i in range(n_mels):
        lower = -ramps[i] / fdiff[i]
        upper = ramps[i + 2] / fdiff[i + 1]
        w[i] = np.maximum(0, np.minimum(lower, upper))
    w *= (2.0 / (edges[2:n_mels + 2] - edges[:n_mels]))[:, None]
    return w


def power_spectrum(x, n_fft=N_FFT, hop=HOP):
    """[n // hop, n_fft // 2 + 1] float64."""
    x = np.asarray(x, dtype=np.float64)
    p = np.pad(x, n_fft // 2, mode="reflect")
    frames = len(x) // hop
    idx = np.arange(frames)[:, None] * hop + np.arange(n_fft)[None, :]
    win = 0.5 - 0.5 * np.cos(2 * np.pi * np.arange(n_fft) / n_fft)
    return np.abs(np.fft.rfft(p[idx] * win, axis=1)) ** 2


def log_mel(x, sr=RATE, n_fft=N_FFT, hop=HOP, n_mels=N_MELS):
    """[n // hop, n_mels] float64, Whisper's normalised log-mel features."""
    mel = power_spectrum(x, n_fft, hop) @ mel_filters(sr, n_fft, n_mels).T
    v = np.log10(np.maximum(mel, 1e-10))
    v = np.maximum(v, v.max() - 8.0)
    return (v + 4.0) / 4.0


def torch_check(x):
    """Largest relative difference of power_spectrum() from torch.stft's; None without PyTorch."""
    try:
        import torch
    except ImportError:
        return None
    t = torch.tensor(np.asarray(x, dtype=np.float64))
    s = torch.stft(t, N_FFT, HOP, window=torch.hann_window(N_FFT, dtype=torch.float64), return_complex=True)
    ref = (s[..., :-1].abs() ** 2).T.numpy()
    ours = power_spectrum(x)
    return float(np.max(np.abs(ref - ours)) / np.max(np.abs(ref)))


def write_safetensors(path, tensors):
    header, blobs, off = {"__metadata__": {"format": "np"}}, [], 0
    for name, a in tensors.items():
        raw = np.ascontiguousarray(a, dtype="<f4").tobytes()
        header[name] = {"dtype": "F32", "shape": list(a.shape), "data_offsets": [off, off + len(raw)]}
        blobs.append(raw)
        off += len(raw)
    h = json.dumps(header, separators=(",", ":")).encode()
    h += b" " * (-len(h) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(h)) + h + b"".join(blobs))


def read_wav16(path):
    with wave.open(path) as w:
        if w.getsampwidth() != 2 or w.getnchannels() != 1 or w.getframerate() != RATE:
            sys.exit(f"{path}: a 16 kHz mono 16-bit WAV is needed")
        return np.frombuffer(w.readframes(w.getnframes()), dtype="<i2").astype(np.float64) / 32768.0


def test_signal():
    """1.37 s at 16 kHz: a chirp from 100 Hz to 6 kHz with two tones (440 Hz, 3.1 kHz) and noise, then 0.25 s of
    silence (which the clamp floors) and a quiet 7.5 kHz tone; 16-bit PCM, so the WAV holds exactly these values."""
    rng = np.random.default_rng(260)
    n = 21920  # not a multiple of the hop
    t = np.arange(n) / RATE
    f0, f1, dur = 100.0, 6000.0, 0.9
    x = 0.4 * np.sin(2 * np.pi * (f0 * t + (f1 - f0) * t * t / (2 * dur)))
    x += 0.2 * np.sin(2 * np.pi * 440 * t) + 0.1 * np.sin(2 * np.pi * 3100 * t) + 0.02 * rng.standard_normal(n)
    x[t >= dur] = 0.0
    x[t >= dur + 0.25] = 0.05 * np.sin(2 * np.pi * 7500 * t[t >= dur + 0.25])
    return np.round(np.clip(x, -1, 1) * 32767).astype(np.int16)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--fixture", help="folder for tones-16k.wav and logmel-ref.safetensors")
    ap.add_argument("--wav")
    ap.add_argument("--out")
    a = ap.parse_args()
    if a.fixture:
        pcm = test_signal()
        wav = f"{a.fixture}/tones-16k.wav"
        with wave.open(wav, "wb") as w:
            w.setnchannels(1)
            w.setsampwidth(2)
            w.setframerate(RATE)
            w.writeframes(pcm.astype("<i2").tobytes())
        x = pcm.astype(np.float64) / 32768.0
        out = f"{a.fixture}/logmel-ref.safetensors"
    elif a.wav and a.out:
        x, out = read_wav16(a.wav), a.out
    else:
        ap.error("give --fixture DIR, or --wav and --out")
    lm = log_mel(x)
    write_safetensors(out, {"logmel": lm, "filters": mel_filters()})
    d = torch_check(x)
    print(f"{out}: {lm.shape[0]} frames x {lm.shape[1]} mels, range [{lm.min():.4f}, {lm.max():.4f}]"
          + (f"; spectra vs torch.stft: max relative difference {d:.2e}" if d is not None else ""))
    if d is not None and d > 1e-9:
        sys.exit("the spectra differ from torch.stft's")


if __name__ == "__main__":
    main()
