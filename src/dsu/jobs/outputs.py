"""Where a job's stem files go: the layouts of the tools DSU stands in for, templates, and each
worker name's defaults.

A layout is a preset name or a template relative to `output_dir`:

    demucs               {model}/{track}/{stem}.{ext}        the demucs CLI
    flat (msst)          {track}/{stem}.{ext}                MSST, the previous DSU's dsu-bsroformer
    uvr (audio_separator) {track}_({Stem})_{model}.{ext}     python-audio-separator and UVR

Placeholders: `{track}` (the input's name without extension), `{trackext}` (its extension), `{stem}`
(the model's spelling), `{Stem}` (python-audio-separator's: UVR's names as they are, the others
capitalised as UVR spells them, `Vocals`/`Instrumental` for an MSST vocals model), `{model}`, `{ext}`;
`/` makes subfolders. The `uvr` preset names the model as python-audio-separator does, its file name up to the first dot
(`model_bs_roformer_ep_317_sdr_12.9755.ckpt` -> `model_bs_roformer_ep_317_sdr_12`)."""
from __future__ import annotations

import os
import string
from pathlib import Path

import soundfile as sf

from ..errors import DSUError
from ..families.base import capitalised
from ..paths import inside_all, native, safe_component

PRESETS = {"demucs": "{model}/{track}/{stem}.{ext}", "flat": "{track}/{stem}.{ext}",
           "uvr": "{track}_({Stem})_{model}.{ext}"}
PRESET_ALIASES = {"msst": "flat", "audio_separator": "uvr"}
PLACEHOLDERS = ("track", "trackext", "stem", "Stem", "model", "ext")

# the layout each worker name writes unless a request says otherwise (None: the family's own), as the
# tool each name stands in for writes it
WORKER_LAYOUTS = {"dsu-audio-separator": "uvr", "dsu-bsroformer": "flat", "dsu-demucs": "demucs"}
# python-audio-separator writes a stem in the input's bit depth (16 when it cannot tell)
INPUT_BIT_DEPTH_WORKERS = ("dsu-audio-separator",)


def template_of(layout: str) -> str:
    """The template a layout names (a preset, its alias, or a template itself), checked."""
    layout = PRESET_ALIASES.get(layout, layout)
    if layout in PRESETS:
        return PRESETS[layout]
    if not isinstance(layout, str) or not layout.strip():
        raise DSUError("bad_value", "`layout` must be demucs, flat, uvr or a template such as {track}/{stem}.{ext}")
    try:
        names = [name for _, name, spec, conv in string.Formatter().parse(layout) if name is not None]
    except ValueError as e:
        raise DSUError("bad_value", f"`layout` {layout!r} is not a template: {e}") from None
    unknown = [n for n in names if n not in PLACEHOLDERS]
    if unknown or any(spec or conv for _, name, spec, conv in string.Formatter().parse(layout) if name):
        raise DSUError("bad_value", f"`layout` {layout!r}: unknown placeholder {{{(unknown or ['...'])[0]}}}; use "
                                    + ", ".join(f"{{{p}}}" for p in PLACEHOLDERS))
    if "stem" not in names and "Stem" not in names:
        raise DSUError("bad_value", f"`layout` {layout!r} names no {{stem}} or {{Stem}}: every stem would get "
                                    "the same file")
    parts = layout.replace("\\", "/").split("/")
    if layout.startswith(("/", "\\")) or os.path.isabs(layout) or ".." in parts or "" in parts:
        raise DSUError("bad_value", f"`layout` {layout!r} must be a relative path inside output_dir "
                                    "(no leading /, no .. and no empty folder)")
    return layout if "{ext}" in layout else layout + ".{ext}"


def layout_for(requested: str | None, worker: str | None, family_layout: str) -> str:
    """The layout a job writes: the request's, else the worker name's, else the family's own."""
    return requested or WORKER_LAYOUTS.get(worker or "") or family_layout


