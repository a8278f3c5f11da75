"""Ensembles: DSU's streamed `ensemble` vs the reference pipeline (separate with each model, write the
stems, run MSST's `ensemble.py` on them), side by side, and DSU's peak RSS on a long input vs a
shorter one (it must stay flat).

    python benchmarks/ensemble.py [--seconds 300] [--long-seconds 1200] [--sizes tiny real]
                                  [--algorithm avg_fft] [--threads 2]
    REF_PYTHON=/path/to/python-with-numpy-librosa-soundfile MSST_PATH=/path/to/Music-Source-Separation-Training

Members: `tiny` = the built-in dsp, the tiny BS-RoFormer and MDX-Net of tests/fixtures (three
families); `real` = random-weight HTDemucs and HDemucs at demucs' published sizes plus dsp (no
weights can be downloaded here). The reference's separation step is DSU's own `separate` (one
process per member, stems written as float wav), since that is what each family reproduces; its
blend is MSST's `ensemble.py` run by REF_PYTHON on the written stems of every stem two or more
members make (skipped without REF_PYTHON/MSST_PATH). Each measurement runs in a fresh process;
the reference's wall time is the sum of its steps and its peak RSS the largest step's."""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

from children import peak_rss_mb, run_child

# benchmarks/demucs.py would shadow the demucs package the Demucs family imports
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]

ROOT = Path(__file__).resolve().parent.parent
FIX = ROOT / "tests" / "fixtures"
SR = 44100
MDX = {"mdx_n_fft_scale_set": 2048, "compensate": 1.03, "primary_stem": "Vocals", "segment_size": 8}


def members(size: str, work: Path) -> list[dict]:
    if size == "fast":  # for the long-input memory check: three settings of the tiny MDX-Net
        return [{"model_path": str(FIX / "mdx/model.onnx"), **MDX},
                {"model_path": str(FIX / "mdx/model.onnx"), **MDX, "overlap": 0.5},
                {"model_path": str(FIX / "mdx/model.onnx"), **MDX, "enable_denoise": True}]
    if size == "tiny":
        return [{"model": "dsp"},
                {"model_path": str(FIX / "msst/bs_roformer/model.ckpt"),
                 "config_path": str(FIX / "msst/bs_roformer/config.yaml"), "extract_instrumental": True},
                {"model_path": str(FIX / "mdx/model.onnx"), **MDX}]
    return [{"model_path": str(published_demucs(work, "htdemucs")), "segment": 7.8},
            {"model_path": str(published_demucs(work, "hdemucs"))},
            {"model": "dsp"}]


def published_demucs(work: Path, kind: str) -> Path:
    """A random-weight package at the size demucs publishes (htdemucs; hdemucs_mmi's HDemucs)."""
    path = work / f"{kind}.th"
    if path.exists():
        return path
    import torch
    from demucs.hdemucs import HDemucs
    from demucs.htdemucs import HTDemucs
    from demucs.states import get_state
    from fractions import Fraction
    torch.manual_seed(0)
    sources = ["drums", "bass", "other", "vocals"]
    model = (HTDemucs(sources=sources, samplerate=SR, segment=Fraction(39, 5)) if kind == "htdemucs"
             else HDemucs(sources=sources, samplerate=SR, segment=44))
    args, kwargs = model._init_args_kwargs
    torch.save({"klass": type(model), "args": args, "kwargs": kwargs, "state": get_state(model, None, False),
                "training_args": {}}, path)
    return path


def song(path: Path, seconds: float) -> Path:
    if path.exists():
        return path
    import numpy as np
    import soundfile as sf
    rng = np.random.default_rng(0)
    with sf.SoundFile(str(path), "w", SR, 2, subtype="PCM_16") as f:
        for start in range(0, int(seconds * SR), SR * 10):
            t = (start + np.arange(min(SR * 10, int(seconds * SR) - start))) / SR
            beat = np.exp(-(t % 0.5) * 30) * rng.standard_normal(t.size) * 0.3
            voice = 0.2 * np.sin(2 * np.pi * (440 + 40 * np.sin(2 * np.pi * 0.5 * t)) * t)
            bass = 0.3 * np.sin(2 * np.pi * 55 * t)
            f.write(np.stack([beat + bass + voice, beat + bass - voice], 1).astype(np.float32) * 0.8)
    return path


# ---- children ----------------------------------------------------------------------------------------

def child_ensemble(args) -> dict:
    from dsu import device
    from dsu.cache import ModelCache
    from dsu.jobs import ensemble as job
    device.set_threads(args.threads)
    started = time.perf_counter()
    done = job.ensemble({"input": args.input, "output_dir": args.out, "models": json.loads(args.members),
                         "algorithm": args.algorithm}, {}, cache=ModelCache(device.choose_device("cpu")[0], 3),
                        models_dir=None, emit=lambda *a, **k: None)
    return {"wall": time.perf_counter() - started, "rss": peak_rss_mb(), "files": done["paths"]}


def child_separate(args) -> dict:
    from dsu import device
    from dsu.jobs import models, separate
    from dsu.cache import ModelCache
    device.set_threads(args.threads)
    member = json.loads(args.members)[0]
    started = time.perf_counter()
    fields = {"input": args.input, "output_dir": args.out, "bit_depth": 32,
              **{k: v for k, v in member.items() if k in models.MODEL_KEYS}}
    extra = {k: v for k, v in member.items() if k not in models.MODEL_KEYS}
    done = separate.run(fields, extra, cache=ModelCache(device.choose_device("cpu")[0], 1), models_dir=None,
                        default_model=None, emit=lambda *a, **k: None)
    return {"wall": time.perf_counter() - started, "rss": peak_rss_mb(), "stems": done["stems"],
            "files": done["paths"]}


