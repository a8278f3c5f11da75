"""Converted networks on disk: one folder per key under `<models dir>/.cache/openvino/`, holding
OpenVINO's IR (`model.xml`, `model.bin`) and `entry.json` with the key and each file's sha256.

The key covers everything the conversion depends on: the weights' sha256, the load options (the
config), which core, the input shapes without the batch, OpenVINO's version and this file's FORMAT.
An entry is data: it is read only by OpenVINO's IR reader, and only after its hashes check out; one
that does not is moved aside and rebuilt. Entries are written in a hidden partial folder and renamed
into place, so two workers converting the same network end with one whole entry."""
from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path
from typing import Any

from .. import tempfiles, untrusted

FORMAT = 1  # bump when what a core's conversion produces changes (its inputs, outputs or ops)
FILES = ("model.xml", "model.bin")
_HASH_CHUNK = 1 << 22
_sha_memo: dict[tuple, str] = {}


def folder(models_dir: Path) -> Path:
    return Path(models_dir) / ".cache" / "openvino"


def file_sha256(path: str | os.PathLike) -> str:
    """sha256 of a file, remembered by (path, size, mtime) for this process."""
    st = os.stat(path)
    memo = (str(path), st.st_size, st.st_mtime_ns)
    if memo not in _sha_memo:
        _sha_memo[memo] = _sha256_now(Path(path), "a model file")
    return _sha_memo[memo]


def identity(files, options: Any) -> str:
    """What a loaded model is, by content: its files' sha256 and its load options."""
    text = json.dumps({"files": [file_sha256(f) for f in files], "options": options}, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()


def key(model: str, core: str, shapes, openvino_version: str) -> str:
    text = json.dumps({"model": model, "core": core, "shapes": shapes, "openvino": openvino_version,
                       "format": FORMAT}, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:40]


class Corrupt(Exception):
    """A cache entry that is there but does not check out."""


def lookup(root: Path, entry_key: str) -> tuple[Path, Path] | None:
    """(xml, bin) of the entry for `entry_key` once its hashes check out; None when there is none.
    Raises Corrupt (after moving the entry aside) when there is one that does not check out."""
    entry = root / entry_key
    if not entry.is_dir():
        return None
    try:
        meta = untrusted.read_json(entry / "entry.json", "a converted-model cache entry")
        if not isinstance(meta, dict) or meta.get("key") != entry_key or not isinstance(meta.get("sha256"), dict):
            raise Corrupt("its entry.json is not this entry's")
        for name in FILES:
            if meta["sha256"].get(name) != _sha256_now(entry / name):
                raise Corrupt(f"{name} does not match its sha256")
    except (Corrupt, OSError, ValueError, Exception) as e:
        discard(entry)
        reason = str(e) if isinstance(e, Corrupt) else f"{type(e).__name__}: {e}"
        raise Corrupt(f"the cached OpenVINO network {entry} did not check out ({reason}): rebuilt") from None
    return entry / FILES[0], entry / FILES[1]


def _sha256_now(path: Path, what: str = "a converted-model cache file") -> str:
    """sha256 of a file as it is now (cache entries are checked afresh on every lookup)."""
    h = hashlib.sha256()
    with untrusted.open_binary(path, what) as f:
        while block := f.read(_HASH_CHUNK):
            h.update(block)
    return h.hexdigest()


def store(root: Path, entry_key: str, save) -> Path:
    """Write an entry with `save(xml_path)` (which writes the xml and its bin beside it) and publish
    it; when another process published the same key first, theirs is kept and ours removed."""
    root.mkdir(parents=True, exist_ok=True)
    final = root / entry_key
    partial = tempfiles.temp_name(final)
    partial.mkdir()
    try:
        save(partial / FILES[0])
        meta = {"key": entry_key, "sha256": {name: _sha256_now(partial / name) for name in FILES}}
        (partial / "entry.json").write_text(json.dumps(meta, indent=1))
        try:
            os.rename(partial, final)
        except OSError:
            if not final.is_dir():
                raise
    finally:
        if partial.exists():
            shutil.rmtree(partial, ignore_errors=True)
    return final


def discard(entry: Path) -> None:
    """Move an entry aside (readers that already opened it keep their files), then remove it."""
    aside = tempfiles.temp_name(entry)
    try:
        os.rename(entry, aside)
    except OSError:
        return  # gone already: another worker rebuilt it
    shutil.rmtree(aside, ignore_errors=True)


def clean(root: Path) -> list[Path]:
    """Remove partial entries no live process is writing (`dsu clean`)."""
    removed: list[Path] = []
    if not root.is_dir():
        return removed
    for child in root.iterdir():
        if child.is_dir() and child.name.endswith(".partial") and \
                tempfiles.stale(child.name, child.stat().st_mtime, legacy=False):
            shutil.rmtree(child, ignore_errors=True)
            removed.append(child)
    return removed
