"""A DSU worker that ends with the batch that started it: on Linux the kernel sends it SIGTERM when
its parent dies (PR_SET_PDEATHSIG), so a batch killed with -9 leaves no worker finishing a file that
the next run will also write. Elsewhere the worker ends when it sees its stdin close."""
from __future__ import annotations

import ctypes
import os
import signal
import sys

PARENT_ENV = "DSU_BATCH_PARENT"
PR_SET_PDEATHSIG = 1


def main() -> int:
    if sys.platform.startswith("linux"):
        try:
            ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
        except (OSError, AttributeError):
            pass
    parent = os.environ.get(PARENT_ENV)
    if parent and os.getppid() != int(parent):
        return 0  # the batch died before the line above took effect
    from ..worker import main as worker_main
    return worker_main(sys.argv[1:])


if __name__ == "__main__":
    raise SystemExit(main())
