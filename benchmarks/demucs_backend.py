"""The HTDemucs core at the published size (random weights, segment 7.8 s) on one segment: torch
float32 eager against OpenVINO f32 after conversion, interleaved runs, conversion time, SNR, and
torch.profiler's top ops of the torch core.

    python benchmarks/demucs_backend.py --threads 2 --runs 3
"""
from __future__ import annotations

import argparse
import sys
import time
from fractions import Fraction
from pathlib import Path

# this folder holds benchmarks/demucs.py: let `import demucs` find the package
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]

import torch  # noqa: E402

from dsu import backends  # noqa: E402
from dsu.families import demucs_core  # noqa: E402
from dsu.families.demucs import DemucsModel  # noqa: E402


def _snr(want: torch.Tensor, got: torch.Tensor) -> float:
    want, got = want.double(), got.double()
    return float(10 * torch.log10(want.pow(2).sum() / (want - got).pow(2).sum().clamp_min(1e-300)))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    from demucs.htdemucs import HTDemucs
    torch.manual_seed(0)
    model = HTDemucs(sources=["drums", "bass", "other", "vocals"], segment=Fraction(39, 5)).eval()
    x = torch.randn(1, 2, int(model.segment * model.samplerate), generator=torch.Generator().manual_seed(1))
    loaded = DemucsModel("htdemucs-random", [model])
    inputs, _ = demucs_core.features(model, x)
    eager = demucs_core.core_fn(model)
    ov = loaded.core(model, backends.choose("openvino", "float32", device=torch.device("cpu"), family="demucs",
                                            threads=args.threads), core=eager, name="htdemucs core")
    with torch.no_grad():
        started = time.perf_counter()
        got = ov(*inputs)
        print(f"openvino convert+compile+first run: {time.perf_counter() - started:.2f} s")
        times: dict[str, list[float]] = {"torch": [], "openvino": []}
        for _ in range(args.runs):
            for name, fn in (("torch", eager), ("openvino", ov)):
                started = time.perf_counter()
                out = fn(*inputs)
                times[name].append(time.perf_counter() - started)
        want = eager(*inputs)
        for name, ts in times.items():
            print(f"{name} core: " + ", ".join(f"{t:.2f}" for t in ts) + " s")
        print("SNR openvino vs torch: " + ", ".join(f"{_snr(w, g):.1f} dB" for w, g in zip(want, got, strict=True)))
        started = time.perf_counter()
        demucs_core.forward(model, x, eager)
        print(f"whole forward (torch, features + core + synthesis): {time.perf_counter() - started:.2f} s")
        from torch.profiler import ProfilerActivity, profile
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            eager(*inputs)
        print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=12))
    del out


if __name__ == "__main__":
    main()
