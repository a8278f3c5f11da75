"""The model families and how a request finds its one.

Each family module defines `FAMILY` (a `Family`) and keeps its heavy imports inside its loader, so
resolving a name costs nothing. Resolvers are asked in `ORDER`; the first that claims a request wins,
except that an explicit `model_type` goes straight to the family that declares it."""
from __future__ import annotations

import importlib
from pathlib import Path

import torch

from .. import paths
from ..errors import DSUError
from .base import Family, LoadedModel, ModelRef, make_ref

ORDER = ("dsp", "apollo", "msst", "demucs", "mdx", "vr")


def _load_families() -> dict[str, Family]:
    found = {}
    for name in ORDER:
        try:
            module = importlib.import_module(f"{__name__}.{name}")
        except ModuleNotFoundError as e:
            if e.name != f"{__name__}.{name}":
                raise
            continue  # a family not built into this installation
        found[name] = module.FAMILY
    return found


FAMILIES: dict[str, Family] = _load_families()


def family_of_type(model_type: str) -> Family:
    for fam in FAMILIES.values():
        if model_type in fam.model_types:
            return fam
    known = sorted(t for f in FAMILIES.values() for t in f.model_types)
    raise DSUError("bad_value", f"unknown `model_type` {model_type!r}; known: {', '.join(known)}")


def resolve(request: dict, models_dir: str | Path | None, default_model: str | None = None) -> ModelRef:
    """The model a `separate` request names, by `model_path` (+ `config_path`, `model_type`) or by
    `model` looked up in the models dir (or `repo`)."""
    request = dict(request)
    for key in ("model_path", "config_path", "models_dir", "repo"):
        if request.get(key):
            paths.check_model_path(request[key], key, folder=key in ("models_dir", "repo"))
    if request.get("models_dir"):  # this request's own folder (the previous DSU's `model_file_dir`)
        models_dir = request.pop("models_dir")
        if not Path(models_dir).is_dir():
            raise DSUError("model_not_found", f"models_dir folder not found: {models_dir}")
    models_dir = Path(models_dir) if models_dir else None
    if not request.get("model_path") and not request.get("model"):
        if not default_model:
            raise DSUError("missing_field", "give `model` (a name in the models dir) or `model_path`")
        request["model"] = default_model
    path = request.get("model_path")
    if path and not Path(path).exists():
        raise DSUError("model_not_found", f"model file not found: {path}")
    config = request.get("config_path")
    if config and not Path(config).is_file():
        raise DSUError("model_not_found", f"config file not found: {config}")
    if request.get("model_type"):
        fam = family_of_type(str(request["model_type"]))
        ref = fam.resolver(request, models_dir)
        if ref is None:
            raise DSUError("model_not_found", f"no {fam.name} model {request.get('model') or path!r} "
                                              f"in {models_dir or 'the models dir'}")
        return ref
    for fam in FAMILIES.values():
        ref = fam.resolver(request, models_dir)
        if ref is not None:
            return ref
    if path:
        raise DSUError("bad_value", f"cannot tell which kind of model {Path(path).name} is: "
                                    "give `model_type`, with `config_path` where the model has one")
    where = models_dir or "the models dir"
    raise DSUError("model_not_found", f"no model named {request['model']!r} in {where}; "
                                      "`list_models` shows what is there, `dsp` needs no files")


def load(ref: ModelRef, device: torch.device) -> LoadedModel:
    model = FAMILIES[ref.family].loader(ref, device)
    model.ref = ref
    return model


def list_models(models_dir: str | Path | None) -> list[dict]:
    """What every family finds in the models dir: dicts with at least `name`, `family`, `stems`."""
    out = []
    for fam in FAMILIES.values():
        if fam.lister is not None:
            out.extend(fam.lister(Path(models_dir) if models_dir else None))
    return out


__all__ = ["FAMILIES", "Family", "ModelRef", "LoadedModel", "make_ref", "resolve", "load", "list_models",
           "family_of_type"]
