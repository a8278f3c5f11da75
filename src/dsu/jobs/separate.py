"""One separation job: a file in, stem files out, through a loaded model and the engine.

This is the only place that joins audio files, families and the engine; the worker and the CLI call
`separate_file` with plain values and get plain values back."""
from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import torch

from .. import backends, engine, families, paths
from ..audio import FileSignal, StemWriter
from ..cache import ModelCache
from ..errors import DSUError
from ..families import FAMILIES, LoadedModel
from . import failures, outputs
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


def _pick_stems(model: LoadedModel, produced: list[str], stems, two_stems) -> list[str]:
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


def separate_file(model: LoadedModel, input_path: str | Path, output_dir: str | Path, *,
                  family: str | None = None, fmt: str = "wav", bit_depth: int | None = None,
                  stems=None, two_stems: str | None = None, sample_rate="model",
                  options: dict | None = None, layout: str | None = None, output_names: dict | None = None,
                  sanitize: bool = False, mp3_bitrate: int | None = None,
                  progress: Progress | None = None, cancelled: Cancelled | None = None,
                  runtime: backends.Runtime | None = None) -> JobResult:
    """`model` over the file at `input_path`, its stems written under `output_dir`; both are checked
    here (`run` checks them before the model loads and hands them to `_separate`). `runtime`: what
    runs the network (else what `options`' backend and precision ask for)."""
    return _separate(model, paths.check_input(input_path), paths.check_output_dir(output_dir), family=family,
                     fmt=fmt, bit_depth=bit_depth, stems=stems, two_stems=two_stems, sample_rate=sample_rate,
                     options=options, layout=layout, output_names=outputs.check_output_names(output_names),
                     sanitize=sanitize, mp3_bitrate=mp3_bitrate, progress=progress, cancelled=cancelled,
                     runtime=runtime)


def _out_rate(sample_rate, model: LoadedModel, signal: FileSignal) -> int:
    if sample_rate in (None, "model"):
        return model.samplerate
    if sample_rate == "input":
        return signal.input_samplerate
    try:
        return int(sample_rate)
    except (TypeError, ValueError):
        raise DSUError("bad_value", f"sample_rate must be 'model', 'input' or a number, "
                                    f"not {sample_rate!r}") from None


def _separate(model: LoadedModel, input_path: Path, output_dir: Path, *, family: str | None, fmt: str,
              bit_depth: int | None, stems, two_stems: str | None, sample_rate, options: dict | None,
              layout: str | None, output_names: dict[str, str], sanitize: bool, mp3_bitrate: int | None,
              progress: Progress | None, cancelled: Cancelled | None,
              runtime: backends.Runtime | None = None) -> JobResult:
    """`separate_file` with the input, the output folder and `output_names` already checked."""
    started = time.perf_counter()
    fam = FAMILIES[family or model.family]
    options = dict(options or {})
    signal = FileSignal(input_path, model.samplerate, model.audio_channels, sanitize=sanitize, checked=True)
    out_rate = _out_rate(sample_rate, model, signal)
    produced = model.output_stems(**options)
    wanted = _pick_stems(model, produced, stems, two_stems)
    if two_stems:
        two_stems = wanted[0]
    targets = outputs.stem_paths(layout or fam.layout, output_dir, model.name, input_path, wanted, fmt,
                                 family=fam.name, output_names=output_names,
                                 labels=getattr(model, "labels", None))
    clean_debris([output_dir, *(p.parent for p in targets.values())])
    runtime = runtime or runtime_for(model, options)
    passes = make_passes(model, signal, options, cancelled, runtime=runtime)
    writer = StemWriter(targets, model.samplerate, model.audio_channels, fmt,
                        bit_depth or fam.default_bit_depth, out_rate, peak_limit=model.peak_limit(**options),
                        mp3_bitrate=mp3_bitrate)
    sink = _stem_sink(model, signal, options, wanted, two_stems, writer.write)
    try:
        written = run_into(writer, passes, signal.length, sink, progress, cancelled,
                           lower="`batch_size` or `segment`")
    finally:
        signal.close()
    folder, files = outputs.written_folder(written, output_dir)
    return JobResult(output_dir=str(folder), files=files,
                     paths=[str(p.resolve()) for p in written], stems=wanted,
                     elapsed=time.perf_counter() - started, samplerate=out_rate,
                     extra=runtime_fields(runtime, signal.warnings))


