"""DSU (Doctor Sample Unit): music source separation and restoration as persistent workers, and as a
Python library: `dsu.Separator`, `dsu.Restorer`, `dsu.Ensemble` (see `dsu.api`), `dsu.DSUError`."""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"
__all__ = ["DSUError", "Ensemble", "Restorer", "Separator", "__version__"]

if TYPE_CHECKING:
    from .api import Ensemble, Restorer, Separator
    from .errors import DSUError


def __getattr__(name: str) -> Any:
    # lazily, so that `import dsu` (every command line, the worker's start) does not import torch
    if name == "DSUError":
        from .errors import DSUError
        return DSUError
    if name in ("Separator", "Restorer", "Ensemble"):
        from . import api
        return getattr(api, name)
    raise AttributeError(f"module 'dsu' has no attribute {name!r}")
