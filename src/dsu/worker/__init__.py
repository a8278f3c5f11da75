"""The persistent worker: JSON commands on stdin, one per line; JSON answers on stdout.

    python -m dsu.worker [--models-dir DIR] [--device auto|cpu|cuda|mps] [--threads N] ...

Start-up order matters: stdout is guarded and `loading` sent before torch is imported, signals are
taken before the first job can run."""
from __future__ import annotations

import faulthandler
import os
import signal
import sys

from .config import WorkerConfig, parse_args
from .stdio import ProtocolOut

# how long a stopping worker waits for the running job to reach its next chunk before exiting anyway
STOP_GRACE_SECONDS = 30.0


def serve(config: WorkerConfig) -> int:
    out = ProtocolOut.guard()
    out.send({"status": "loading"})
    if hasattr(signal, "SIGUSR1"):  # `kill -USR1 <pid>`: every thread's stack on stderr, for a stuck worker
        faulthandler.register(signal.SIGUSR1, all_threads=True)
    stop: dict[str, str | None] = {"reason": None}

    def early_stop(signum, frame):
        stop["reason"] = "signal"

    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, early_stop)
    try:
        from .server import Server
        server = Server(config, out)
    except Exception as e:
        out.send({"status": "error", "code": "internal",
                  "message": f"the worker could not start: {type(e).__name__}: {e}"})
        raise
    if stop["reason"]:
        out.send({"status": "exiting", "reason": stop["reason"]})
        return 0

    def on_signal(signum, frame):
        server.terminate("signal")

    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, on_signal)
    out.send(server.ready_message())
    server.start()
    # the main thread only waits, so a signal handler never interrupts it inside a lock
    while not server.finished.wait(1.0):
        if server.stop_requested.is_set():
            server.finished.wait(STOP_GRACE_SECONDS)
            break
    server.exiting_message()
    return 0


def main(argv: list[str] | None = None, name: str = "dsu") -> int:
    return run(parse_args(argv, name))


def run(config: WorkerConfig) -> int:
    code = serve(config)
    # threads may still block on stdin or in a library: leave without waiting for them
    sys.stderr.flush()
    os._exit(code)


__all__ = ["main", "run", "serve", "WorkerConfig", "parse_args"]