def _stem_sink(model: LoadedModel, signal, options: dict, wanted: list[str], two_stems: str | None,
               put: Callable[[dict[str, torch.Tensor]], None]) -> Callable[[torch.Tensor], None]:
    """The engine's sink: each block as the `wanted` stems, after the model's own finish (which may
    need the mixture) and `no_<stem>` of `two_stems`, handed to `put`."""
    needs_mix = type(model).finish is not LoadedModel.finish or bool(two_stems)
    mix_reader = signal.fresh() if needs_mix else None
    position = 0

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
        put({s: by_stem[s] for s in wanted})
        position += n
    return sink


def separate_signal(model: LoadedModel, signal, *, stems=None, two_stems: str | None = None,
                    options: dict | None = None, progress: Progress | None = None,
                    cancelled: Cancelled | None = None,
                    runtime: backends.Runtime | None = None) -> tuple[dict[str, torch.Tensor], dict]:
    """`model` over `signal` (already at the model's rate and channels) into whole tensors, exactly the
    blocks `separate_file` hands its writer: (stem -> [channels, samples], the result's `extra`)."""
    options = dict(options or {})
    wanted = _pick_stems(model, model.output_stems(**options), stems, two_stems)
    runtime = runtime or runtime_for(model, options)
    passes = make_passes(model, signal, options, cancelled, runtime=runtime)
    pieces: dict[str, list[torch.Tensor]] = {s: [] for s in wanted}

    def put(blocks: dict[str, torch.Tensor]) -> None:
        for stem, block in blocks.items():
            pieces[stem].append(block.float().clone())
    sink = _stem_sink(model, signal, options, wanted, wanted[0] if two_stems else None, put)
    try:
        engine.run(passes, signal.length, sink, progress, cancelled)
    except BaseException as e:
        failures.reraise(e, "`batch_size` or `segment`")
    finally:
        signal.close()
    empty = torch.zeros(model.audio_channels, 0)
    return ({s: torch.cat(p, -1) if p else empty for s, p in pieces.items()},
            runtime_fields(runtime, signal.warnings))


def run(fields: dict, extra: dict, *, cache: ModelCache, models_dir: Path | None, default_model: str | None,
             emit: Emit, progress: Progress | None = None, cancelled: Cancelled | None = None,
             worker: str | None = None) -> dict:
    """`worker`: the name the worker was started as, whose output layout and bit depth are the defaults
    (see `dsu.jobs.outputs`)."""
    started = time.perf_counter()
    input_path = paths.check_input(fields["input"])  # before a model load that could take seconds
    if fields.get("layout"):  # before the output folder is made
        outputs.template_of(fields["layout"])
    output_names = outputs.check_output_names(fields.get("output_names"))
    output_dir = paths.check_output_dir(fields["output_dir"])
    ref = model_jobs.resolve(fields, models_dir, default_model)
    model, from_cache = model_jobs.load(ref, cache, emit)
    stop_if_cancelled(cancelled, "before it started")
    options, ignored = model_jobs.family_options(model, extra)
    layout, bit_depth, options = outputs.for_worker(worker, model, families.FAMILIES[model.family].layout,
                                                    fields.get("layout"), fields.get("bit_depth"), input_path,
                                                    options)
    emit("separating", input=fields["input"], model=ref.name)
    result = _separate(model, input_path, output_dir, family=None, fmt=fields.get("format", "wav"),
                       bit_depth=bit_depth, stems=fields.get("stems"), layout=layout, output_names=output_names,
                       two_stems=fields.get("two_stems"), sample_rate=fields.get("sample_rate", "model"),
                       options=options, sanitize=bool(fields.get("sanitize")),
                       mp3_bitrate=fields.get("mp3_bitrate"), progress=progress, cancelled=cancelled,
                       runtime=runtime_for(model, options, models_dir, emit))
    done = done_fields(result, ref, from_cache, started)
    if ignored:
        done["ignored"] = ignored
    return done
