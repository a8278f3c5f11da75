"""CPU speed per family and backend (issue #19): the reference tool, DSU on torch float32, DSU on
OpenVINO float32 (converting, then a second process loading the cached IR), and DSU in bfloat16
(torch autocast, OpenVINO bf16), interleaved in one run on published-size random-weight models.

    python benchmarks/cpu_speed.py [--families msst,demucs,vr,mdx,apollo] [--seconds 30] [--threads 2]
        [--rounds 1] [--quick] [--json FILE]
        [--msst PATH --audio-separator PATH --apollo PATH --ref-python PYTHON]

A family name stands for its cases (msst: bs_roformer, mel_band_roformer, scnet, mdx23c); single
cases may be named too. The models and inputs are the ones benchmarks/msst.py, demucs.py and uvr.py
build (`--quick`: the tests' tiny models instead, a smoke test in seconds). Every configuration
runs in its own process, so its peak RSS is its own; DSU runs go through `separate_file` (Apollo:
`restore_file`) with the request's `backend` and `precision`, the product's path. The reference
column is there where the existing benchmarks have it: demucs' `apply_model` (the demucs package),
MSST's `demix` (--msst checkout), python-audio-separator's separators (--audio-separator) and
Apollo's inference (--apollo); otherwise it says `skipped`.

Per family the FLOPs of the network cores (counted by torch's FlopCounterMode on the first core call
of the torch float32 run, times the samples the run pushes through them; the STFTs are not counted)
over each row's wall time are printed as a fraction of this CPU's float32 and bfloat16 matmul
peaks, measured at the start (torch 4096x4096 matmul, --threads threads)."""
from __future__ import annotations

import argparse
import importlib.util
import inspect
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import msst as bench_msst
import uvr as bench_uvr
from children import peak_rss_mb

# then off the path: benchmarks/demucs.py would shadow the demucs package the Demucs family imports
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]

ROOT = Path(__file__).resolve().parent.parent
TESTS = ROOT / "tests"
SR = 44100
FAMILIES = {"msst": list(bench_msst.CASES), "demucs": ["htdemucs"], "vr": ["vr_hp"], "mdx": ["mdx"],
            "apollo": ["apollo"]}
FAMILY_OF = {case: family for family, cases in FAMILIES.items() for case in cases}
# (label, backend, precision); the first DSU row is the one the others' SNR is also measured against
CONFIGS = [("reference", None, None), ("torch fp32", "torch", "float32"), ("openvino fp32", "openvino", "float32"),
           ("openvino fp32 cached", "openvino", "float32"), ("torch bf16", "torch", "bfloat16"),
           ("openvino bf16", "openvino", "bfloat16")]


def _bench_demucs():
    """benchmarks/demucs.py under another name: as `demucs` it would shadow the package it measures."""
    spec = importlib.util.spec_from_file_location("bench_demucs", Path(__file__).with_name("demucs.py"))
    module = importlib.util.module_from_spec(spec)
    path = list(sys.path)
    spec.loader.exec_module(module)
    sys.path[:] = path  # it drops benchmarks/ from the path for its own sake
    return module


# ---- models and inputs ---------------------------------------------------------------------------

def _write_input(path: Path, seconds: float) -> None:
    import numpy as np
    import soundfile as sf
    rng = np.random.default_rng(0)
    n = int(seconds * SR)
    t = np.arange(n) / SR
    mix = np.stack([np.sin(2 * np.pi * 220 * t), np.sin(2 * np.pi * 330 * t)]) * 0.3
    mix = mix + 0.05 * rng.standard_normal((2, n))
    sf.write(path, mix.T.astype(np.float32), SR, subtype="FLOAT")


