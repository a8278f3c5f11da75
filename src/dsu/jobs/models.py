"""The models a job names: the request's model fields to a model reference (the models dir, then the
catalog), loaded through the worker's cache; and the worker's `load_model` command."""
from __future__ import annotations

from pathlib import Path

from .. import families
from ..cache import ModelCache
from ..errors import DSUError
from ..families import LoadedModel, ModelRef
from ..protocol import APOLLO_ARCH, MODEL_FIELDS
from ._pipeline import Emit

MODEL_KEYS = tuple(f.name for f in MODEL_FIELDS)  # the request fields that pick the model and how it loads
APOLLO_KEYS = tuple(f.name for f in APOLLO_ARCH)  # an Apollo checkpoint's shape without its config
OPTION_TYPES = (str, int, float, bool, list, type(None))


def resolve(fields: dict, models_dir: Path | None, default_model: str | None = None) -> ModelRef:
    request = {k: fields[k] for k in MODEL_KEYS if k in fields}
    try:
        return families.resolve(request, models_dir, default_model)
    except DSUError as e:
        if e.code != "model_not_found":
            raise
        from .. import catalog  # a name the models dir does not hold: installed (or installable) from the catalog?
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


def load(ref: ModelRef, cache: ModelCache, emit: Emit) -> tuple[LoadedModel, bool]:
    """The model through the cache, announcing a real load and any eviction."""
    return cache.get(ref, on_evict=lambda name: emit("cache_evicted", model=name),
                     on_load=lambda: emit("loading_model", model=ref.name))


def family_options(model: LoadedModel, extra: dict) -> tuple[dict, list[str]]:
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
