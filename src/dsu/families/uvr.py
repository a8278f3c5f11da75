"""What UVR's two classic families (VR `.pth`, MDX-Net `.onnx`) share: how a model file is recognised
(the md5 UVR computes, looked up in the model-data tables shipped in `dsu/data/uvr/`), how a
request overrides what the table says, and how the second stem is named from the first.

The tables are DSU's own schema (see `tools/uvr_tables.py`, which writes them from UVR's published
data); a key missing from an entry means "UVR's default"."""
from __future__ import annotations

import hashlib
import json
from functools import cache
from importlib import resources
from pathlib import Path

from .. import untrusted
from ..errors import DSUError

HASHED_TAIL = 10_000 * 1024  # UVR hashes only the last 10,240,000 bytes of a file at least that big
PAIRS = {"Vocals": "Instrumental", "Instrumental": "Vocals", "lead_only": "backing_only",
         "backing_only": "lead_only", "Primary Stem": "Secondary Stem"}


def model_hash(path: str | Path) -> str:
    """UVR's identity of a model file: the md5 of its last 10,240,000 bytes, or of all of it when smaller."""
    st = untrusted.check(path, "the model file")
    return _hash(str(Path(path).resolve()), st.st_size, st.st_mtime_ns)


@cache
def _hash(path: str, size: int, mtime_ns: int) -> str:  # every job resolves its model: hash a file once
    digest = hashlib.md5()
    with open(path, "rb") as f:
        if size >= HASHED_TAIL:
            f.seek(size - HASHED_TAIL)
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


@cache
def table(kind: str) -> dict[str, dict]:
    """The shipped model-data table of `kind` ('vr' or 'mdx'), by md5."""
    text = resources.files("dsu").joinpath("data", "uvr", f"{kind}_models.json").read_text(encoding="utf-8")
    return {e["md5"]: e for e in json.loads(text)["models"]}


def model_data(kind: str, path: str | Path, overrides: dict) -> dict:
    """The table's entry for the file at `path` with the request's `overrides` (non-None values) on
    top; empty when neither knows the file (the family says which fields it then needs)."""
    entry = dict(table(kind).get(model_hash(path), {}))
    entry.pop("md5", None)
    entry.update({k: v for k, v in overrides.items() if v is not None})
    return entry


def secondary_stem(primary: str) -> str:
    """UVR's name for what is left when `primary` is taken out: Vocals <-> Instrumental, 'X' <-> 'No X'."""
    if primary in PAIRS:
        return PAIRS[primary]
    return primary[3:] if primary.startswith("No ") else f"No {primary}"


def require(found: dict, path: str | Path, kind: str) -> None:
    """A clear error when neither the table nor the request gives the parameters a model needs.
    `found`: each needed value (None when unknown) under the request field that gives it."""
    missing = [field for field, value in found.items() if value is None]
    if missing:
        name = Path(path).name
        raise DSUError("bad_value", f"{name} is not in DSU's {kind.upper()} model table (md5 "
                                    f"{model_hash(path)}): give {', '.join(f'`{k}`' for k in missing)} in the "
                                    "request, as UVR's model settings for this file say")


# ---- model data kept beside the models -------------------------------------------------------------

# The files UVR and python-audio-separator keep their model data in, keyed by the file hash in UVR's
# `model_data_new.json` schema, looked for in a folder and its `model_data/` subfolder (UVR's
# VR_Models/model_data/, MDX_Net_Models/model_data/): the user's own entries (`model_data.json`, where UVR
# saves the settings it asked for) first, then python-audio-separator's copies, then UVR's download.
FOLDER_DATA = ("model_data.json", "vr_model_data.json", "mdx_model_data.json", "model_data_new.json")
# UVR's field -> (JSON type check, what it must be) for the fields DSU reads
UVR_FIELDS = {
    "vr_model_param": (lambda v: isinstance(v, str), "a band-parameter name"),
    "primary_stem": (lambda v: isinstance(v, str), "a stem name"),
    "nout": (lambda v: _whole(v), "a whole number"), "nout_lstm": (lambda v: _whole(v), "a whole number"),
    "is_karaoke": (lambda v: isinstance(v, bool), "true or false"),
    "is_bv_model": (lambda v: isinstance(v, bool), "true or false"),
    "is_bv_model_rebalanced": (lambda v: _number(v), "a number"),
    "compensate": (lambda v: _number(v), "a number"),
    "mdx_dim_f_set": (lambda v: _whole(v), "a whole number"), "mdx_dim_t_set": (lambda v: _whole(v), "a whole number"),
    "mdx_n_fft_scale_set": (lambda v: _whole(v), "a whole number"),
    "config_yaml": (lambda v: isinstance(v, str), "a YAML file name"),
}
MD5 = frozenset("0123456789abcdef")
# where UVR's own `models/` folder keeps each family's files
UVR_SUBFOLDERS = {"vr": "VR_Models", "mdx": "MDX_Net_Models", "mdxc": "MDX_Net_Models"}


def _number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _whole(v) -> bool:
    return _number(v) and float(v).is_integer()


