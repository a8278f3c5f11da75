"""What the side-by-side benchmarks share: every measurement runs in a fresh process of the script
(so its peak RSS is that run's alone) and answers with one JSON line on stdout."""
from __future__ import annotations

import json
import os
import resource
import subprocess
import sys


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def run_child(script: str, python: str, *args: str) -> dict | None:
    """`python script *args` with OMP threads as its `--threads` says; its last JSON line, or None
    (and the failure's last line on stderr) when it fails."""
    threads = args[args.index("--threads") + 1] if "--threads" in args else "1"
    done = subprocess.run([python, script, *args], capture_output=True, text=True,
                          env=dict(os.environ, OMP_NUM_THREADS=threads))
    if done.returncode != 0:
        tail = done.stderr.strip().splitlines()[-1] if done.stderr.strip() else done.returncode
        print(f"  [{' '.join(args[1:4])} failed: {tail}]", file=sys.stderr)
        return None
    lines = [ln for ln in done.stdout.splitlines() if ln.startswith("{")]
    return json.loads(lines[-1]) if lines else {}