def child_prepare(case: str, work: Path, seconds: float, quick: bool) -> dict:
    """The model files and input under `work`; returns the DSU request and options for them."""
    import torch
    family = FAMILY_OF[case]
    if family == "msst":
        if quick:  # the tests' tiny checkpoints (tests/fixtures/msst)
            for name in ("config.yaml", "model.ckpt"):
                shutil.copy(TESTS / "fixtures" / "msst" / case / name, work / name)
        else:
            bench_msst.child_prepare(case, work, seconds)
        request = {"model_path": str(work / "model.ckpt"), "config_path": str(work / "config.yaml"), "model_type": case}
        return {"request": request, "options": {}}
    if family == "demucs":
        if quick:
            sys.path.insert(0, str(TESTS))
            from tiny_models import tiny_htdemucs
            tiny_htdemucs(work / "htdemucs.th")
        else:
            _bench_demucs().make_model(work / "htdemucs.th")
        return {"request": {"model_path": str(work / "htdemucs.th")}, "options": {"shifts": 1}}
    if not quick:
        bench_uvr.child_prepare(case, work, seconds)
        if case == "vr_hp":
            request = {"model_path": str(work / "2_HP-bench.pth"), "vr_model_param": "4band_v2",
                       "primary_stem": "Instrumental"}
        elif case == "mdx":
            mdx = bench_uvr.MDX
            request = {"model_path": str(work / "mdx-bench.onnx"), "primary_stem": "Vocals",
                       "mdx_n_fft_scale_set": mdx["n_fft"], "mdx_dim_f_set": mdx["dim_f"], "mdx_dim_t_set": 8,
                       "compensate": mdx["compensate"]}
        else:
            request = {"model_path": str(work / "apollo-bench.ckpt"), "config_path": str(work / "apollo.yaml"),
                       "model_type": "apollo"}
        return {"request": request, "options": {}}
    sys.path.insert(0, str(TESTS))
    torch.manual_seed(0)
    if case == "vr_hp":
        from dsu.models.vr_cascade import CascadedASPPNet
        torch.save(CascadedASPPNet(672, 2, 0, 4).state_dict(), work / "tiny_vr.pth")
        request = {"model_path": str(work / "tiny_vr.pth"), "vr_model_param": "4band_v2", "primary_stem": "Vocals"}
    elif case == "mdx":
        from test_mdx import tiny_onnx
        tiny_onnx(work / "tiny_mdx.onnx", dim_f=64, dim_t=8)
        request = {"model_path": str(work / "tiny_mdx.onnx"), "mdx_n_fft_scale_set": 2048, "mdx_dim_f_set": 64,
                   "mdx_dim_t_set": 3}
    else:
        from tiny_models import tiny_apollo
        ckpt, config = tiny_apollo(work)
        request = {"model_path": str(ckpt), "config_path": str(config), "model_type": "apollo"}
    return {"request": request, "options": {"segment_size": 8} if case == "mdx" else {}}


# ---- children (each in its own process) -----------------------------------------------------------

def child_peaks(threads: int) -> dict:
    """GFLOP/s of a square matmul in float32 and bfloat16: 4096x4096, or the largest power of two
    from 1024 whose product takes under ~5 s (bfloat16 runs emulated, far slower, on CPUs without it)."""
    import torch
    torch.set_num_threads(threads)
    out = {}
    for name, dtype in (("float32", torch.float32), ("bfloat16", torch.bfloat16)):
        n, took = 1024, 0.0
        while True:
            a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
            started = time.perf_counter()
            torch.mm(a, b)
            took = time.perf_counter() - started
            if n >= 4096 or took * 8 > 5.0:
                break
            n *= 2
        best, spent = took, took
        while spent < 2.0:
            started = time.perf_counter()
            torch.mm(a, b)
            t = time.perf_counter() - started
            best, spent = min(best, t), spent + t
        out[name], out[f"{name}_n"] = 2 * n ** 3 / best / 1e9, n
    return out


