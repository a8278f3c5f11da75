"""DSU's Demucs family against demucs' own `apply_model` on the same random-weight HTDemucs (default
hyperparameters), side by side: seconds per minute of audio, peak RSS, and how close the outputs are.

Each (implementation, length) case runs in a fresh subprocess so its peak RSS is its own. Both sides
read the same 44.1 kHz stereo wav, normalise as the demucs CLI does, use the same random shift
(seeded identically) and write float32 stems.

    python benchmarks/demucs.py                  # 30 s, 5 min and 20 min
    python benchmarks/demucs.py --quick          # 10 s and 30 s
    python benchmarks/demucs.py --lengths 30,300 --threads 2 --batch-size 2
"""
from __future__ import annotations

import argparse
import json
import random
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

# this file is named like the package it measures: let `import demucs` find the package, not itself
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]

import numpy as np  # noqa: E402
import soundfile as sf  # noqa: E402
import torch  # noqa: E402

SOURCES = ["drums", "bass", "other", "vocals"]
SR = 44100


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def make_model(path: Path) -> None:
    from demucs.htdemucs import HTDemucs
    from demucs.states import get_state
    torch.manual_seed(0)
    model = HTDemucs(sources=SOURCES)
    args, kwargs = model._init_args_kwargs
    torch.save({"klass": HTDemucs, "args": args, "kwargs": kwargs, "state": get_state(model, None, half=True),
                "training_args": {}}, path)


def make_input(path: Path, seconds: float) -> None:
    """Tones plus noise, written block by block so a 20-minute file costs no memory here."""
    rng = np.random.default_rng(0)
    block = SR * 10
    with sf.SoundFile(path, "w", samplerate=SR, channels=2, subtype="PCM_16") as f:
        for start in range(0, int(seconds * SR), block):
            n = min(block, int(seconds * SR) - start)
            t = (start + np.arange(n)) / SR
            tone = np.stack([0.3 * np.sin(2 * np.pi * 220 * t), 0.3 * np.sin(2 * np.pi * 330 * t)], 1)
            f.write((tone + 0.05 * rng.standard_normal((n, 2))).astype(np.float32))


def run_reference(model_path: Path, audio: Path, out: Path, batch_size: int) -> dict:
    from demucs.apply import apply_model
    from demucs.states import load_model
    model = load_model(str(model_path)).eval()
    loaded = peak_rss_mib()
    started = time.perf_counter()
    wav = torch.from_numpy(sf.read(audio, dtype="float32", always_2d=True)[0].T.copy())
    ref = wav.mean(0)
    mean, std = ref.mean(), ref.std() + 1e-8
    random.seed(0)
    stems = apply_model(model, ((wav - mean) / std)[None], shifts=1, overlap=0.25)[0] * std + mean
    out.mkdir(parents=True, exist_ok=True)
    for name, stem in zip(SOURCES, stems):
        sf.write(out / f"{name}.wav", stem.numpy().T, SR, subtype="FLOAT")
    return {"seconds": time.perf_counter() - started, "loaded_mib": loaded}


def run_dsu(model_path: Path, audio: Path, out: Path, batch_size: int) -> dict:
    from dsu import families
    from dsu.jobs.separate import separate_file
    model = families.load(families.resolve({"model_path": str(model_path)}, None), torch.device("cpu"))
    loaded = peak_rss_mib()
    started = time.perf_counter()
    random.seed(0)
    result = separate_file(model, audio, out, bit_depth=32, options={"shifts": 1, "batch_size": batch_size})
    for path in result.paths:  # the same layout as the reference's, to compare
        Path(path).rename(out / Path(path).name)
    return {"seconds": time.perf_counter() - started, "loaded_mib": loaded}


def snr_db(a: Path, b: Path) -> float:
    """Over all stems, streamed."""
    signal = noise = 0.0
    for name in SOURCES:
        with sf.SoundFile(a / f"{name}.wav") as fa, sf.SoundFile(b / f"{name}.wav") as fb:
            while True:
                x, y = fa.read(SR * 30, dtype="float64"), fb.read(SR * 30, dtype="float64")
                if not len(x):
                    break
                signal += float((x ** 2).sum())
                noise += float(((x - y) ** 2).sum())
    return 10 * np.log10(signal / max(noise, 1e-30))


def case(args) -> None:
    torch.set_num_threads(args.threads)
    run = run_dsu if args.case == "dsu" else run_reference
    out = run(Path(args.model), Path(args.input), Path(args.out), args.batch_size)
    out["peak_mib"] = peak_rss_mib()
    print(json.dumps(out))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="10 s and 30 s only")
    p.add_argument("--lengths", default="30,300,1200", help="input lengths in seconds, comma-separated")
    p.add_argument("--threads", type=int, default=1, help="torch threads per case (both sides)")
    p.add_argument("--batch-size", type=int, default=1, help="DSU segments per model call (more only pays on a GPU)")
    p.add_argument("--case", choices=["dsu", "reference"], help=argparse.SUPPRESS)
    p.add_argument("--model", help=argparse.SUPPRESS)
    p.add_argument("--input", help=argparse.SUPPRESS)
    p.add_argument("--out", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.case:
        return case(args)
    try:
        import demucs.apply  # noqa: F401
    except ImportError:
        print("demucs is not installed (pip install demucs==4.1.0): nothing to compare with")
        return
    lengths = [10, 30] if args.quick else [float(x) for x in args.lengths.split(",")]
    with tempfile.TemporaryDirectory(prefix="dsu-bench-demucs-") as tmp:
        tmp = Path(tmp)
        model = tmp / "htdemucs_random.th"
        make_model(model)
        print(f"random-weight HTDemucs (default hyperparameters), shifts=1, overlap=0.25, "
              f"{args.threads} thread(s), DSU batch_size={args.batch_size}")
        print(f"{'input':>8} | {'reference s/min':>15} {'peak MiB':>9} {'(+job)':>7} | "
              f"{'DSU s/min':>9} {'peak MiB':>9} {'(+job)':>7} | {'speed-up':>8} | {'SNR dB':>7}")
        for seconds in lengths:
            audio = tmp / f"mix_{seconds:g}s.wav"
            make_input(audio, seconds)
            row = {}
            for name in ("reference", "dsu"):
                out = tmp / f"{name}_{seconds:g}"
                cmd = [sys.executable, __file__, "--case", name, "--model", str(model), "--input", str(audio),
                       "--out", str(out), "--threads", str(args.threads), "--batch-size", str(args.batch_size)]
                done = subprocess.run(cmd, capture_output=True, text=True)
                if done.returncode != 0:
                    raise SystemExit(f"{name} {seconds:g}s failed:\n{done.stderr[-3000:]}")
                row[name] = json.loads(done.stdout.strip().splitlines()[-1])
            ref, dsu = row["reference"], row["dsu"]
            per_min = {k: v["seconds"] / (seconds / 60) for k, v in row.items()}
            print(f"{seconds:>7g}s | {per_min['reference']:>15.1f} {ref['peak_mib']:>9.0f} "
                  f"{ref['peak_mib'] - ref['loaded_mib']:>+7.0f} | {per_min['dsu']:>9.1f} {dsu['peak_mib']:>9.0f} "
                  f"{dsu['peak_mib'] - dsu['loaded_mib']:>+7.0f} | "
                  f"{ref['seconds'] / dsu['seconds']:>7.2f}x | "
                  f"{snr_db(tmp / 'reference_{:g}'.format(seconds), tmp / 'dsu_{:g}'.format(seconds)):>7.1f}",
                  flush=True)
            audio.unlink()


if __name__ == "__main__":
    main()
