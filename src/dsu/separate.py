"""One separation job: a file in, stem files out, through a loaded model and the engine.

This is the only place that joins audio files, families and the engine; the worker and the CLI call
`separate_file` with plain values and get plain values back."""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch

from . import engine
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


# `layout` presets (the contract every front end shares): a template relative to `output_dir`
LAYOUTS = {"demucs": "{model}/{track}/{stem}.{ext}", "flat": "{track}/{stem}.{ext}",
           "uvr": "{track}_({Stem})_{model}.{ext}"}
LAYOUT_ALIASES = {"msst": "flat", "audio_separator": "uvr"}
PLACEHOLDERS = ("track", "trackext", "stem", "Stem", "model", "ext")


def capitalised(stem: str) -> str:
    """audio-separator's spelling of a stem in file names: `vocals` -> `Vocals`."""
    return stem[:1].upper() + stem[1:]


def layout_template(layout: str) -> str:
    """The template a `layout` preset names, or `layout` itself when it is a template."""
    name = LAYOUT_ALIASES.get(layout, layout)
    if name in LAYOUTS:
        return LAYOUTS[name]
    if "{" not in layout:
        raise DSUError("bad_value", f"layout {layout!r} is no preset ({', '.join([*LAYOUTS, *LAYOUT_ALIASES])}) "
                                    "and no template (e.g. \"{track}/{stem}.{ext}\")")
    return layout


def _path_part(text: str) -> str:
    """One path component taken from a name: no separators, no `..`, no NUL."""
    text = text.replace("/", "_").replace("\\", "_").replace("\0", "")
    return "_" if text in ("", ".", "..") else text


def stem_paths(layout: str, output_dir: Path, model_name: str, input_path: Path, stems: list[str],
               ext: str, output_names: dict | None = None) -> dict[str, Path]:
    """Where each stem goes: `layout` (a preset or a template, see LAYOUTS) under `output_dir`, or
    `<output_dir>/<name>.<ext>` for a stem `output_names` names (matched case-insensitively)."""
    template = layout_template(layout)
    track, _, trackext = input_path.name.rpartition(".") if "." in input_path.name else (input_path.name, "", "")
    renamed = {str(k).lower(): str(v) for k, v in (output_names or {}).items()}
    out = {}
    for stem in stems:
        if stem.lower() in renamed:
            out[stem] = output_dir / f"{_path_part(renamed[stem.lower()])}.{ext}"
            continue
        values = {"track": track, "trackext": trackext, "stem": stem, "Stem": capitalised(stem),
                  "model": model_name, "ext": ext}
        try:
            relative = template.format_map({k: _path_part(v) for k, v in values.items()})
        except (KeyError, IndexError, ValueError) as e:
            raise DSUError("bad_value", f"layout template {template!r} cannot be filled ({e}); its placeholders "
                                        f"are {', '.join('{' + p + '}' for p in PLACEHOLDERS)}") from None
        parts = [p for p in relative.replace("\\", "/").split("/") if p not in ("", ".")]
        if not parts or ".." in parts:
            raise DSUError("bad_value", f"layout template {template!r} must name a file inside the output folder")
        out[stem] = output_dir.joinpath(*parts)
    if len(set(out.values())) < len(out):
        raise DSUError("bad_value", f"layout template {template!r} gives several stems the same file: "
                                    "put {stem} in it")
    return out


def run_into(writer: StemWriter, passes, length: int, sink, progress, cancelled, lower: str) -> list[Path]:
    """The engine's run over `passes` into `writer`, committed when complete; on cancel, running out
    of memory or any error the partial files are removed (`lower`: what to lower on out of memory)."""
    try:
        engine.run(passes, length, sink, progress, cancelled)
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
                  options: dict | None = None, layout: str | None = None,
                  output_names: dict | None = None, mp3_bitrate: int | None = None,
                  progress: Callable[[float], None] | None = None,
                  cancelled: Callable[[], bool] | None = None) -> JobResult:
    started = time.perf_counter()
    fam = FAMILIES[family or model.family]
    options = dict(options or {})
    input_path = Path(input_path)
    output_dir = Path(output_dir)
    signal = FileSignal(input_path, model.samplerate, model.audio_channels)
    if sample_rate in (None, "model"):
        out_rate = model.samplerate
    elif sample_rate == "input":
        out_rate = signal.input_samplerate
    else:
        try:
            out_rate = int(sample_rate)
        except (TypeError, ValueError):
            raise DSUError("bad_value", f"sample_rate must be 'model', 'input' or a number, not {sample_rate!r}") from None
    produced = model.output_stems(**options)
    wanted = _pick_stems(model, produced, stems, two_stems)
    if two_stems:
        two_stems = wanted[0]
    paths = stem_paths(layout or fam.layout, output_dir, model.name, input_path, wanted, fmt, output_names)
    passes = model.passes(signal, **options)
    needs_mix = type(model).finish is not Separator.finish or bool(two_stems)
    mix_reader = signal.fresh() if needs_mix else None
    position = 0
    writer = StemWriter(paths, model.samplerate, model.audio_channels, fmt,
                        bit_depth or fam.default_bit_depth, out_rate, peak_limit=model.peak_limit(**options),
                        mp3_bitrate=mp3_bitrate)

    def sink(block: torch.Tensor) -> None:
        nonlocal position
        n = block.shape[-1]
        by_stem = dict(zip(model.stems, block))
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
    return JobResult(output_dir=str(output_dir.resolve()), files=[p.name for p in written],
                     paths=[str(p.resolve()) for p in written], stems=wanted,
                     elapsed=time.perf_counter() - started, samplerate=out_rate)
