"""SDR of the embedded `dsp` separator on the shared corpus, beside the corpus' trivial baselines.

SDR is the corpus README's plain, scale-sensitive one: 10 log10(sum s^2 / sum (s - s_hat)^2) over
all samples and channels. Usage: python benchmarks/dsp_sdr.py [CORPUS_DIR]   (default ../shared/corpus)
"""
from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import soundfile as sf

from dsu.families import load, resolve
from dsu.jobs.separate import separate_file

import torch

def sdr(ref: np.ndarray, est: np.ndarray) -> float:
    return float(10 * np.log10((np.sum(ref ** 2) + 1e-20) / (np.sum((ref - est) ** 2) + 1e-20)))


def main() -> None:
    corpus = Path(sys.argv[1] if len(sys.argv) > 1 else Path(__file__).resolve().parents[2] / "shared" / "corpus")
    songs = sorted(p for p in (corpus / "data").glob("*") if (p / "vocals.flac").exists())
    if not songs:
        sys.exit(f"no songs with stems under {corpus / 'data'}")
    model = load(resolve({"model": "dsp"}, None), torch.device("cpu"))
    rows = []
    with tempfile.TemporaryDirectory() as out:
        for song in songs:
            started = time.perf_counter()
            res = separate_file(model, song / "mixture.flac", out, family="dsp", bit_depth=32)
            took = time.perf_counter() - started
            est = {Path(p).stem: sf.read(p, dtype="float64")[0] for p in res.paths}
            ref = {s: sf.read(song / f"{s}.flac", dtype="float64")[0] for s in model.stems}
            mix = sf.read(song / "mixture.flac", dtype="float64")[0]
            four = {s: sdr(ref[s], est[s]) for s in model.stems}
            floor = {s: sdr(ref[s], mix) for s in model.stems}
            accomp_ref = ref["drums"] + ref["bass"] + ref["other"]
            accomp_est = est["drums"] + est["bass"] + est["other"]
            two = (sdr(ref["vocals"], est["vocals"]), sdr(accomp_ref, accomp_est))
            rows.append((song.name, four, floor, two, took, len(mix) / 44100))
    print("| song | SDR dsp, dB (drums / bass / other / vocals) | mix-as-stem floor | 2-stem dsp (vocals / accomp.) | x realtime |")
    print("|---|---|---|---|---|")
    for name, four, floor, two, took, dur in rows:
        print(f"| {name} | {' / '.join(f'{v:.2f}' for v in four.values())} | "
              f"{' / '.join(f'{v:.2f}' for v in floor.values())} | {two[0]:.2f} / {two[1]:.2f} | {dur / took:.1f} |")
    mean = {s: np.mean([r[1][s] for r in rows]) for s in model.stems}
    print(f"| **mean** | {' / '.join(f'{v:.2f}' for v in mean.values())} | | "
          f"{np.mean([r[3][0] for r in rows]):.2f} / {np.mean([r[3][1] for r in rows]):.2f} | |")


if __name__ == "__main__":
    main()
