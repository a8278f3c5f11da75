"""The jobs the worker and the CLI run, from validated request fields to the fields of their answer.

Both front ends call these with the same dicts (`dsu.worker.spec` validates them), so a job behaves
the same whether it came as a JSON line or as command-line arguments."""
from __future__ import annotations

import importlib
import time
from pathlib import Path
from typing import Any, Callable

from . import families, outputs, paths, tempfiles
from .cache import ModelCache
from .errors import DSUError
from .families import ModelRef, Separator
from .separate import JobResult, separate_file

Emit = Callable[..., None]          # emit(status, **fields): an interim message of this job
Progress = Callable[[float], None]
Cancelled = Callable[[], bool]

MODEL_KEYS = ("model", "model_path", "config_path", "model_type", "repo", "models_dir",
              # UVR per-model settings: they decide how the file loads, so they are part of the model
              "vr_model_param", "primary_stem", "nout", "nout_lstm", "is_karaoke", "is_bv_model",
              "is_bv_model_rebalanced", "compensate", "mdx_dim_f_set", "mdx_dim_t_set", "mdx_n_fft_scale_set")
APOLLO_KEYS = ("feature_dim", "layer", "sr", "win")
OPTION_TYPES = (str, int, float, bool, list, type(None))


def resolve(fields: dict, models_dir: Path | None, default_model: str | None = None) -> ModelRef:
    request = {k: fields[k] for k in MODEL_KEYS if k in fields}
    try:
        return families.resolve(request, models_dir, default_model)
    except DSUError as e:
        if e.code != "model_not_found":
            raise
        from . import catalog  # a name the models dir does not hold: installed (or installable) from the catalog?
        ref = catalog.resolve(request, models_dir, default_model)
        if ref is None:
            raise
        return ref


def apollo_files(fields: dict, models_dir: Path | None) -> tuple[str, str | None]:
    """(checkpoint, config) of a restore: `model_path` as given, or `model` found by `resolve`, the
    lookup `separate` and `list_models` use (the models dir, then the catalog's download hint)."""
    if fields.get("model") and fields.get("model_path"):
        raise DSUError("bad_value", "give `model` or `model_path`, not both")
    if not fields.get("model"):
        if not fields.get("model_path"):
            raise DSUError("missing_field", "restoring needs `model` (an Apollo model's name) or `model_path` "
                                            "(its checkpoint)")
        return fields["model_path"], fields.get("config_path")
    request = {k: fields[k] for k in ("model", "models_dir") if fields.get(k)}
    ref = resolve({**request, "model_type": "apollo"}, models_dir)
    if ref.family != "apollo":
        raise DSUError("bad_value", f"`model` {fields['model']} is a {ref.family} model, not an Apollo one: "
                                    "`list_models` shows the Apollo models (family apollo)")
    return str(ref.files[0]), fields.get("config_path") or (str(ref.files[1]) if len(ref.files) > 1 else None)


def load(ref: ModelRef, cache: ModelCache, emit: Emit) -> tuple[Separator, bool]:
    """The model through the cache, announcing a real load and any eviction."""
    return cache.get(ref, on_evict=lambda name: emit("cache_evicted", model=name),
                     on_load=lambda: emit("loading_model", model=ref.name))


def family_options(model: Separator, extra: dict) -> tuple[dict, list[str]]:
    """(the request fields `model` understands, the names of the others)."""
    options = {k: v for k, v in extra.items() if k in model.options}
    for k, v in options.items():
        if not isinstance(v, OPTION_TYPES):
            raise DSUError("bad_value", f"option `{k}` must be a number, string, boolean or list, not an object")
    return options, sorted(k for k in extra if k not in model.options)


def load_model(fields: dict, *, cache: ModelCache, models_dir: Path | None, default_model: str | None,
               emit: Emit) -> dict:
    ref = resolve(fields, models_dir, default_model)
    model, cached = load(ref, cache, emit)
    return {"model": ref.name, "family": ref.family, "stems": model.output_stems(), "cached": cached}