class _CoreFlops:
    """Counts the FLOPs that go through the family's cores: the first call of each core is counted
    by torch, every later one is taken as the same per sample of its batch."""

    def __init__(self):
        self.total = 0.0
        self._per_item: dict[int, float] = {}

    def wrap(self, fn):
        from torch.utils.flop_counter import FlopCounterMode

        def counted(*xs):
            items = int(xs[0].shape[0]) if xs and hasattr(xs[0], "shape") and xs[0].dim() else 1
            if id(fn) not in self._per_item:
                with FlopCounterMode(display=False) as counter:
                    y = fn(*xs)
                self._per_item[id(fn)] = counter.get_total_flops() / max(items, 1)
            else:
                y = fn(*xs)
            self.total += self._per_item[id(fn)] * items
            return y
        return counted


def _save_stems(path: Path, stems: dict) -> None:
    import numpy as np
    np.savez(path, **{name.lower(): np.asarray(a, np.float32) for name, a in stems.items()})


def child_dsu(case: str, work: Path, threads: int, backend: str, precision: str, save: Path, flops: bool) -> dict:
    """One DSU run through the job functions, with the OpenVINO preparation (convert or load, then
    compile) timed where it happens and, with `flops`, the cores' FLOPs counted."""
    import soundfile as sf
    import torch
    torch.set_num_threads(threads)
    from dsu import families
    from dsu.families.base import LoadedModel
    spec = json.loads((work / "spec.json").read_text())
    prepare = {"seconds": 0.0}
    if backend == "openvino":
        from dsu.backends import openvino as ov_backend
        original_prepare = ov_backend.CompiledCore._prepare

        def timed_prepare(self, *a, **k):
            started = time.perf_counter()
            try:
                return original_prepare(self, *a, **k)
            finally:
                prepare["seconds"] += time.perf_counter() - started
        ov_backend.CompiledCore._prepare = timed_prepare
    counter = _CoreFlops() if flops else None
    if counter is not None:
        original_core = LoadedModel.core

        def counted_core(self, *a, **k):
            return counter.wrap(original_core(self, *a, **k))
        LoadedModel.core = counted_core
    started = time.perf_counter()
    model = families.load(families.resolve(spec["request"], None), torch.device("cpu"))
    load_s = time.perf_counter() - started
    options = {**spec["options"], "backend": backend, "precision": precision}
    random.seed(0)
    started = time.perf_counter()
    if FAMILY_OF[case] == "apollo":
        from dsu.jobs.restore import restore_file
        kwargs = {"options": options} if "options" in inspect.signature(restore_file).parameters else {}
        result = restore_file(model, work / "input.wav", work / "restored.wav", bit_depth=32,
                              chunk_seconds=bench_uvr.CHUNK_SECONDS, overlap_seconds=bench_uvr.OVERLAP_SECONDS,
                              **kwargs)
        seconds = time.perf_counter() - started
        stems = {"restored": sf.read(work / "restored.wav", dtype="float32", always_2d=True)[0].T}
    else:
        from dsu.jobs.separate import separate_file
        out = work / f"out-{save.stem}"
        result = separate_file(model, work / "input.wav", out, bit_depth=32, options=options)
        seconds = time.perf_counter() - started
        stems = {s: sf.read(p, dtype="float32", always_2d=True)[0].T
                 for s, p in zip(result.stems, result.paths, strict=True)}
        shutil.rmtree(out, ignore_errors=True)
    _save_stems(save, stems)
    extra = result.extra or {}
    return {"seconds": seconds, "load_seconds": load_s, "peak_rss_mb": peak_rss_mb(),
            "prepare_seconds": prepare["seconds"] or None,
            # a family whose network is not cut into cores yet runs on torch whatever the request says
            "cores_converted": bool(prepare["seconds"]) if backend == "openvino" else None,
            "ran": f"{extra.get('backend', 'torch')} {extra.get('precision', 'float32')}",
            "warnings": extra.get("warnings", []),
            "gflop": counter.total / 1e9 if counter is not None and counter.total else None}


