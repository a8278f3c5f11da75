"""How a worker holds up under adversarial input, in one run:

    PYTHONPATH=$PWD/src .venv/bin/python benchmarks/fuzz.py [--lines 10000] [--seed 15] [--wait 60]

- fuzzed lines: every command of the protocol table with fuzzed fields (wrong types, bounds and just past
  them, unicode with lone surrogates and NUL, NaN/Infinity literals, 4301-digit integers, deep nesting)
  and raw lines (random bytes, invalid UTF-8, a 17 MiB line), each followed by a marker ping, through
  one `python -m dsu.worker`; lines/s, crashes (the worker exited or went deaf: must be 0, it is
  restarted to go on), `internal` answers (must be 0), requests without exactly one final answer;
- long lines: seconds from sending a 40 MiB line (over the limit: skipped) and a 15 MiB one (parsed) to
  their answers (a line was re-split on every read before: 99.5 s for 40 MiB).

The generators are tests/fuzzing.py's, as in tests/test_fuzz.py (which runs a short seeded share).
"""
from __future__ import annotations

import argparse
import math
import sys
import tempfile
import time
from pathlib import Path

from hypothesis import HealthCheck, Phase, given, seed, settings, strategies as st

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from fuzzing import FUZZED_COMMANDS, Broken, Case, FuzzWorker, Setting, raw_lines, requests, write_song  # noqa: E402


class Run:
    def __init__(self, tmp: Path, wait: float):
        self.tmp, self.wait = tmp, wait
        self.setting = Setting(song=write_song(tmp / "song.wav"), out=tmp / "out")
        self.worker = FuzzWorker(tmp, wait=wait)
        self.worker.start()
        self.crashes, self.internal, self.miscounted = [], [], []

    def run(self, case) -> None:
        try:
            self.worker.run(case)
        except Broken as e:
            text = str(e)
            if "`internal`" in text or "final answers" in text:
                (self.internal if "`internal`" in text else self.miscounted).append(text[:1500])
                self.worker.resync()
            else:  # exited or deaf: note it and go on with a new worker, as a client would
                self.crashes.append(text[:500])
                tally = self.worker.tally
                self.worker.kill()
                for attempt in range(3):  # a worker that cannot even start is one more crash, then stop
                    self.worker = FuzzWorker(self.tmp, wait=self.wait)
                    self.worker.tally = tally
                    try:
                        self.worker.start()
                        break
                    except Broken as again:
                        self.crashes.append(f"restart: {str(again)[:300]}")
                        if attempt == 2:
                            raise


def fuzz(run: Run, lines: int, seed_value: int) -> float:
    per_group = math.ceil(lines / 2 / (len(FUZZED_COMMANDS) + 1))  # each case is its line and a marker ping
    common = dict(max_examples=per_group, deadline=None, database=None, phases=[Phase.generate],
                  suppress_health_check=list(HealthCheck))
    started = time.perf_counter()
    for name in FUZZED_COMMANDS:
        @seed(seed_value)
        @settings(**common)
        @given(st.data())
        def command(data):
            run.run(data.draw(requests(name, run.setting)))
        command()

    @seed(seed_value)
    @settings(**common)
    @given(raw_lines())
    def raw(case):
        run.run(case)
    raw()
    return time.perf_counter() - started


def long_lines(run: Run) -> dict[str, float]:
    """Seconds from sending each long line to the answer of the marker ping after it."""
    out = {}
    for label, line in (("40 MiB line (skipped)", b'{"cmd":"ping","x":"' + b"x" * (40 << 20) + b'"}'),
                        ("15 MiB line (parsed)", b'{"cmd":"ping","x":"' + b"y" * (15 << 20) + b'"}')):
        started = time.perf_counter()
        run.run(Case(line, "ping"))
        out[label] = time.perf_counter() - started
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--lines", type=int, default=10_000, help="fuzzed lines to send, marker pings included")
    parser.add_argument("--seed", type=int, default=15)
    parser.add_argument("--wait", type=float, default=60.0, help="seconds of silence before a worker counts as deaf")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="dsu-fuzz-") as tmp:
        run = Run(Path(tmp), args.wait)
        seconds = fuzz(run, args.lines, args.seed)
        tally = run.worker.tally
        timings = long_lines(run)
        code = run.worker.close()
    rows = [("lines sent", f"{tally.lines}"), ("requests", f"{tally.requests}"), ("seconds", f"{seconds:.1f}"),
            ("lines/s", f"{tally.lines / seconds:.0f}"), ("crashes (must be 0)", f"{len(run.crashes)}"),
            ("internal answers (must be 0)", f"{len(run.internal)}"),
            ("requests without exactly one answer (must be 0)", f"{len(run.miscounted)}"),
            ("exit code after `exit`", f"{code}"),
            *((label, f"{s:.2f} s") for label, s in timings.items())]
    width = max(len(k) for k, _ in rows)
    for key, value in rows:
        print(f"{key:<{width}}  {value}")
    print("answers: " + ", ".join(f"{k} {v}" for k, v in sorted(tally.codes.items(), key=lambda kv: -kv[1])))
    for problem in run.crashes + run.internal + run.miscounted:
        print("\n" + problem, file=sys.stderr)
    return 1 if run.crashes or run.internal or run.miscounted or code != 0 else 0


if __name__ == "__main__":
    sys.exit(main())
