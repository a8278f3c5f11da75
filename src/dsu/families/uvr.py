"""What UVR's two classic families (VR `.pth`, MDX-Net `.onnx`) share: how a model file is recognised
(the md5 UVR computes, looked up in the model-data tables shipped in `dsu/data/uvr/`), how a
request overrides what the table says, and how the second stem is named from the first.

The tables are DSU's own schema (see `tools/uvr_tables.py`, which writes them from UVR's published
data); a key missing from an entry means "UVR's default"."""
from __future__ import annotations

import hashlib
import json
import os
from functools import cache
from importlib import resources
from pathlib import Path

from ..errors import DSUError

HASHED_TAIL = 10_000 * 1024  # UVR hashes only the last 10,240,000 bytes of a file at least that big
PAIRS = {"Vocals": "Instrumental", "Instrumental": "Vocals", "lead_only": "backing_only",
         "backing_only": "lead_only", "Primary Stem": "Secondary Stem"}


def model_hash(path: str | Path) -> str:
    """UVR's identity of a model file: the md5 of its last 10,240,000 bytes, or of all of it when smaller."""
    st = os.stat(path)
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
    for candidate in (models_dir / str(name), models_dir / f"{name}{ext}"):
        if candidate.suffix.lower() == ext and candidate.is_file():
            return candidate
    return None


def list_files(models_dir: Path | None, family: str, ext: str) -> list[dict]:
    """The models dir's `ext` files, with the stems `family`'s table gives them (none when it does not
    know them)."""
    if not models_dir or not models_dir.is_dir():
        return []
    out = []
    for f in sorted(p for p in models_dir.iterdir() if p.suffix.lower() == ext and p.is_file()):
        primary = table(family).get(model_hash(f), {}).get("primary_stem")  # hashed once per file stamp
        out.append({"name": f.stem, "family": family, "type": family, "file": f.name,
                    "stems": [primary, secondary_stem(primary)] if primary else []})
    return out
