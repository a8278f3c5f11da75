"""What a command-line run shows while it works: a tqdm bar on a terminal, plain periodic lines in a
log, one JSON line per event for scripts, or nothing but errors.

The bar counts seconds of audio, so its rate is the speed in times real time; the file counter and
the chosen model come in its description. A stderr that is not a terminal gets whole lines only
(never `\\r` frames), at most one per PLAIN_STEP of progress or PLAIN_SECONDS of time."""
from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any, TextIO

from ..errors import speak

MODES = ("quiet", "normal", "verbose", "json")
PLAIN_STEP = 0.10      # a plain line at least every 10 % ...
PLAIN_SECONDS = 10.0   # ... or every 10 s, whichever comes first
BAR_FORMAT = "{desc} {percentage:3.0f}%|{bar}| {n:.0f}/{total:.0f} s [{elapsed}<{remaining}{postfix}]"


def audio_seconds(path: str | Path) -> float | None:
    """The duration of an audio file from its header (None when the header does not tell)."""
    try:
        import soundfile as sf

        from ..paths import native
        info = sf.info(native(path))
        return info.frames / info.samplerate if info.frames > 0 else None
    except Exception:
        return None


def mode_from(quiet: bool = False, verbose: bool = False, as_json: bool = False) -> str:
    return "json" if as_json else "quiet" if quiet else "verbose" if verbose else "normal"