def child_reference(case: str, work: Path, threads: int, save: Path, refs: dict) -> dict:
    """The reference tool on the same files, as benchmarks/msst.py, demucs.py and uvr.py run it."""
    import numpy as np
    import soundfile as sf
    import torch
    torch.set_num_threads(threads)
    family = FAMILY_OF[case]
    if family == "msst":
        out = bench_msst.child_msst(case, work, threads, refs["msst"], save=save)
    elif family == "demucs":
        bench_demucs = _bench_demucs()
        folder = work / "ref-demucs"
        out = bench_demucs.run_reference(work / "htdemucs.th", work / "input.wav", folder, 1)
        _save_stems(save, {n: sf.read(folder / f"{n}.wav", dtype="float32", always_2d=True)[0].T
                           for n in bench_demucs.SOURCES})
        shutil.rmtree(folder)
        out["peak_rss_mb"] = peak_rss_mb()
    else:
        out = bench_uvr.child_reference(case, work, threads, refs["audio_separator"], refs["apollo"])
        got = np.load(work / "ref.npz")
        _save_stems(save, {k: got[k] for k in got.files})
    return {"seconds": out["seconds"], "peak_rss_mb": out.get("peak_rss_mb", peak_rss_mb()), "ran": "reference"}


# ---- driver ---------------------------------------------------------------------------------------

def _child(args: list[str], python: str, threads: int, env: dict | None = None, timeout: float | None = None) -> dict:
    """This script as a child; its last JSON line, or {"error": the failure's last line}."""
    try:
        done = subprocess.run([python, __file__, *args], capture_output=True, text=True, timeout=timeout,
                              env={**os.environ, "OMP_NUM_THREADS": str(threads), **(env or {})})
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {timeout:g} s (--timeout)"}
    lines = [ln for ln in done.stdout.splitlines() if ln.startswith("{")]
    if done.returncode != 0 or not lines:
        tail = done.stderr.strip().splitlines()
        return {"error": (tail[-1] if tail else f"exit {done.returncode}")[:300]}
    return json.loads(lines[-1])


def _snr(a_path: Path, b_path: Path) -> float | None:
    """The worst stem's SNR of b against a (stems matched by lower-cased name, cut to the shorter)."""
    import numpy as np
    if not a_path.is_file() or not b_path.is_file():
        return None
    a_all, b_all = np.load(a_path), np.load(b_path)
    worst = None
    for name in a_all.files:
        if name not in b_all.files:
            continue
        a, b = (np.atleast_2d(x.astype(np.float64)) for x in (a_all[name], b_all[name]))
        a, b = (x if x.shape[0] <= x.shape[-1] else x.T for x in (a, b))
        n = min(a.shape[-1], b.shape[-1])
        noise = float(np.sum((a[..., :n] - b[..., :n]) ** 2))
        snr = 10 * np.log10(float(np.sum(a[..., :n] ** 2)) / noise) if noise > 0 else float("inf")
        worst = snr if worst is None else min(worst, snr)
    return worst


def _reference_missing(case: str, refs: dict) -> str | None:
    family = FAMILY_OF[case]
    if family == "msst" and not (refs["msst"] and Path(refs["msst"], "utils", "model_utils.py").is_file()):
        return "skipped: no MSST checkout (--msst / $MSST_PATH)"
    if family == "demucs" and importlib.util.find_spec("demucs") is None:
        return "skipped: the demucs package is not installed"
    if family in ("vr", "mdx") and not refs["audio_separator"]:
        return "skipped: no python-audio-separator checkout (--audio-separator)"
    if family == "apollo" and not refs["apollo"]:
        return "skipped: no Apollo checkout (--apollo)"
    return None


