"""One restoration job: a file in, one restored file out, through a loaded Apollo and the engine.

The input keeps its channels (each is restored on its own) and is decoded and resampled to the
model's rate as the chunks need it; the output is written block by block under a temporary name
and renamed when complete."""
from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

from .. import families, paths
from ..audio import FileSignal, StemWriter, output_format
from ..cache import ModelCache
from ..errors import DSUError
from ..families import FAMILIES, LoadedModel
from . import models as model_jobs
from ._pipeline import Cancelled, Emit, JobResult, Progress, clean_debris, done_fields, make_passes, run_into

STEM = "restored"


def restore_file(model: LoadedModel, input_path: str | Path, output_path: str | Path, *,
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


def run(fields: dict, *, cache: ModelCache, models_dir: Path | None, emit: Emit,
            progress: Progress | None = None, cancelled: Cancelled | None = None) -> dict:
    started = time.perf_counter()
    paths.check_input(fields["input"])
    paths.check_output_file(fields["output"])
    model_path, config_path = model_jobs.apollo_files(fields, models_dir)
    ref = families.resolve({"model_path": model_path, "config_path": config_path,
                            "model_type": "apollo", **{k: fields[k] for k in model_jobs.APOLLO_KEYS if k in fields}},
                           models_dir)
    model, from_cache = model_jobs.load(ref, cache, emit)
    if cancelled is not None and cancelled():
        raise DSUError("cancelled", "the job was cancelled before it started")
    emit("restoring", input=fields["input"], model=ref.name)
    tuning = {k: fields[k] for k in ("chunk_seconds", "overlap_seconds", "format", "bit_depth", "sanitize")
              if fields.get(k) is not None}
    tuning["fmt"] = tuning.pop("format", None)
    result = restore_file(model, fields["input"], fields["output"], progress=progress,
                          cancelled=cancelled, **tuning)
    return done_fields(result, ref, from_cache, started)
