"""One restoration job: a file in, one restored file out, through a loaded Apollo and the engine.

The input keeps its channels (each is restored on its own) and is decoded and resampled to the
model's rate as the chunks need it; the output is written block by block under a temporary name
and renamed when complete."""
from __future__ import annotations

import time
from pathlib import Path
from typing import Callable

from . import paths
from .audio import FileSignal, StemWriter, output_format
from .families import FAMILIES, Separator
from .separate import JobResult, clean_debris, make_passes, run_into

STEM = "restored"


def restore_file(model: Separator, input_path: str | Path, output_path: str | Path, *,
                 chunk_seconds: float | None = None, overlap_seconds: float | None = None,
                 fmt: str | None = None, bit_depth: int | None = None, sanitize: bool = False,
                 progress: Callable[[float], None] | None = None,
                 cancelled: Callable[[], bool] | None = None) -> JobResult:
    started = time.perf_counter()
    input_path = paths.check_input(input_path)
    output_path = paths.check_output_file(output_path)
    output_path = output_path.parent / paths.safe_component(output_path.name)
    paths.check_not_input(output_path, {input_path: "the `input`"})
    fmt = output_format(output_path, fmt)
    clean_debris([output_path.parent])
    signal = FileSignal(input_path, model.samplerate, sanitize=sanitize)  # the input's own channels
    try:
        passes = make_passes(model, signal, {"chunk_seconds": chunk_seconds, "overlap_seconds": overlap_seconds},
                             cancelled)
        writer = StemWriter({STEM: output_path}, model.samplerate, signal.channels, fmt,
                            bit_depth or FAMILIES[model.family].default_bit_depth)
        run_into(writer, passes, signal.length, lambda block: writer.write({STEM: block[0]}), progress, cancelled,
                 lower="`chunk_seconds`")
    finally:
        signal.close()
    return JobResult(output_dir=str(output_path.parent.resolve()), files=[output_path.name],
                     paths=[str(output_path.resolve())], stems=[STEM],
                     elapsed=time.perf_counter() - started, samplerate=model.samplerate,
                     extra={"warnings": signal.warnings} if signal.warnings else {})