def run_case(case: str, args, refs: dict) -> list[dict]:
    rows = {label: {"case": case, "config": label} for label, _, _ in CONFIGS}
    with tempfile.TemporaryDirectory(prefix=f"dsu-cpu-{case}-") as tmp:
        work = Path(tmp)
        common = ["--case", case, "--work", tmp, "--threads", str(args.threads), "--seconds", str(args.seconds)]
        spec = _child(["--child", "prepare", *common, *(["--quick"] if args.quick else [])], sys.executable,
                      args.threads)
        if "error" in spec:
            return [{"case": case, "config": "prepare", "error": spec["error"]}]
        missing = _reference_missing(case, refs)
        if missing:
            rows["reference"]["error"] = missing
        for round_ in range(args.rounds):
            for label, backend, precision in CONFIGS:
                if label not in args.configs:
                    rows[label].setdefault("error", "not asked for (--configs)")
                    continue
                if label == "reference" and missing:
                    continue
                if label == "openvino fp32" and round_ > 0:
                    continue  # converting happens once: later rounds would only load the cache
                save = work / f"{label.replace(' ', '_')}.npz"
                if label == "reference":
                    extra = [f"--{k.replace('_', '-')}={v}" for k, v in refs.items() if v]
                    got = _child(["--child", "reference", *common, "--save", str(save), *extra], args.ref_python,
                                 args.threads, timeout=args.timeout)
                else:
                    flops = ["--flops"] if label == "torch fp32" and round_ == 0 else []
                    got = _child(["--child", "dsu", *common, "--backend", backend, "--precision", precision,
                                  "--save", str(save), *flops], sys.executable, args.threads,
                                 env={"DSU_MODELS": str(work / "cache")}, timeout=args.timeout)
                row = rows[label]
                if "error" in got:
                    row.setdefault("error", got["error"])
                    continue
                if "seconds" in row and row["seconds"] <= got["seconds"]:
                    continue  # over several rounds the best one counts
                gflop = row.get("gflop")
                row.update(got)
                if gflop and not got.get("gflop"):
                    row["gflop"] = gflop
        for label, _, _ in CONFIGS:
            save = work / f"{label.replace(' ', '_')}.npz"
            rows[label]["snr_reference_db"] = _snr(work / "reference.npz", save) if label != "reference" else None
            rows[label]["snr_torch_fp32_db"] = _snr(work / "torch_fp32.npz", save) if label != "torch fp32" else None
    gflop = rows["torch fp32"].get("gflop")
    for row in rows.values():
        row["audio_seconds"] = args.seconds
        if "seconds" in row:
            row["x_realtime"] = args.seconds / row["seconds"]
            if gflop:
                row["gflops"] = gflop / row["seconds"]
    return list(rows.values())


def _fmt(value, digits: int = 1, suffix: str = "") -> str:
    if value is None:
        return "-"
    if value == float("inf"):
        return "exact"
    return f"{value:.{digits}f}{suffix}"