MSST_RUNNER = """
import json, resource, runpy, sys, time
sys.argv = ["ensemble.py", *json.loads(sys.argv[2])]
started = time.perf_counter()
runpy.run_path({script!r}, run_name="__main__")
print(json.dumps({{"wall": time.perf_counter() - started,
                  "rss": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}}))
"""


def reference(input_path: Path, member_list: list[dict], algorithm: str, threads: int, work: Path) -> dict | None:
    ref_python, msst = os.environ.get("REF_PYTHON"), os.environ.get("MSST_PATH")
    wall, rss, by_stem = 0.0, 0.0, {}
    from dsu.jobs.ensemble import canonical_stem
    for k, m in enumerate(member_list):
        r = run_child(__file__, sys.executable, "--child", "separate", "--threads", str(threads), "--input",
                      str(input_path), "--out", str(work / f"ref{k}"), "--members", json.dumps([m]))
        if r is None:
            return None
        wall, rss = wall + r["wall"], max(rss, r["rss"])
        for stem, path in zip(r["stems"], r["files"]):
            by_stem.setdefault(canonical_stem(stem, r["stems"]), []).append(path)
    if not ref_python or not msst:
        return {"wall": wall, "rss": rss, "blend": None}
    script = str(Path(msst) / "ensemble.py")
    runner = work / "run_msst_ensemble.py"
    runner.write_text(MSST_RUNNER.format(script=script))
    for stem, files in by_stem.items():
        if len(files) < 2:
            continue
        cmd = ["--files", *files, "--type", algorithm, "--output", str(work / f"ref_{stem}.wav")]
        started = time.perf_counter()
        import subprocess
        done = subprocess.run([ref_python, str(runner), "x", json.dumps(cmd)], capture_output=True, text=True,
                              env=dict(os.environ, OMP_NUM_THREADS=str(threads)))
        if done.returncode != 0:
            print(f"  [MSST ensemble.py failed: {done.stderr.strip().splitlines()[-1:]}]", file=sys.stderr)
            return {"wall": wall, "rss": rss, "blend": None}
        r = json.loads([ln for ln in done.stdout.splitlines() if ln.startswith("{")][-1])
        wall += time.perf_counter() - started
        rss = max(rss, r["rss"])
    return {"wall": wall, "rss": rss, "blend": "msst"}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seconds", type=float, default=300)
    p.add_argument("--long-seconds", type=float, default=1200)
    p.add_argument("--real-seconds", type=float, default=None, help="input length for real-size members "
                   "(default --seconds; they run at a fraction of real time on a CPU)")
    p.add_argument("--sizes", nargs="+", default=["tiny", "real"], choices=("tiny", "real"))
    p.add_argument("--algorithm", default="avg_fft")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--work", type=Path, default=None, help="scratch folder (default: a temporary one)")
    p.add_argument("--child", choices=("ensemble", "separate"))
    p.add_argument("--input")
    p.add_argument("--out")
    p.add_argument("--members")
    args = p.parse_args()
    if args.child:
        print(json.dumps((child_ensemble if args.child == "ensemble" else child_separate)(args)))
        return 0
    work = args.work or Path(tempfile.mkdtemp(prefix="dsu-bench-ensemble-"))
    work.mkdir(parents=True, exist_ok=True)
    short = song(work / f"song_{int(args.seconds)}s.wav", args.seconds)
    print(f"{args.algorithm}, {args.threads} threads; wall s / peak RSS MB")
    print(f"{'members':<12} {'DSU ensemble':>20} {'separate + MSST ensemble.py':>30}")
    for size in args.sizes:
        ms = members(size, work)
        seconds = args.real_seconds if size == "real" and args.real_seconds else args.seconds
        given = song(work / f"song_{int(seconds)}s.wav", seconds)
        ours = run_child(__file__, sys.executable, "--child", "ensemble", "--threads", str(args.threads),
                         "--input", str(given), "--out", str(work / f"dsu_{size}"), "--members", json.dumps(ms),
                         "--algorithm", args.algorithm)
        ref = reference(given, ms, args.algorithm, args.threads, work / f"ref_{size}")
        left = f"{ours['wall']:8.1f} / {ours['rss']:7.0f}" if ours else "failed"
        right = ("failed" if ref is None else f"{ref['wall']:8.1f} / {ref['rss']:7.0f}"
                 + ("" if ref["blend"] else " (blend skipped: no REF_PYTHON/MSST_PATH)"))
        print(f"{size + f' {seconds:g}s':<12} {left:>20} {right:>30}", flush=True)
    if args.long_seconds:
        long = song(work / f"song_{int(args.long_seconds)}s.wav", args.long_seconds)
        ms = members("fast", work)
        a = run_child(__file__, sys.executable, "--child", "ensemble", "--threads", str(args.threads),
                      "--input", str(short), "--out", str(work / "flat_short"), "--members", json.dumps(ms),
                      "--algorithm", args.algorithm)
        b = run_child(__file__, sys.executable, "--child", "ensemble", "--threads", str(args.threads),
                      "--input", str(long), "--out", str(work / "flat_long"), "--members", json.dumps(ms),
                      "--algorithm", args.algorithm)
        if a and b:
            print(f"DSU peak RSS, 3 tiny MDX-Net members: {args.seconds:g} s input {a['rss']:.0f} MB, "
                  f"{args.long_seconds:g} s input {b['rss']:.0f} MB (wall {a['wall']:.1f} / {b['wall']:.1f} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
