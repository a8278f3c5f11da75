"""What every job shares: its result, the model's passes once the memory fits, the engine's run into
stem writers (partials removed on any failure), and the fields of the job's answer."""
from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .. import backends, engine, memory, tempfiles
from ..audio import StemWriter
from ..families import LoadedModel, ModelRef
from . import failures

Emit = Callable[..., None]          # emit(status, **fields): an interim message of this job
Progress = Callable[[float], None]
Cancelled = Callable[[], bool]


@dataclass
class JobResult:
    output_dir: str
    files: list[str]
    paths: list[str]
    stems: list[str]
    elapsed: float
    samplerate: int
    extra: dict = field(default_factory=dict)


def clean_debris(folders) -> list[Path]:
    """Remove what killed jobs left in these folders (partials whose owner process is gone)."""
    removed = [p for folder in {Path(f) for f in folders} for p in tempfiles.clean_folder(folder)]
    return removed + tempfiles.clean_decode_files()


LOWER = "`batch_size`, `shifts`, chunk/segment/window sizes"


def estimate_of(model: LoadedModel, length: int, options: dict, label: str = "",
                runtime: backends.Runtime | None = None) -> memory.Estimate | None:
    """The model's memory estimate for this job (`label` names the model in it), None when unknown;
    on OpenVINO with the converter's peak and the compiled network beside the torch weights."""
    try:
        estimate = model.memory_estimate(length, **options)
    except (TypeError, ValueError, OverflowError):
        return None  # an option the model cannot read: its own check in `passes` names it
    if estimate is not None and runtime is not None and runtime.backend == "openvino":
        estimate = memory.Estimate(estimate.host + backends.extra_memory(model.nbytes()), estimate.device,
                                   f"{estimate.what}, OpenVINO conversion")
    if estimate is not None and label:
        estimate = memory.Estimate(estimate.host, estimate.device, f"{label}: {estimate.what}")
    return estimate


def runtime_for(model: LoadedModel, options: dict, models_dir: Path | None = None,
                emit: Emit | None = None) -> backends.Runtime:
    """The backend and precision the request's options ask for on the model's device; converted
    networks are cached under `models_dir` (else the default models dir), `emit` hears `preparing`."""
    if models_dir is None:
        from ..catalog.store import default_models_dir
        models_dir = default_models_dir()
    return backends.choose(options.get("backend"), options.get("precision"), device=model.device,
                           family=model.family, amp=model.amp, cache_dir=models_dir, notify=emit)


def make_passes(model: LoadedModel, signal, options: dict, cancelled, needed: memory.Estimate | None = None,
                runtime: backends.Runtime | None = None) -> list:
    """The model's passes over `signal` on `runtime` (else the one `options` ask for) once the memory
    the job needs fits (`needed`, else the model's own estimate); the decoding they need first
    (statistics, peaks) stops at the next block when the job is cancelled."""
    runtime = runtime or runtime_for(model, options)
    memory.check(needed or estimate_of(model, signal.length, options, runtime=runtime), model.device, LOWER)
    signal.cancelled = cancelled
    try:
        return model.passes(signal, runtime=runtime, **options)
    except engine.Cancelled:
        raise failures.cancelled_error() from None


def run_into(writer: StemWriter, passes, length: int, sink, progress, cancelled, lower: str) -> list[Path]:
    """The engine's run over `passes` into `writer` (see `write_all`)."""
    return write_all(writer, lambda: engine.run(passes, length, sink, progress, cancelled), lower)


def write_all(writer: StemWriter, work: Callable[[], None], lower: str) -> list[Path]:
    """`work()`, which writes into `writer`, then the files committed; on cancel, running out of
    memory or any error the partial files are removed (`lower`: what to lower on out of memory;
    a full disk or a removed folder is the writer's own `output_not_writable`)."""
    try:
        work()
        return writer.commit()
    except BaseException as e:
        writer.abort()
        failures.reraise(e, lower)


def runtime_fields(runtime: backends.Runtime, warnings: list[str]) -> dict[str, Any]:
    """A result's `extra`: what ran the network, and every warning (the input's, then the backend's)."""
    said = [*warnings, *runtime.warnings]
    return {**runtime.fields(), **({"warnings": said} if said else {})}


def done_fields(result: JobResult, ref: ModelRef, from_cache: bool, started: float) -> dict[str, Any]:
    """The fields of a job's `done` message; `elapsed` counts from the job's start, model load included."""
    return {**result_fields(result, started), "model": ref.name, "model_from_cache": from_cache}


def result_fields(result: JobResult, started: float) -> dict[str, Any]:
    return {"elapsed": round(time.perf_counter() - started, 3), "output_dir": result.output_dir,
            "files": result.files, "paths": result.paths, "stems": result.stems, **result.extra}