def markdown(rows: list[dict], peaks: dict) -> str:
    lines = ["| case | config | wall s | x real time | peak RSS MB | SNR vs ref dB | SNR vs torch fp32 dB | "
             "load s | OpenVINO prepare s | ran | GFLOP/s | of fp32 peak | of bf16 peak | note |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        g = r.get("gflops")
        frac = {k: f"{100 * g / peaks[k]:.0f}%" if g and peaks.get(k) else "-" for k in ("float32", "bfloat16")}
        said = [*(["no core went through OpenVINO: the network ran on torch"] if r.get("cores_converted") is False
                  else []), *(r.get("warnings") or [])]
        note = r.get("error") or "; ".join(said)
        lines.append(f"| {r['case']} | {r['config']} | {_fmt(r.get('seconds'), 2)} | {_fmt(r.get('x_realtime'), 2)} | "
                     f"{_fmt(r.get('peak_rss_mb'), 0)} | {_fmt(r.get('snr_reference_db'))} | "
                     f"{_fmt(r.get('snr_torch_fp32_db'))} | {_fmt(r.get('load_seconds'), 2)} | "
                     f"{_fmt(r.get('prepare_seconds'), 2)} | {r.get('ran', '-')} | {_fmt(g)} | {frac['float32']} | "
                     f"{frac['bfloat16']} | {note.replace('|', '/')} |")
    return "\n".join(lines)


def _uptime() -> str:
    return subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--families", default=",".join(FAMILIES), help="families or cases, comma-separated")
    ap.add_argument("--seconds", type=float, default=30.0, help="input length")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=1, help="rounds of the configurations, interleaved; best kept")
    ap.add_argument("--quick", action="store_true", help="the tests' tiny models: a smoke test")
    ap.add_argument("--json", type=Path, help="also write the rows and peaks here")
    ap.add_argument("--configs", default=",".join(c[0] for c in CONFIGS),
                    help=f"configurations to run, comma-separated, of: {', '.join(c[0] for c in CONFIGS)}")
    ap.add_argument("--timeout", type=float, help="seconds one configuration may run before its row says so")
    ap.add_argument("--msst", default=os.environ.get("MSST_PATH"), help="MSST checkout (outside this repo)")
    ap.add_argument("--audio-separator", default=os.environ.get("AUDIO_SEPARATOR_PATH"))
    ap.add_argument("--apollo", default=os.environ.get("APOLLO_PATH"))
    ap.add_argument("--ref-python", default=os.environ.get("REF_PYTHON", sys.executable))
    ap.add_argument("--child", choices=["prepare", "peaks", "dsu", "reference"], help=argparse.SUPPRESS)
    for hidden in ("--case", "--work", "--backend", "--precision", "--save"):
        ap.add_argument(hidden, help=argparse.SUPPRESS)
    ap.add_argument("--flops", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    args.configs = [c.strip() for c in args.configs.split(",")]
    if set(args.configs) - {c[0] for c in CONFIGS}:
        ap.error(f"unknown configuration in --configs: {', '.join(set(args.configs) - {c[0] for c in CONFIGS})}")
    refs = {"msst": args.msst, "audio_separator": args.audio_separator, "apollo": args.apollo}

    if args.child:
        work = Path(args.work) if args.work else None
        if args.child == "peaks":
            out = child_peaks(args.threads)
        elif args.child == "prepare":
            out = child_prepare(args.case, work, args.seconds, args.quick)
            _write_input(work / "input.wav", args.seconds)
            (work / "spec.json").write_text(json.dumps(out))
        elif args.child == "dsu":
            out = child_dsu(args.case, work, args.threads, args.backend, args.precision, Path(args.save), args.flops)
        else:
            out = child_reference(args.case, work, args.threads, Path(args.save), refs)
        print(json.dumps(out))
        return

    cases = []
    for name in args.families.split(","):
        name = name.strip()
        if name not in FAMILIES and name not in FAMILY_OF:
            ap.error(f"unknown family or case {name!r}: one of {', '.join([*FAMILIES, *FAMILY_OF])}")
        cases += FAMILIES.get(name, [name])
    print(f"start: {_uptime()}")
    print(f"input {args.seconds:g} s synthetic stereo at {SR} Hz, {args.threads} threads, random weights, "
          f"{'tiny test models' if args.quick else 'published sizes'}", flush=True)
    peaks = _child(["--child", "peaks", "--threads", str(args.threads)], sys.executable, args.threads)
    print(f"matmul peaks, {args.threads} threads: float32 {_fmt(peaks.get('float32'))} GFLOP/s "
          f"(n={peaks.get('float32_n')}), bfloat16 {_fmt(peaks.get('bfloat16'))} GFLOP/s (n={peaks.get('bfloat16_n')})"
          f"{' (' + peaks['error'] + ')' if 'error' in peaks else ''}", flush=True)
    rows: list[dict] = []
    for case in cases:
        got = run_case(case, args, refs)
        rows += got
        print(markdown(got, peaks).split("\n", 2)[2], flush=True)  # each case's rows as they come
    print()
    print(markdown(rows, peaks))
    print(f"\nend: {_uptime()}")
    if args.json:
        args.json.write_text(json.dumps({"peaks": peaks, "seconds": args.seconds, "threads": args.threads,
                                         "quick": args.quick, "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
