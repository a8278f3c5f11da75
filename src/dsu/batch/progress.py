"""One progress display for a whole batch: files done of total, the files being separated, audio
minutes separated per wall-clock minute and the time left. A tqdm bar on a terminal, plain lines
(one per finished file) when stderr is a file or a pipe."""
from __future__ import annotations

import os
import sys
import threading
import time
from datetime import timedelta


class BatchDisplay:
    def __init__(self, total: int, skipped: int = 0, enabled: bool = True, stream=None):
        self.stream = stream or sys.stderr
        self.total, self.enabled = total, enabled and total > 0
        self.tty = self.enabled and hasattr(self.stream, "isatty") and self.stream.isatty()
        self.started_at = time.monotonic()
        self.count = 0
        self.audio_seconds = 0.0
        self.current: dict[str, float] = {}
        self._lock = threading.Lock()
        self.bar = None
        if self.tty:
            from tqdm import tqdm
            sized = _columns(self.stream) > 0  # a pty that reports 0 columns (script, some CI) gets 100
            self.bar = tqdm(total=total, unit="file", file=self.stream, desc="dsu batch", dynamic_ncols=sized,
                            ncols=None if sized else 100)
        if self.enabled and skipped:
            self._say(f"dsu batch: {skipped} file(s) already done (see the manifest), {total} to do")

    def rate(self) -> float:
        """Audio minutes per wall minute so far."""
        wall = time.monotonic() - self.started_at
        return self.audio_seconds / wall if wall > 0 else 0.0

    def started(self, name: str) -> None:
        with self._lock:
            self.current[name] = 0.0
            self._refresh()

    def progress(self, name: str, fraction: float) -> None:
        with self._lock:
            if name in self.current and int(fraction * 20) != int(self.current[name] * 20):
                self.current[name] = fraction
                self._refresh()

    def finished(self, name: str, status: str, seconds: float | None, audio: float | None, where: str) -> None:
        with self._lock:
            self.current.pop(name, None)
            self.count += 1
            self.audio_seconds += audio or 0.0
            if self.bar is not None:
                self.bar.update(1)
                self._refresh()
                if status != "done":
                    self.bar.write(f"dsu batch: {name}: {status}", file=self.stream)
            elif self.enabled:
                left = self.total - self.count
                spent = time.monotonic() - self.started_at
                eta = timedelta(seconds=round(spent / self.count * left))
                took = f" in {seconds:.1f} s" if seconds is not None else ""
                self._say(f"dsu batch: [{self.count}/{self.total}] {name} {status}{took} ({where}) · "
                          f"{self.rate():.1f} audio-min/min · ETA {eta}")

    def _refresh(self) -> None:
        if self.bar is None:
            return
        now = ", ".join(f"{n} {f:.0%}" for n, f in list(self.current.items())[:4])
        more = len(self.current) - 4
        self.bar.set_postfix_str(f"{self.rate():.1f} audio-min/min" + (f" | {now}" if now else "")
                                 + (f" +{more}" if more > 0 else ""), refresh=True)

    def note(self, text: str) -> None:
        """A line of its own, even with the display off (a stop, a warning)."""
        with self._lock:
            self._say(text)

    def _say(self, text: str) -> None:
        if self.bar is not None:
            self.bar.write(text, file=self.stream)
        else:
            print(text, file=self.stream, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def _columns(stream) -> int:
    try:
        return os.get_terminal_size(stream.fileno()).columns
    except (OSError, ValueError, AttributeError):
        return 0