class Display:
    """One run over `total` files. The job code calls `emit(status, **fields)` for its events and the
    object itself (a `progress(fraction)` callback) as the work advances."""

    def __init__(self, mode: str = "normal", total: int = 1, prog: str = "dsu", err: TextIO | None = None,
                 out: TextIO | None = None, terminal: bool | None = None, flags: dict[str, str] | None = None):
        assert mode in MODES, mode
        self.mode, self.total, self.prog = mode, total, prog
        self.flags = flags  # the command line's words for request fields (dsu.cli.vocabulary)
        self.err = err or sys.stderr
        self.out = out or sys.stdout
        self.terminal = self.err.isatty() if terminal is None else terminal
        self.index = 0
        self.name = ""
        self.seconds: float | None = None
        self.started = 0.0
        self._bar: Any = None  # a tqdm bar once drawn
        self._last_line = (0.0, -1.0)  # (time, fraction) of the last plain line
        self._last_percent = -1

    # ---- what the run says ------------------------------------------------------------------------

    def info(self, text: str) -> None:
        """A line for people (the chosen model, where files go); not in quiet or JSON mode."""
        if self.mode in ("normal", "verbose"):
            self._line(f"{self.prog}: {text}")

    def detail(self, text: str) -> None:
        if self.mode == "verbose":
            self._line(f"{self.prog}: {text}")

    def error(self, text: str, code: str = "bad_value", **fields) -> None:
        """One line on stderr (and an `error` event in JSON mode)."""
        self.close_bar()
        text = speak(text, self.flags)
        if self.mode == "json":
            self._json({"status": "error", "code": code, "message": text, **fields})
        print(f"{self.prog}: {text}", file=self.err, flush=True)

    def result(self, line: str) -> None:
        """A line on stdout for scripts (a written path); JSON mode says it in `done` instead."""
        if self.mode != "json":
            print(line, file=self.out, flush=True)

    # ---- per file -----------------------------------------------------------------------------------

    def start(self, path: str | Path) -> None:
        self.close_bar()
        self.index += 1
        self.name = Path(path).name
        self.seconds = audio_seconds(path)
        self.started = time.monotonic()
        self._last_line = (self.started, -1.0)
        self._last_percent = -1

    def emit(self, status: str, **fields) -> None:
        """A job event, in the worker's message shape."""
        if self.mode == "json":
            self._json({"status": status, **fields})
        elif status == "loading_model":
            self.info(f"loading {fields.get('model')} ...")
        elif status == "cache_evicted":
            self.detail(f"dropped {fields.get('model')} from memory")
        elif status in ("separating", "restoring"):
            self.detail(f"{status} {fields.get('input')} with {fields.get('model')}")
        elif status == "denoising":
            self.detail(f"denoising {fields.get('input')}")
        elif status == "preparing" and fields.get("stage") == "converting":
            self.info(f"converting {fields.get('core')} for OpenVINO (first use at this chunk size; cached after) ...")
        elif status == "preparing" and fields.get("stage") == "ready":
            self.detail(f"OpenVINO network of {fields.get('core')} ready in {fields.get('elapsed')} s")

    def __call__(self, fraction: float) -> None:
        fraction = min(max(float(fraction), 0.0), 1.0)
        if self.mode == "json":
            percent = int(fraction * 100)
            if percent != self._last_percent:
                self._last_percent = percent
                self._json({"status": "progress", "input": self.name, "progress": round(fraction, 4),
                            "percent": percent})
        elif self.mode == "quiet":
            return
        elif self.terminal:
            self._draw(fraction)
        else:
            self._plain(fraction)

    def done(self, done: dict) -> None:
        self.close_bar()
        if self.mode == "json":
            self._json({"status": "done", "input": self.name, **done})
            return
        for path in done.get("paths", []):
            self.result(path)
        for warning in done.get("warnings", ()):  # the input was damaged but the job went on
            print(f"{self.prog}: {self.name}: warning: {warning}", file=self.err, flush=True)
        if done.get("ignored"):
            self.info(f"{done['model']} does not use: {', '.join(done['ignored'])}")
        speed = self._speed(time.monotonic() - self.started)
        self.info(f"{self._counter()}{self.name}: {len(done.get('paths', []))} files in "
                  f"{done.get('elapsed', 0):.1f} s{f' ({speed})' if speed else ''}")

    def failed(self, path: str | Path, code: str, message: str) -> None:
        self.close_bar()
        message = speak(message, self.flags)
        if self.mode == "json":
            self._json({"status": "error", "input": str(path), "code": code, "message": message})
        print(f"{self.prog}: {path}: {code}: {message}", file=self.err, flush=True)

    def close_bar(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None

    # ---- drawing --------------------------------------------------------------------------------------

    def _counter(self) -> str:
        return f"[{self.index}/{self.total}] " if self.total > 1 else ""

    def _speed(self, elapsed: float, fraction: float = 1.0) -> str:
        if not self.seconds or elapsed <= 0 or fraction <= 0:
            return ""
        return f"{self.seconds * fraction / elapsed:.2f}x real time"

    def _draw(self, fraction: float) -> None:
        if self._bar is None:
            from tqdm import tqdm
            total = self.seconds or 1.0
            fmt = BAR_FORMAT if self.seconds else BAR_FORMAT.replace(" {n:.0f}/{total:.0f} s", "")
            self._bar = tqdm(total=total, desc=f"{self._counter()}{self.name}", file=self.err, leave=True,
                             bar_format=fmt,
                             dynamic_ncols=True, mininterval=0.2)
        target = fraction * self._bar.total
        self._bar.set_postfix_str(self._speed(time.monotonic() - self.started, fraction) or "", refresh=False)
        self._bar.update(target - self._bar.n)

    def _plain(self, fraction: float) -> None:
        now = time.monotonic()
        last_time, last_fraction = self._last_line
        if fraction < 1.0 and fraction - last_fraction < PLAIN_STEP and now - last_time < PLAIN_SECONDS:
            return
        if fraction >= 1.0 and last_fraction >= 1.0:
            return
        self._last_line = (now, fraction)
        elapsed = now - self.started
        parts = [f"{self._counter()}{self.name} {fraction * 100:3.0f}%", f"{elapsed:.1f} s"]
        if 0 < fraction < 1:
            parts.append(f"ETA {elapsed * (1 - fraction) / fraction:.0f} s")
        speed = self._speed(elapsed, fraction)
        if speed:
            parts.append(speed)
        self._line(f"{self.prog}: " + ", ".join(parts))

    def _line(self, text: str) -> None:
        if self._bar is not None:
            self._bar.write(text, file=self.err)
        else:
            print(text, file=self.err, flush=True)

    def _json(self, message: dict) -> None:
        print(json.dumps(message, default=str), file=self.out, flush=True)