def separate(fields: dict, extra: dict, *, cache: ModelCache, models_dir: Path | None, default_model: str | None,
             emit: Emit, progress: Progress | None = None, cancelled: Cancelled | None = None,
             worker: str | None = None) -> dict:
    """`worker`: the name the worker was started as, whose output layout and bit depth are the defaults
    (see `dsu.outputs`)."""
    started = time.perf_counter()
    paths.check_input(fields["input"])  # before a model load that could take seconds
    if fields.get("layout"):  # before the output folder is made
        outputs.template_of(fields["layout"])
    outputs.check_output_names(fields.get("output_names"))
    paths.check_output_dir(fields["output_dir"])
    ref = resolve(fields, models_dir, default_model)
    model, from_cache = load(ref, cache, emit)
    if cancelled is not None and cancelled():
        raise DSUError("cancelled", "the job was cancelled before it started")
    options, ignored = family_options(model, extra)
    options = outputs.upstream_options(worker, model, options)
    emit("separating", input=fields["input"], model=ref.name)
    layout = outputs.layout_for(fields.get("layout"), worker, families.FAMILIES[model.family].layout)
    bit_depth = fields.get("bit_depth") or outputs.default_bit_depth(worker, fields["input"])
    result = separate_file(model, fields["input"], fields["output_dir"], fmt=fields.get("format", "wav"),
                           bit_depth=bit_depth, stems=fields.get("stems"), layout=layout,
                           output_names=fields.get("output_names"),
                           two_stems=fields.get("two_stems"), sample_rate=fields.get("sample_rate", "model"),
                           options=options, sanitize=bool(fields.get("sanitize")),
                           mp3_bitrate=fields.get("mp3_bitrate"), progress=progress, cancelled=cancelled)
    done = _done(result, ref, from_cache, started)
    if ignored:
        done["ignored"] = ignored
    return done


def restore(fields: dict, *, cache: ModelCache, models_dir: Path | None, emit: Emit,
            progress: Progress | None = None, cancelled: Cancelled | None = None) -> dict:
    started = time.perf_counter()
    paths.check_input(fields["input"])
    paths.check_output_file(fields["output"])
    try:
        restore_module = importlib.import_module("dsu.restore")
    except ModuleNotFoundError as e:
        if e.name != "dsu.restore":
            raise
        raise DSUError("internal", "audio restoration (dsu.restore) is not part of this installation") from None
    model_path, config_path = apollo_files(fields, models_dir)
    ref = families.resolve({"model_path": model_path, "config_path": config_path,
                            "model_type": "apollo", **{k: fields[k] for k in APOLLO_KEYS if k in fields}},
                           models_dir)
    model, from_cache = load(ref, cache, emit)
    if cancelled is not None and cancelled():
        raise DSUError("cancelled", "the job was cancelled before it started")
    emit("restoring", input=fields["input"], model=ref.name)
    tuning = {k: fields[k] for k in ("chunk_seconds", "overlap_seconds", "format", "bit_depth", "sanitize")
              if fields.get(k) is not None}
    tuning["fmt"] = tuning.pop("format", None)
    result = restore_module.restore_file(model, fields["input"], fields["output"], progress=progress,
                                         cancelled=cancelled, **tuning)
    return _done(result, ref, from_cache, started)


def denoise(fields: dict, *, emit: Emit, progress: Progress | None = None,
            cancelled: Cancelled | None = None) -> dict:
    from .denoise import denoise_file
    started = time.perf_counter()
    emit("denoising", input=fields["input"])
    result = denoise_file(fields["input"], fields["noise_profile"], fields.get("output"),
                          subtraction_factor=fields["subtraction_factor"], attack_time=fields["attack_time"],
                          release_time=fields.get("release_time"), mode=fields["mode"],
                          bit_depth=fields["bit_depth"], progress=progress, cancelled=cancelled)
    return _result_fields(result, started)


def denoiser() -> dict:
    """The denoiser as `load_model` describes a model: it needs no file and is always loaded."""
    from .denoise import METHOD, STEM
    return {"model": METHOD, "family": "denoise", "stems": [STEM], "cached": True}


def clean(fields: dict) -> dict:
    """Remove what killed DSU processes left: partial files in `dir` (and its subfolders) whose owner
    is gone, older DSU versions' owner-less partials there, the locks of killed downloads, and DSU's
    decoded input copies in the temp dir whose owner is gone. Never a live job's file."""
    from .catalog.download import clean_locks
    folder = Path(paths.plain_path(fields["dir"], "dir"))
    if not folder.is_dir():
        raise DSUError("input_not_found", f"`dir` {folder} is not a folder")
    removed = tempfiles.clean_folder(folder, recursive=True, legacy=True) + clean_locks(folder) + \
        tempfiles.clean_decode_files()
    return {"dir": str(folder.resolve()), "removed": [str(p) for p in removed], "count": len(removed)}


def _done(result: JobResult, ref: ModelRef, from_cache: bool, started: float) -> dict[str, Any]:
    """The fields of a job's `done` message; `elapsed` counts from the job's start, model load included."""
    return {**_result_fields(result, started), "model": ref.name, "model_from_cache": from_cache}


def _result_fields(result: JobResult, started: float) -> dict[str, Any]:
    return {"elapsed": round(time.perf_counter() - started, 3), "output_dir": result.output_dir,
            "files": result.files, "paths": result.paths, "stems": result.stems, **result.extra}
