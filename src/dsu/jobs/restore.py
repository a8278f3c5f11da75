"""One restoration job: a file in, one restored file out, through a loaded Apollo and the engine.

The input keeps its channels (each is restored on its own) and is decoded and resampled to the
model's rate as the chunks need it; the output is written block by block under a temporary name
and renamed when complete."""
from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import torch

from .. import backends, engine, families, paths
from ..audio import FileSignal, StemWriter, output_format
from ..cache import ModelCache
from ..families import FAMILIES, LoadedModel
from . import failures
from . import models as model_jobs
from ._pipeline import (
    Cancelled,
    Emit,
    JobResult,
    Progress,
    clean_debris,
    done_fields,
    make_passes,
    run_into,
    runtime_fields,
    runtime_for,
)
from .failures import stop_if_cancelled

STEM = "restored"


def _checked_output(output_path, input_path: Path) -> Path:
    """The output file checked, its name made safe, and refused when it is the input itself."""
    output_path = paths.check_output_file(output_path)
    output_path = output_path.parent / paths.safe_component(output_path.name)
    paths.check_not_input(output_path, {input_path: "the `input`"})
    return output_path


def restore_file(model: LoadedModel, input_path: str | Path, output_path: str | Path, *,
                 chunk_seconds: float | None = None, overlap_seconds: float | None = None,
                 fmt: str | None = None, bit_depth: int | None = None, sanitize: bool = False,
                 progress: Callable[[float], None] | None = None,
                 cancelled: Callable[[], bool] | None = None, backend: str | None = None,
                 precision: str | None = None, runtime: backends.Runtime | None = None) -> JobResult:
    """`model` over the file at `input_path` into `output_path`, both checked here (`run` checks them
    before the model loads and hands them to `_restore`). `runtime`: what runs the network, else the
    one `backend` and `precision` ask for."""
    input_path = paths.check_input(input_path)
    return _restore(model, input_path, _checked_output(output_path, input_path), chunk_seconds=chunk_seconds,
                    overlap_seconds=overlap_seconds, fmt=fmt, bit_depth=bit_depth, sanitize=sanitize,
                    progress=progress, cancelled=cancelled,
                    runtime=runtime or runtime_for(model, {"backend": backend, "precision": precision}))


def _restore(model: LoadedModel, input_path: Path, output_path: Path, *, chunk_seconds: float | None = None,
             overlap_seconds: float | None = None, fmt: str | None = None, bit_depth: int | None = None,
             sanitize: bool = False, progress: Callable[[float], None] | None = None,
             cancelled: Callable[[], bool] | None = None, runtime: backends.Runtime = backends.EXACT) -> JobResult:
    """`restore_file` with the input and the output file already checked."""
    started = time.perf_counter()
    fmt = output_format(output_path, fmt)
    clean_debris([output_path.parent])
    signal = FileSignal(input_path, model.samplerate, sanitize=sanitize, checked=True)  # the input's own channels
    try:
        passes = make_passes(model, signal, {"chunk_seconds": chunk_seconds, "overlap_seconds": overlap_seconds},
                             cancelled, runtime=runtime)
        writer = StemWriter({STEM: output_path}, model.samplerate, signal.channels, fmt,
                            bit_depth or FAMILIES[model.family].default_bit_depth)
        run_into(writer, passes, signal.length, lambda block: writer.write({STEM: block[0]}), progress, cancelled,
                 lower="`chunk_seconds`")
    finally:
        signal.close()
    return JobResult(output_dir=str(output_path.parent.resolve()), files=[output_path.name],
                     paths=[str(output_path.resolve())], stems=[STEM],
                     elapsed=time.perf_counter() - started, samplerate=model.samplerate,
                     extra=runtime_fields(runtime, signal.warnings))


def restore_signal(model: LoadedModel, signal, *, chunk_seconds: float | None = None,
                   overlap_seconds: float | None = None, progress: Progress | None = None,
                   cancelled: Cancelled | None = None,
                   runtime: backends.Runtime = backends.EXACT) -> tuple[torch.Tensor, dict]:
    """`model` over `signal` (at the model's rate, its own channels) into one tensor [channels, samples],
    the blocks `restore_file` writes; and the result's `extra`."""
    pieces: list[torch.Tensor] = []
    try:
        passes = make_passes(model, signal, {"chunk_seconds": chunk_seconds, "overlap_seconds": overlap_seconds},
                             cancelled, runtime=runtime)
        engine.run(passes, signal.length, lambda block: pieces.append(block[0].float().clone()), progress,
                   cancelled)
    except BaseException as e:
        failures.reraise(e, "`chunk_seconds`")
    finally:
        signal.close()
    out = torch.cat(pieces, -1) if pieces else torch.zeros(signal.channels, 0)
    return out, runtime_fields(runtime, signal.warnings)


def run(fields: dict, *, cache: ModelCache, models_dir: Path | None, emit: Emit,
            progress: Progress | None = None, cancelled: Cancelled | None = None) -> dict:
    started = time.perf_counter()
    input_path = paths.check_input(fields["input"])
    output_path = _checked_output(fields["output"], input_path)
    model_path, config_path = model_jobs.apollo_files(fields, models_dir)
    ref = families.resolve({"model_path": model_path, "config_path": config_path,
                            "model_type": "apollo", **{k: fields[k] for k in model_jobs.APOLLO_KEYS if k in fields}},
                           models_dir)
    model, from_cache = model_jobs.load(ref, cache, emit)
    stop_if_cancelled(cancelled, "before it started")
    emit("restoring", input=fields["input"], model=ref.name)
    tuning = {k: fields[k] for k in ("chunk_seconds", "overlap_seconds", "format", "bit_depth", "sanitize")
              if fields.get(k) is not None}
    tuning["fmt"] = tuning.pop("format", None)
    runtime = runtime_for(model, fields, models_dir, emit)
    result = _restore(model, input_path, output_path, progress=progress, cancelled=cancelled, runtime=runtime,
                      **tuning)
    return done_fields(result, ref, from_cache, started)
