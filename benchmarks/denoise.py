"""`denoise` on the shared corpus with added noise: SNR before and after for DSU's denoiser and for the
previous DSU's (`utils/denoise.py` of ostinsolo/doctor-sample-unit, run from a checkout with its own
numpy/librosa code in a Python that has librosa), side by side, with speed.

Each clean signal (the corpus' mixtures) gets two kinds of noise at `--snr` dB: `pumping` hiss that
follows the music's loudness (what envelope matching is for: its level is the music's 50 ms RMS) and
`steady` hiss. The noise profile is 5 s of the same hiss alone. SNR is 10 log10(sum s^2 / sum (s - y)^2)
over all samples and channels against the clean signal; `vs upstream` is the SNR of DSU's output
against the upstream one (how alike they are).

    git -C <mirror> archive HEAD utils | tar -x -C /tmp/upstream     # the previous DSU's code
    python3 -m venv /tmp/upstream-venv && /tmp/upstream-venv/bin/pip install librosa soundfile
    PYTHONPATH=$PWD/src .venv/bin/python benchmarks/denoise.py --upstream /tmp/upstream \\
        --upstream-python /tmp/upstream-venv/bin/python [CORPUS_DIR]
"""
from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import soundfile as sf

from dsu.jobs.denoise import denoise_file

SR = 44100
UPSTREAM = ("import sys; sys.path.insert(0, sys.argv[1]); from utils.denoise import denoise_audio; "
            "denoise_audio(sys.argv[2], sys.argv[3], sys.argv[4])")


def snr(clean: np.ndarray, other: np.ndarray) -> float:
    n = min(len(clean), len(other))
    return float(10 * np.log10(np.sum(clean[:n] ** 2) / (np.sum((other[:n] - clean[:n]) ** 2) + 1e-20)))


def loudness(clean: np.ndarray, seconds: float = 0.05) -> np.ndarray:
    """The clean signal's RMS over `seconds`, per sample (mono)."""
    size = int(seconds * SR)
    power = np.convolve(np.mean(clean ** 2, axis=1), np.ones(size) / size, mode="same")
    return np.sqrt(power)


def noisy_versions(clean: np.ndarray, snr_db: float, rng) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """kind -> (noise to add, 5 s of the same hiss alone for the profile), at `snr_db` below the signal."""
    out = {}
    for kind in ("pumping", "steady"):
        hiss = rng.standard_normal(clean.shape)
        if kind == "pumping":
            level = loudness(clean)
            hiss *= (level / np.sqrt(np.mean(level ** 2)))[:, None]
        gain = np.sqrt(np.mean(clean ** 2) / np.mean(hiss ** 2) / 10 ** (snr_db / 10))
        out[kind] = (gain * hiss, gain * rng.standard_normal((5 * SR, clean.shape[1])))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("corpus", nargs="?", type=Path,
                        default=Path(__file__).resolve().parents[2] / "shared" / "corpus")
    parser.add_argument("--upstream", type=Path, help="a checkout of the previous DSU (holding utils/denoise.py)")
    parser.add_argument("--upstream-python", default=sys.executable, help="a Python with numpy, librosa, soundfile")
    parser.add_argument("--snr", type=float, default=10.0, help="dB of signal over the added noise (default 10)")
    args = parser.parse_args()
    songs = sorted(p / "mixture.flac" for p in [*(args.corpus / "data").glob("*"), *(args.corpus / "real").glob("*")]
                   if (p / "mixture.flac").exists())
    if not songs:
        sys.exit(f"no mixture.flac under {args.corpus}/data or {args.corpus}/real")
    rng = np.random.default_rng(0)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        for song in songs:
            clean, rate = sf.read(song, dtype="float64", always_2d=True)
            assert rate == SR, song
            for kind, (noise, profile) in noisy_versions(clean, args.snr, rng).items():
                noisy, noise_file = tmp / f"{kind}.wav", tmp / f"{kind}_noise.wav"
                sf.write(noisy, (clean + noise).astype(np.float32), SR, subtype="FLOAT")
                sf.write(noise_file, profile.astype(np.float32), SR, subtype="FLOAT")
                seconds = len(clean) / SR
                started = time.perf_counter()
                dsu_out = Path(denoise_file(noisy, noise_file, tmp / "dsu.wav", bit_depth=32).paths[0])
                dsu_speed = seconds / (time.perf_counter() - started)
                row = {"song": song.parent.name, "kind": kind, "before": snr(clean, clean + noise),
                       "dsu": snr(clean, sf.read(dsu_out, always_2d=True)[0]), "dsu_speed": dsu_speed}
                if args.upstream:
                    started = time.perf_counter()
                    subprocess.run([args.upstream_python, "-c", UPSTREAM, str(args.upstream), str(noisy),
                                    str(noise_file), str(tmp / "upstream.wav")], check=True, capture_output=True)
                    row["upstream_speed"] = seconds / (time.perf_counter() - started)
                    upstream = sf.read(tmp / "upstream.wav", always_2d=True)[0]
                    row["upstream"] = snr(clean, upstream)
                    row["alike"] = snr(upstream, sf.read(dsu_out, always_2d=True)[0])
                rows.append(row)
    print(f"| input | noise ({args.snr:g} dB) | SNR before | DSU after | upstream after | DSU vs upstream | "
          "x real time DSU / upstream |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        up = f"{r['upstream']:.2f}" if "upstream" in r else "-"
        alike = f"{r['alike']:.1f}" if "alike" in r else "-"
        speed = f"{r['dsu_speed']:.1f} / " + (f"{r['upstream_speed']:.1f}" if "upstream_speed" in r else "-")
        print(f"| {r['song']} | {r['kind']} | {r['before']:.2f} | {r['dsu']:.2f} | {up} | {alike} | {speed} |")
    for kind in ("pumping", "steady"):
        mine = [r for r in rows if r["kind"] == kind]
        gain = np.mean([r["dsu"] - r["before"] for r in mine])
        up = np.mean([r["upstream"] - r["before"] for r in mine]) if args.upstream else float("nan")
        print(f"| **mean gain** | {kind} | | {gain:+.2f} dB | {up:+.2f} dB | | |")


if __name__ == "__main__":
    main()
