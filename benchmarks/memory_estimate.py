"""A job's memory estimate (`Separator.memory_estimate`, what `out_of_memory` refusals are based on)
side by side with the peak RSS the job really added, each job in a fresh process:

    PYTHONPATH=src .venv/bin/python benchmarks/memory_estimate.py [--seconds 60]

The estimate is meant as a floor that still catches absurd options: a job it refuses would need at
least that much; a job it lets through may need somewhat more (the allocator, libraries' buffers)."""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import numpy as np
import soundfile as sf

sys.path.insert(0, str(Path(__file__).parent))
from children import peak_rss_mb, run_child  # noqa: E402

MDX = Path(__file__).parent.parent / "tests" / "fixtures" / "mdx"
CASES = {
    "dsp": ({"model": "dsp"}, {}),
    "dsp segment=30": ({"model": "dsp"}, {"segment": 30.0}),
    "mdx fixture segment=256": ({"model_path": str(MDX / "model.onnx"), "mdx_n_fft_scale_set": 2048,
                                 "primary_stem": "Vocals"}, {"segment_size": 256}),
    "mdx fixture segment=1024 batch=4": ({"model_path": str(MDX / "model.onnx"), "mdx_n_fft_scale_set": 2048,
                                          "primary_stem": "Vocals"}, {"segment_size": 1024, "batch_size": 4}),
}


def child(case: str, song: str, out: str) -> None:
    import torch
    from dsu import families
    from dsu.audio import FileSignal
    from dsu.separate import separate_file
    torch.set_num_threads(1)
    request, options = CASES[case]
    model = families.load(families.resolve(request, None), torch.device("cpu"))
    signal = FileSignal(song, model.samplerate, model.audio_channels)
    estimate = model.memory_estimate(signal.length, **options)
    before = peak_rss_mb()
    separate_file(model, song, out, options=options)
    print(json.dumps({"estimate_mb": (estimate.host + estimate.device) / 2 ** 20,
                      "added_mb": peak_rss_mb() - before}))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--child", nargs=3)
    args = parser.parse_args()
    if args.child:
        return child(*args.child)
    with tempfile.TemporaryDirectory() as tmp:
        song = Path(tmp) / "song.wav"
        t = np.arange(int(args.seconds * 44100)) / 44100
        noise = np.random.default_rng(0).standard_normal((t.size, 2)) * 0.05
        sf.write(song, (0.3 * np.sin(2 * np.pi * 220 * t)[:, None] + noise).astype(np.float32), 44100)
        print(f"{'case':<34} {'estimate MB':>12} {'peak added MB':>14}   ({args.seconds:g} s stereo)")
        for case in CASES:
            got = run_child(__file__, sys.executable, "--child", case, str(song), str(Path(tmp) / "out"))
            if got:
                print(f"{case:<34} {got['estimate_mb']:>12.0f} {got['added_mb']:>14.0f}")


if __name__ == "__main__":
    main()
