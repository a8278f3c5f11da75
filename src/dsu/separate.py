"""One separation job: a file in, stem files out, through a loaded model and the engine.

This is the only place that joins audio files, families and the engine; the worker and the CLI call
`separate_file` with plain values and get plain values back."""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch

from . import engine, memory, outputs, paths, tempfiles
from .audio import FileSignal, StemWriter
from .errors import DSUError
from .families import FAMILIES, Separator


@dataclass
class JobResult:
    output_dir: str
    files: list[str]
    paths: list[str]
    stems: list[str]
    elapsed: float
    samplerate: int
    extra: dict = field(default_factory=dict)


def stem_paths(layout: str, output_dir: Path, model_name: str, input_path: Path, stems: list[str],
               ext: str, **naming) -> dict[str, Path]:
    """Each stem's file under `output_dir` (see `dsu.outputs`; `naming`: family, output_names, labels)."""
    return outputs.stem_paths(layout, output_dir, model_name, input_path, stems, ext, **naming)


def clean_debris(folders) -> list[Path]:
    """Remove what killed jobs left in these folders (partials whose owner process is gone)."""
    removed = [p for folder in {Path(f) for f in folders} for p in tempfiles.clean_folder(folder)]
    return removed + tempfiles.clean_decode_files()


LOWER = "`batch_size`, `shifts`, chunk/segment/window sizes"


def estimate_of(model: Separator, length: int, options: dict, label: str = "") -> memory.Estimate | None:
    """The model's memory estimate for this job (`label` names the model in it), None when unknown."""
    try:
        estimate = model.memory_estimate(length, **options)
    except (TypeError, ValueError, OverflowError):
        return None  # an option the model cannot read: its own check in `passes` names it
    if estimate is not None and label:
        estimate = memory.Estimate(estimate.host, estimate.device, f"{label}: {estimate.what}")
    return estimate


def make_passes(model: Separator, signal, options: dict, cancelled, needed: memory.Estimate | None = None) -> list:
    """The model's passes over `signal` once the memory the job needs fits (`needed`, else the model's
    own estimate); the decoding they need first (statistics, peaks) stops at the next block when the
    job is cancelled."""
    memory.check(needed or estimate_of(model, signal.length, options), model.device, LOWER)
    signal.cancelled = cancelled
    try:
        return model.passes(signal, **options)
    except engine.Cancelled:
        raise DSUError("cancelled", "the job was cancelled; none of its output was kept") from None


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
    except engine.Cancelled:
        writer.abort()
        raise DSUError("cancelled", "the job was cancelled; none of its output was kept") from None
    except torch.OutOfMemoryError:
        writer.abort()
        raise DSUError("out_of_memory", f"the device ran out of memory: lower {lower}, or use --device cpu") from None
    except BaseException:
        writer.abort()
        raise


def _pick_stems(model: Separator, produced: list[str], stems, two_stems) -> list[str]:
    """The stems to write, asked for in any case and named in the model's own spelling."""
    spelled = {s.lower(): s for s in produced}
    if two_stems:
        if two_stems.lower() not in spelled:
            raise DSUError("bad_value", f"two_stems={two_stems!r}: this model has {', '.join(produced)}")
        two_stems = spelled[two_stems.lower()]
        return [two_stems, f"no_{two_stems}"]
    if stems:
        if isinstance(stems, str):
            stems = [stems]
        unknown = [s for s in stems if s.lower() not in spelled]
        if unknown:
            raise DSUError("bad_value", f"stems {unknown} are not produced by {model.name}: "
                                        f"choose from {', '.join(produced)}")
        return list(dict.fromkeys(spelled[s.lower()] for s in stems))
    return produced


def separate_file(model: Separator, input_path: str | Path, output_dir: str | Path, *,
                  family: str | None = None, fmt: str = "wav", bit_depth: int | None = None,
                  stems=None, two_stems: str | None = None, sample_rate="model",
                  options: dict | None = None, layout: str | None = None, output_names: dict | None = None,
                  sanitize: bool = False, mp3_bitrate: int | None = None,
                  progress: Callable[[float], None] | None = None,
                  cancelled: Callable[[], bool] | None = None) -> JobResult:
    started = time.perf_counter()
    fam = FAMILIES[family or model.family]
    options = dict(options or {})
    input_path = paths.check_input(input_path)
    output_dir = paths.check_output_dir(output_dir)
    signal = FileSignal(input_path, model.samplerate, model.audio_channels, sanitize=sanitize)
    if sample_rate in (None, "model"):
        out_rate = model.samplerate
    elif sample_rate == "input":
        out_rate = signal.input_samplerate
    else:
        try:
            out_rate = int(sample_rate)
        except (TypeError, ValueError):
            raise DSUError("bad_value", f"sample_rate must be 'model', 'input' or a number, "
                                        f"not {sample_rate!r}") from None
    produced = model.output_stems(**options)
    wanted = _pick_stems(model, produced, stems, two_stems)
    if two_stems:
        two_stems = wanted[0]
    targets = stem_paths(layout or fam.layout, output_dir, model.name, input_path, wanted, fmt, family=fam.name,
                         output_names=outputs.check_output_names(output_names),
                         labels=getattr(model, "labels", None))
    clean_debris([output_dir, *(p.parent for p in targets.values())])
    passes = make_passes(model, signal, options, cancelled)
    needs_mix = type(model).finish is not Separator.finish or bool(two_stems)
    mix_reader = signal.fresh() if needs_mix else None
    position = 0
    writer = StemWriter(targets, model.samplerate, model.audio_channels, fmt,
                        bit_depth or fam.default_bit_depth, out_rate, peak_limit=model.peak_limit(**options),
                        mp3_bitrate=mp3_bitrate)

    def sink(block: torch.Tensor) -> None:
        nonlocal position
        n = block.shape[-1]
        by_stem = dict(zip(model.stems, block, strict=False))
        mix = None
        if mix_reader is not None:
            mix = mix_reader.read(position, position + n)
            mix_reader.forget(position + n)
            by_stem = model.finish(by_stem, mix, **options)
        if two_stems:
            others = [v for k, v in by_stem.items() if k != two_stems and k in model.stems]
            by_stem[f"no_{two_stems}"] = sum(others) if others else mix - by_stem[two_stems]
        writer.write({s: by_stem[s] for s in wanted})
        position += n

    try:
        written = run_into(writer, passes, signal.length, sink, progress, cancelled,
                           lower="`batch_size` or `segment`")
    finally:
        signal.close()
    folder, files = outputs.written_folder(written, output_dir)
    return JobResult(output_dir=str(folder), files=files,
                     paths=[str(p.resolve()) for p in written], stems=wanted,
                     elapsed=time.perf_counter() - started, samplerate=out_rate,
                     extra={"warnings": signal.warnings} if signal.warnings else {})
