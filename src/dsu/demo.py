"""A first run that needs no downloaded weights: synthesise a short song, separate it with the
embedded `dsp` model through a real worker, print where the stems went.

    python -m dsu.demo [OUT_DIR]        (default ./demo)
"""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import soundfile as sf

SR = 44100


def synth_song(seconds: float = 8.0, sr: int = SR, seed: int = 0) -> np.ndarray:
    """[samples, 2] float32: kick/snare/hats, a bass line, panned chords and a centred sung tone."""
    rng = np.random.default_rng(seed)
    n = int(seconds * sr)
    t = np.arange(n) / sr
    beat = 60 / 110
    left, right = np.zeros(n), np.zeros(n)

    def hit(at: float, sound: np.ndarray, pan: float = 0.0):
        i = int(at * sr)
        seg = sound[: n - i]
        left[i:i + len(seg)] += seg * (1 - pan)
        right[i:i + len(seg)] += seg * (1 + pan)

    dt = np.arange(int(0.25 * sr)) / sr
    kick = 0.8 * np.sin(2 * np.pi * (50 + 80 * np.exp(-dt * 30)) * dt) * np.exp(-dt * 12)
    snare = 0.4 * rng.standard_normal(len(dt)) * np.exp(-dt * 25)
    hat = 0.1 * np.diff(rng.standard_normal(len(dt) + 1)) * np.exp(-dt * 80)
    roots = [55.0, 41.2, 49.0, 36.7]  # A1 E1 G1 D1
    for k in range(int(seconds / beat)):
        at = k * beat
        hit(at, kick if k % 2 == 0 else snare)
        hit(at, hat, 0.3)
        hit(at + beat / 2, hat, 0.3)
        root = roots[(k // 4) % 4]
        note = np.arange(int(beat * sr)) / sr
        hit(at, 0.35 * np.sin(2 * np.pi * root * note) * np.exp(-note * 2))
        chord = sum(np.sin(2 * np.pi * root * 4 * r * note) for r in (1, 1.26, 1.5))
        hit(at, 0.06 * chord * np.exp(-note * 1.5), -0.7 if k % 8 < 4 else 0.7)
    melody = np.repeat([440.0, 494.0, 523.3, 587.3, 523.3, 494.0, 440.0, 392.0], int(np.ceil(n / 8)))[:n]
    phase = 2 * np.cumsum(np.pi * melody * (1 + 0.01 * np.sin(2 * np.pi * 5.5 * t))) / sr
    voice = 0.12 * sum(np.sin(h * phase) / h for h in range(1, 8)) * (0.6 + 0.4 * np.sin(np.pi * t / beat) ** 2)
    left += voice
    right += voice
    mix = np.stack([left, right], 1)
    return (0.9 * mix / np.abs(mix).max()).astype(np.float32)


def main(argv: list[str] | None = None) -> int:
    from .client import Worker

    out = Path((argv if argv is not None else sys.argv[1:] or ["demo"])[0]).resolve()
    out.mkdir(parents=True, exist_ok=True)
    song = out / "demo_song.wav"
    sf.write(song, synth_song(), SR, subtype="PCM_16")
    print(f"demo input: {song}", file=sys.stderr)
    with Worker() as worker:
        done = worker.separate(input=str(song), output_dir=str(out), model="dsp",
                               on_progress=lambda p: print(f"\rseparating {p:6.1%}", end="", file=sys.stderr))
    print(file=sys.stderr)
    for path in done["paths"]:
        print(path)
    print(f"{len(done['paths'])} stems in {done['elapsed']:.2f} s with the built-in dsp model", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
