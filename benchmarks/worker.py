"""What the worker costs around the models it runs:

    .venv/bin/python benchmarks/worker.py [--seconds 5] [--jobs 9] [--pings 200] [--starts 3] [--threads 1]

- exec -> loading / ready: wall time from spawning `python -m dsu.worker` to its first line and to `ready`;
- ping round trip: median over --pings pings on an idle worker;
- warm-job overhead: a `dsp` separation's wall time seen by the client (send -> `done`, model cached)
  minus the same job's time in this process (`separate_file` on a dsp model loaded here), the two
  alternated and the median of their differences taken;
- peak RSS: VmHWM of the worker process after the jobs (Linux), and its VmRSS when idle after `ready`.
"""
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


def proc_status(pid: int, key: str) -> int | None:
    """A /proc/<pid>/status memory figure in bytes (Linux only)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def start_times(threads: int, starts: int) -> tuple[float, float]:
    loading, ready = [], []
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    for _ in range(starts):
        t0 = time.perf_counter()
        proc = subprocess.Popen([sys.executable, "-m", "dsu.worker", "--threads", str(threads)], stdin=subprocess.PIPE,
                                stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=env)
        proc.stdout.readline()
        loading.append(time.perf_counter() - t0)
        proc.stdout.readline()
        ready.append(time.perf_counter() - t0)
        proc.stdin.close()
        proc.wait()
    return statistics.median(loading), statistics.median(ready)


def in_process_job(threads: int):
    """A function running the same dsp job in this process, timed."""
    import torch

    from dsu import families
    from dsu.jobs.separate import separate_file

    torch.set_num_threads(threads)
    model = families.load(families.resolve({"model": "dsp"}, None), torch.device("cpu"))

    def run(song: Path, out: Path) -> float:
        t0 = time.perf_counter()
        separate_file(model, song, out)
        return time.perf_counter() - t0
    return run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=5.0, help="length of the song each job separates")
    parser.add_argument("--jobs", type=int, default=9)
    parser.add_argument("--pings", type=int, default=200)
    parser.add_argument("--starts", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="dsu-bench-worker-") as tmp:
        tmp = Path(tmp)
        song = tmp / "song.wav"
        sf.write(song, synth_song(args.seconds), SR, subtype="PCM_16")
        to_loading, to_ready = start_times(args.threads, args.starts)

        with Worker(["--threads", str(args.threads)], env={"OMP_NUM_THREADS": str(args.threads)},
                    stderr=subprocess.DEVNULL) as worker:
            idle_rss = proc_status(worker.pid, "VmRSS")
            rtts = []
            for _ in range(args.pings):
                t0 = time.perf_counter()
                worker.ping()
                rtts.append(time.perf_counter() - t0)
            worker.separate(input=str(song), output_dir=str(tmp / "w"), model="dsp")  # loads and caches dsp
            local = in_process_job(args.threads)
            local(song, tmp / "p")
            # alternated, so that load from other processes on the machine hits both alike
            walls, computes, reported = [], [], []
            for _ in range(args.jobs):
                t0 = time.perf_counter()
                done = worker.separate(input=str(song), output_dir=str(tmp / "w"), model="dsp")
                walls.append(time.perf_counter() - t0)
                reported.append(done["elapsed"])
                computes.append(local(song, tmp / "p"))
            peak_rss = proc_status(worker.pid, "VmHWM")

    wall, compute = statistics.median(walls), statistics.median(computes)
    overhead = statistics.median(w - c for w, c in zip(walls, computes))
    mib = lambda b: "n/a" if b is None else f"{b / 2 ** 20:.0f} MiB"  # noqa: E731
    rows = [
        ("exec -> loading", f"{to_loading * 1e3:.0f} ms", f"median of {args.starts} starts"),
        ("exec -> ready", f"{to_ready * 1e3:.0f} ms", f"median of {args.starts} starts"),
        ("ping round trip", f"{statistics.median(rtts) * 1e6:.0f} us",
         f"median of {args.pings}; p95 {sorted(rtts)[int(0.95 * len(rtts)) - 1] * 1e6:.0f} us"),
        ("warm dsp job, client wall", f"{wall * 1e3:.1f} ms", f"{args.seconds:g} s song, median of {args.jobs}"),
        ("same job in-process", f"{compute * 1e3:.1f} ms", "separate_file, same model kind"),
        ("warm-job overhead", f"{overhead * 1e3:.1f} ms", "client wall - in-process, median of paired differences"),
        ("  of it outside the job", f"{statistics.median(w - r for w, r in zip(walls, reported)) * 1e3:.1f} ms",
         "client wall - the worker's own `elapsed` (pipes, JSON, queue)"),
        ("worker RSS idle after ready", mib(idle_rss), "VmRSS"),
        ("worker peak RSS", mib(peak_rss), "VmHWM after the jobs"),
    ]
    print(f"threads={args.threads} python={sys.version.split()[0]}")
    for name, value, note in rows:
        print(f"{name:<30} {value:>12}   {note}")


if __name__ == "__main__":
    main()