def for_worker(worker: str | None, model, family_layout: str, layout: str | None, bit_depth: int | None,
               input_path: Path, options: dict) -> tuple[str, int | None, dict]:
    """(layout, bit depth, family options) of a separation the worker name `worker` runs: the request's
    layout and bit depth where it gives them, else what the tool the name stands in for writes."""
    return (layout_for(layout, worker, family_layout), bit_depth or default_bit_depth(worker, input_path),
            upstream_options(worker, model, options))


def audio_separator_model_name(name: str) -> str:
    """The model name python-audio-separator writes: the file name up to its first dot."""
    return name.split(".")[0] or name


def stem_paths(layout: str, output_dir: Path, model_name: str, input_path: Path, stems: list[str], ext: str, *,
               family: str = "", output_names: dict | None = None, labels: dict | None = None) -> dict[str, Path]:
    """Each stem's file. `output_names` (python-audio-separator's custom_output_names) maps a stem,
    in either spelling and any case, to the base name its file gets instead of the template's;
    `labels`: python-audio-separator's spelling of stems the model names otherwise. The paths are
    absolute, under `output_dir` as the working folder resolves it."""
    preset = PRESET_ALIASES.get(layout, layout)
    template = template_of(layout)
    if preset == "uvr":
        model_name = audio_separator_model_name(model_name)
    custom = {str(k).lower(): v for k, v in (output_names or {}).items()}
    safe = safe_component  # every name a request or a file brings stays one path component
    names = {"track": safe(input_path.stem), "trackext": safe(input_path.suffix.lstrip(".")),
             "model": safe(model_name), "ext": ext}  # the same for every stem
    out = {}
    for stem in stems:
        spelled = (labels or {}).get(stem) or capitalised(stem, family)
        relative = template.format(stem=safe(stem), Stem=safe(spelled), **names)
        base = custom.get(stem.lower(), custom.get(spelled.lower()))
        if base is not None:
            relative = str(Path(relative).with_name(f"{safe(base)}.{ext}"))
        out[stem] = Path(relative)  # taken under output_dir once, by `inside`
    if len(set(out.values())) < len(out):
        raise DSUError("bad_value", f"the layout {layout!r} (with output_names) gives two stems the same file: "
                                    "use {stem} in it, or distinct names")
    return inside_all(output_dir, out)


def upstream_options(worker: str | None, model, options: dict) -> dict:
    """The options that make a worker write what the tool its name stands in for writes:
    python-audio-separator writes the rest of the mix beside a single-target MSST model's stem."""
    if (worker == "dsu-audio-separator" and "extract_instrumental" in model.options and len(model.stems) == 1
            and options.get("extract_instrumental") is None):
        return {**options, "extract_instrumental": True}
    return options


def check_output_names(names) -> dict[str, str]:
    if names is None:
        return {}
    bad = [k for k, v in names.items() if not isinstance(v, str) or not v.strip() or "/" in v or "\\" in v
           or v in (".", "..")]
    if bad:
        raise DSUError("bad_value", f"`output_names` maps a stem to a file base name (a plain name without "
                                    f"folders): {bad[0]!r} -> {names[bad[0]]!r} is not one")
    return dict(names)


def input_bit_depth(path: str | Path) -> int:
    """The bit depth python-audio-separator writes for this input: 16, 24 or 32 as its samples are,
    16 when the file does not say (mp3, ...)."""
    try:
        subtype = sf.info(native(path)).subtype
    except Exception:
        return 16
    if "24" in subtype:
        return 24
    if "32" in subtype or "FLOAT" in subtype or "DOUBLE" in subtype:
        return 32
    return 16


def default_bit_depth(worker: str | None, input_path: str | Path) -> int | None:
    """The bit depth a worker name writes when the request gives none (None: the family's own)."""
    return input_bit_depth(input_path) if worker in INPUT_BIT_DEPTH_WORKERS else None


def written_folder(paths: list[Path], output_dir: Path) -> tuple[Path, list[str]]:
    """(the folder holding every written file, each file's name relative to it): the previous DSU's
    `done.output_dir` + `files`, so that joining the two names each file."""
    if not paths:
        return output_dir.resolve(), []
    folder = Path(os.path.commonpath([str(p.resolve().parent) for p in paths]))
    return folder, [p.resolve().relative_to(folder).as_posix() for p in paths]
