"""The worker's pipes: protocol JSON on the real stdout only, everything else to stderr, and request
lines read from stdin without Python's buffered stdin (whose lock a reader thread would still hold
when the interpreter shuts down)."""
from __future__ import annotations

import json
import math
import os
import sys
import threading
from typing import Callable, Iterator


class ProtocolOut:
    """One JSON object per line on a file descriptor nothing else writes to.

    `guard()` moves the process's own stdout (fd 1, `sys.stdout`) to stderr first, so a library's
    print or a C library's write lands on stderr instead of in the protocol."""

    def __init__(self, fd: int):
        self.fd = fd
        self._lock = threading.RLock()  # re-entrant: a signal handler may report while the main thread writes
        self.broken: Callable[[], None] | None = None  # called once when the reader of our stdout is gone
        self._closed = False

    @classmethod
    def guard(cls) -> "ProtocolOut":
        sys.stdout.flush()
        protocol_fd = os.dup(1)
        os.set_inheritable(protocol_fd, False)  # child processes (ffmpeg) must not get the protocol pipe
        os.dup2(2, 1)
        sys.stdout = sys.stderr
        return cls(protocol_fd)

    def send(self, message: dict) -> None:
        line = (json.dumps(_finite(message), ensure_ascii=False, default=str) + "\n").encode("utf-8")
        with self._lock:
            if self._closed:
                return
            try:
                view = memoryview(line)
                while view:
                    view = view[os.write(self.fd, view):]
            except OSError:  # EPIPE: whoever started us is gone; nobody will read another line
                self._closed = True
                if self.broken is not None:
                    self.broken()


def _finite(value):
    """JSON has no NaN/Infinity: send null rather than a line strict parsers reject."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    return value


def read_lines(fd: int = 0, size: int = 1 << 16) -> Iterator[bytes]:
    """Lines of `fd` (without their newline) until end of file; a last line without newline counts."""
    pending = b""
    while True:
        try:
            data = os.read(fd, size)
        except OSError:
            data = b""
        if not data:
            if pending:
                yield pending
            return
        pending += data
        *lines, pending = pending.split(b"\n")
        yield from lines
