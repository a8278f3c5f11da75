"""What many test files share: the workers' environment, test signals, the SNR they are compared by, a
raw JSON-lines worker, and the CLIs run in this process (fixtures built from these are in conftest.py)."""
from __future__ import annotations

import contextlib
import io
import json
import math
import os
import queue
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile as sf

from dsu import protocol as spec

TESTS = Path(__file__).parent
FIXTURES = TESTS / "fixtures" / "msst"


def shared_corpus() -> Path | None:
    """The shared test corpus (songs with ground-truth stems): `$DSU_CORPUS`, else `shared/corpus` in,
    beside or above this checkout (a clean clone elsewhere finds the workplace's `/work/shared`)."""
    roots = [Path(os.environ["DSU_CORPUS"])] if os.environ.get("DSU_CORPUS") else []
    here = TESTS.resolve()
    roots += [p / "shared" / "corpus" for p in (here.parent, here.parents[1], here.parents[2])]
    roots.append(Path("/work/shared/corpus"))
    return next((r for r in roots if (r / "measure.py").exists() and (r / "data" / "song_000").is_dir()), None)
# a runtime policy file of the machine's user (~/.dsu/runtime_policy.json) must not change the workers tested
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1",
       "DSU_RUNTIME_POLICY_PATH": str(TESTS / "no-runtime-policy.json")}
DSU = [sys.executable, "-m", "dsu.cli"]


def snr(want, got) -> float:
    """Signal-to-noise ratio of `got` against `want`, in dB (float64; an exact match is about 300 dB)."""
    want, got = np.asarray(want, np.float64), np.asarray(got, np.float64)
    return 10 * math.log10(float((want ** 2).sum()) / max(float(((want - got) ** 2).sum()), 1e-300))


def write_song(path: Path, seconds: float, sr: int = 44100, channels: int = 2) -> Path:
    """A 220 Hz tone with a little noise, louder on each later channel, as 16-bit PCM."""
    rng = np.random.default_rng(0)
    t = np.arange(int(seconds * sr)) / sr
    tone = 0.3 * np.sin(2 * np.pi * 220 * t) + 0.05 * rng.standard_normal(t.size)
    audio = np.stack([tone * (0.5 + 0.5 * c) for c in range(channels)], 1)
    sf.write(path, audio.astype(np.float32), sr, subtype="PCM_16")
    return path


def tone(path: Path, seconds: float = 1.0, freq: float = 220.0, rate: int = 22050) -> Path:
    """A stereo sine with noise seeded by its frequency, so each file of a library differs."""
    path.parent.mkdir(parents=True, exist_ok=True)
    t = np.arange(int(seconds * rate)) / rate
    x = 0.3 * np.sin(2 * np.pi * freq * t) + 0.02 * np.random.default_rng(int(freq)).standard_normal(len(t))
    sf.write(path, np.stack([x, x * 0.5], 1).astype(np.float32), rate)
    return path


# ---- a worker process, JSON lines both ways ----------------------------------------------------------------

class RawWorker:
    """A worker process, JSON lines both ways; `log` keeps every message read."""

    def __init__(self, tmp: Path, *args: str, argv: list[str] | None = None, env: dict | None = None):
        self.stderr = open(tmp / f"worker-{time.monotonic_ns()}.stderr", "w+")
        argv = argv or [sys.executable, "-m", "dsu.worker"]
        self.proc = subprocess.Popen([*argv, "--threads", "1", *args], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, stderr=self.stderr, env=env or ENV, cwd=tmp)
        self.log: list[dict] = []
        self.lines: queue.Queue = queue.Queue()
        threading.Thread(target=lambda: [self.lines.put(x) for x in self.proc.stdout] + [self.lines.put(b"")],
                         daemon=True).start()

    def read(self, timeout: float = 60) -> dict:
        try:
            line = self.lines.get(timeout=timeout)
        except queue.Empty:
            raise AssertionError(f"no message within {timeout} s; last ones: {self.log[-3:]}") from None
        if not line:
            self.stderr.seek(0)
            raise AssertionError(f"worker ended (rc {self.proc.poll()}); stderr:\n{self.stderr.read()[-3000:]}")
        message = json.loads(line)  # the protocol promise: nothing but JSON objects on stdout
        assert isinstance(message, dict) and message.get("status") in spec.MESSAGES, message
        self.log.append(message)
        return message

    def send_line(self, line: str | bytes) -> None:
        self.proc.stdin.write(line.encode() if isinstance(line, str) else line)
        self.proc.stdin.flush()

    def send(self, **message) -> None:
        self.send_line(json.dumps(message) + "\n")

    def until(self, status: str, id=None) -> list[dict]:
        """Messages up to `status` (or an error) for request `id`; fails on an error unless asked for."""
        seen = []
        while True:
            m = self.read()
            seen.append(m)
            if m.get("id") == id and m["status"] in (status, "error"):
                assert m["status"] == status, m
                return seen

    def ask(self, id=None, **message) -> dict:
        self.send(**message, **({} if id is None else {"id": id}))
        return self.until(final(message["cmd"]), id)[-1]

    def error(self, **message) -> dict:
        self.send(**message)
        return self.until("error", message.get("id"))[-1]

    def __enter__(self) -> RawWorker:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()
        self.stderr.close()


def final(cmd: str) -> str:
    """The status that ends a `cmd` request."""
    return spec.COMMANDS[spec.ALIASES.get(cmd, cmd)].final[0]


# ---- a command line run in this process ---------------------------------------------------------------------

@dataclass
class Ran:
    """What `subprocess.run(..., capture_output=True, text=True)` gives, for a command run in this process."""
    args: list[str]
    returncode: int
    stdout: str
    stderr: str


_ONE_AT_A_TIME = threading.Lock()  # the process's cwd, environment and streams are what the command sees


def in_process(main: Callable[[list[str]], int], args: Sequence, *, cwd: Path, env: dict | None = None,
               stdin: str = "") -> Ran:
    """`main(args)` as its console script would run it, but in this process, which has imported torch
    already: the folder, environment (`env` replaces it), stdin and captured stdout/stderr are the
    command's own for the call, an argparse exit is its exit code. One test per entry point still runs
    the real process; what only a process has (signals, a locale's strict streams) stays there."""
    argv = [str(a) for a in args]
    out, err = io.StringIO(), io.StringIO()
    with _ONE_AT_A_TIME, _environment(env), contextlib.chdir(cwd), \
            _streams(io.StringIO(stdin), out, err):
        try:
            code = main(argv)
        except SystemExit as e:
            code = e.code if isinstance(e.code, int) else (0 if e.code is None else 2)
            if not isinstance(e.code, (int, type(None))):
                print(e.code, file=sys.stderr)
    return Ran(argv, int(code or 0), out.getvalue(), err.getvalue())


@contextlib.contextmanager
def _environment(env: dict | None):
    if env is None:
        yield
        return
    saved = dict(os.environ)
    os.environ.clear()  # in place: code that holds os.environ (a default argument) sees the change
    os.environ.update({k: str(v) for k, v in env.items()})
    try:
        yield
    finally:
        os.environ.clear()
        os.environ.update(saved)


@contextlib.contextmanager
def _streams(stdin, stdout, stderr):
    saved = sys.stdin, sys.stdout, sys.stderr
    sys.stdin, sys.stdout, sys.stderr = stdin, stdout, stderr
    try:
        yield
    finally:
        sys.stdin, sys.stdout, sys.stderr = saved
