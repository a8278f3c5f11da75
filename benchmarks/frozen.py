"""The frozen folder against the venv, side by side: sizes, exec->ready time, warm dsp job time.

    .venv/bin/python benchmarks/frozen.py [--dist dist/dsu] [--build] [--runs 3] [--seconds 10]

--build (re)builds the folder first with freeze/build.py and times it. Both sides start the same
console script (`dsu-demucs --threads 1`), the venv one from .venv/bin."""
from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import soundfile as sf

from dsu.client import Worker
from dsu.demo import SR, synth_song

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "freeze"))
from build import folder_size  # noqa: E402

MiB = 2 ** 20


def ready_time(argv: list[str]) -> float:
    started = time.perf_counter()
    with Worker(argv=argv, stderr=subprocess.DEVNULL):
        return time.perf_counter() - started


def timed_job(worker: Worker, song: Path, out: Path) -> float:
    started = time.perf_counter()
    worker.separate(input=str(song), output_dir=str(out), model="dsp")
    return time.perf_counter() - started


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dist", type=Path, default=ROOT / "dist" / "dsu")
    parser.add_argument("--build", action="store_true", help="build the folder first (timed)")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=10.0, help="length of the song the jobs separate")
    args = parser.parse_args()
    os.environ.setdefault("OMP_NUM_THREADS", "1")

    if args.build:
        started = time.perf_counter()
        subprocess.run([sys.executable, str(ROOT / "freeze" / "build.py"), "--dist", str(args.dist)], check=True)
        print(f"build: {time.perf_counter() - started:.1f} s")
    if not (args.dist / "lib").is_dir():
        sys.exit(f"no frozen folder at {args.dist}: build it with `.venv/bin/python freeze/build.py` or pass --build")

    print(f"folder {args.dist}: {folder_size(args.dist) / MiB:.0f} MiB "
          f"(lib {folder_size(args.dist / 'lib') / MiB:.0f} MiB, torch {folder_size(args.dist / 'lib' / 'torch') / MiB:.0f} MiB)")
    for exe in sorted(p for p in args.dist.iterdir() if p.is_file() and os.access(p, os.X_OK)):
        print(f"  {exe.name:22s} {exe.stat().st_size / MiB:6.1f} MiB")

    sides = {"venv": [str(Path(sys.executable).parent / "dsu-demucs"), "--threads", "1"],
             "frozen": [str(args.dist / "dsu-demucs"), "--threads", "1"]}
    with tempfile.TemporaryDirectory(prefix="dsu-bench-") as tmp:
        song = Path(tmp) / "song.wav"
        sf.write(song, synth_song(args.seconds), SR, subtype="PCM_16")
        # the sides alternate run by run, so a load change on the machine hits both alike
        ready = {side: [] for side in sides}
        for _ in range(args.runs):
            for side, argv in sides.items():
                ready[side].append(ready_time(argv))
        jobs = {side: [] for side in sides}
        workers = {side: Worker(argv=argv, stderr=subprocess.DEVNULL) for side, argv in sides.items()}
        try:
            for side, worker in workers.items():
                timed_job(worker, song, Path(tmp) / side)  # warm-up: the model is loaded and cached
            for _ in range(args.runs):
                for side, worker in workers.items():
                    jobs[side].append(timed_job(worker, song, Path(tmp) / side))
        finally:
            for worker in workers.values():
                worker.close()
        rows = {side: (statistics.median(ready[side]), min(ready[side]), statistics.median(jobs[side]),
                       min(jobs[side])) for side in sides}
    print(f"\n{args.runs} runs each, median (min); warm job = dsp on {args.seconds:g} s of audio, wall time; "
          f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs")
    print(f"{'':8s} {'exec->ready s':>18s} {'warm job s':>18s}")
    for side, (ready_med, ready_min, job_med, job_min) in rows.items():
        print(f"{side:8s} {ready_med:10.2f} ({ready_min:5.2f}) {job_med:10.2f} ({job_min:5.2f})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