def data_folders(model_file: str | Path | None, models_dir: Path | None) -> list[Path]:
    """Where model data for `model_file` may be kept: its own folder and the models dir, each with
    its `model_data/` subfolder, and UVR's per-architecture folders under the models dir."""
    roots = [Path(model_file).resolve().parent] if model_file else []
    if models_dir:
        roots.append(Path(models_dir).resolve())
        roots += [Path(models_dir).resolve() / sub for sub in dict.fromkeys(UVR_SUBFOLDERS.values())]
    out = []
    for root in roots:
        for folder in (root, root / "model_data"):
            if folder not in out and folder.is_dir():
                out.append(folder)
    return out


def read_model_data_file(path: Path) -> dict[str, dict]:
    """A UVR model-data JSON by md5, checked: an object of md5 -> settings whose known fields have
    UVR's types (keys that are no md5 are left alone). A malformed file is an error naming it."""
    st = path.stat()
    return _read_model_data(str(path), st.st_size, st.st_mtime_ns)


@cache
def _read_model_data(path: str, size: int, mtime_ns: int) -> dict[str, dict]:
    name = Path(path)
    try:
        data = untrusted.read_json(path, "the UVR model data")
    except DSUError as e:
        raise DSUError(e.code, f"{e.message}; fix or remove it") from None
    if not isinstance(data, dict):
        raise DSUError("bad_value", f"{name} is not UVR model data: it must be an object of file hashes "
                                    "(md5) to settings; fix or remove it")
    out = {}
    for key, entry in data.items():
        if len(key) != 32 or not set(key.lower()) <= MD5:
            continue
        if not isinstance(entry, dict):
            raise DSUError("bad_value", f"{name}: the entry for {key} must be an object of settings, "
                                        f"not {json.dumps(entry)[:40]}; fix or remove it")
        for field, (ok, what) in UVR_FIELDS.items():
            if field in entry and not ok(entry[field]):
                raise DSUError("bad_value", f"{name}: `{field}` of {key} must be {what}, not "
                                            f"{json.dumps(entry[field])[:40]}; fix or remove it")
        out[key.lower()] = entry
    return out


def folder_entry(path: str | Path, models_dir: Path | None, kind: str) -> dict:
    """The settings kept beside the models for the file at `path` (UVR's field names, which are the
    request's), from the first model-data file that has an entry of `kind` ('vr', 'mdx' or 'mdxc')
    for its hash; empty when none has."""
    digest = None
    for folder in data_folders(path, models_dir):
        for file in FOLDER_DATA:
            if not (folder / file).is_file():
                continue
            digest = digest or model_hash(path)
            entry = read_model_data_file(folder / file).get(digest)
            if entry is not None and entry_kind(entry) == kind:
                return dict(entry)
    return {}


def entry_kind(entry: dict) -> str | None:
    """Which architecture a UVR model-data entry describes, by the fields it has."""
    if "vr_model_param" in entry:
        return "vr"
    if "config_yaml" in entry:
        return "mdxc"
    if "mdx_dim_f_set" in entry or "mdx_n_fft_scale_set" in entry:
        return "mdx"
    return None


def with_folder_data(request: dict, path: str | Path, models_dir: Path | None, kind: str) -> dict:
    """The request with the settings kept beside the models filled in where it gives none."""
    found = folder_entry(path, models_dir, kind)
    return {**request, **{k: v for k, v in found.items() if k in UVR_FIELDS and request.get(k) is None}}


# ---- files in the models dir -----------------------------------------------------------------------

def model_path(request: dict, models_dir: Path | None, family: str, ext: str) -> str | Path | None:
    """The file a request names for `family`: `model_path` ending `ext` (or any file with `model_type`
    naming the family), or `model`, a file's name with or without `ext`, in the models dir."""
    path = request.get("model_path")
    if path:
        claimed = request.get("model_type") == family or str(path).lower().endswith(ext)
        return path if claimed else None
    name = request.get("model")
    if not name or not models_dir:
        return None
    for folder in model_folders(models_dir, family):
        for candidate in (folder / str(name), folder / f"{name}{ext}"):
            if candidate.suffix.lower() == ext and candidate.is_file():
                return candidate
    return None


def model_folders(models_dir: Path, family: str) -> list[Path]:
    """The models dir, and its subfolder for `family` when it is laid out as UVR's `models/` folder."""
    sub = models_dir / UVR_SUBFOLDERS[family]
    return [models_dir, sub] if sub.is_dir() else [models_dir]


def list_files(models_dir: Path | None, family: str, ext: str) -> list[dict]:
    """The models dir's `ext` files, with the stems `family`'s table gives them (none when it does not
    know them)."""
    if not models_dir or not models_dir.is_dir():
        return []
    out = []
    files = [p for folder in model_folders(models_dir, family) for p in sorted(folder.iterdir())]
    for f in (p for p in files if p.suffix.lower() == ext and p.is_file()):
        try:
            primary = (folder_entry(f, models_dir, family).get("primary_stem")
                       or table(family).get(model_hash(f), {}).get("primary_stem"))  # hashed once per file stamp
        except DSUError as e:
            out.append({"name": f.stem, "family": family, "type": family, "file": f.name, "stems": [],
                        "error": e.message})
            continue
        out.append({"name": f.stem, "family": family, "type": family, "file": f.name,
                    "stems": [primary, secondary_stem(primary)] if primary else []})
    return out
