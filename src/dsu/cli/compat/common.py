"""What the drop-in command lines share: refusing what DSU cannot honour, by name, and running the
requests they build through the same runner as `dsu separate` (one model load for every track)."""
from __future__ import annotations

import os
import sys
from pathlib import Path

from ...errors import DSUError, speak
from .. import _runner as runner
from ..progress import Display

EXIT_OK, EXIT_FAILED, EXIT_USAGE = runner.EXIT_OK, runner.EXIT_FAILED, runner.EXIT_USAGE


def refuse(prog: str, problems: list[str], flags: dict[str, str] | None = None) -> int:
    """Each problem on stderr, request fields in the tool's flags (`flags`); exit 2."""
    for p in problems:
        print(f"{prog}: {speak(p, flags)}", file=sys.stderr, flush=True)
    return EXIT_USAGE


def models_dir_from_env() -> Path | None:
    value = os.environ.get("DSU_MODELS")
    return Path(value) if value else None


def open_cache(device: str, threads: int | None):
    from ...cache import ModelCache
    return ModelCache(runner.setup_device(device, threads), max_models=1)


def load(request: dict, cache, models_dir, display: Display):
    """(ref, model), or a DSUError the caller reports."""
    return runner.load_model(request, cache=cache, models_dir=models_dir, default_model=None, display=display)


def exit_code(failed: int) -> int:
    """A run's exit status: 1 when any file failed."""
    return EXIT_FAILED if failed else EXIT_OK


def given(request: dict) -> dict:
    """The request without the fields left unset (None), so DSU's defaults apply to them."""
    return {k: v for k, v in request.items() if v is not None}


def run_all(requests: list[dict], cache, models_dir, display: Display) -> int:
    failed = runner.run_separations(requests, cache=cache, models_dir=models_dir, default_model=None,
                                    display=display)
    return exit_code(failed)


def fail(display: Display, error: DSUError) -> int:
    display.error(f"{error.code}: {error.message}", error.code)
    return EXIT_FAILED
