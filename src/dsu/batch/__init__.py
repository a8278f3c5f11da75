"""Resumable batches: whole folders through one model on N local workers or a Ray cluster.

    from dsu.batch import run
    summary = run(["music/"], "stems/", {"model": "dsp"}, jobs=2)
"""
from .runner import Interrupted, Summary, run

__all__ = ["run", "Summary", "Interrupted"]
