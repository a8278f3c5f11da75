"""Catalog models in a models dir: installing (download, verify, pin), checking, removing, and turning
a catalog name into the files a family loads.

`<models-dir>/dsu-lock.json` records the sha256 of every file DSU installed. Where the catalog
publishes no hash, the first verified download pins one there, and every later download and
`dsu models verify` must match it."""
from __future__ import annotations

import json
import os
import secrets
from collections.abc import Callable
from dataclasses import dataclass, replace
from functools import lru_cache
from pathlib import Path

from .. import untrusted
from ..errors import DSUError
from ..protocol import MODEL_NAMING, MSST_TYPES
from . import catalog as catalogs
from .catalog import Catalog, Entry, FileSpec
from .download import FileLock, fetch, mismatch, sha256_of

LOCK_FILE = "dsu-lock.json"
# the most bytes a file may have when the catalog gives no size, well above the largest each kind
# publishes (configs are kilobytes; Demucs members, UVR .pth/.onnx up to a few hundred MB; RoFormer
# checkpoints up to about 2 GB), so a server that never ends its body stops there, not at a full disk
MOST_BYTES = {"config": 1 << 20, "demucs": 1 << 30, "vr": 1 << 30, "mdx": 1 << 30, "apollo": 2 << 30,
              **{t: 4 << 30 for t in MSST_TYPES}}

FileProgress = Callable[[str, int, "int | None", float], None]  # (file path, bytes done, total, bytes/s)
FileRetry = Callable[[str, int, int, str, float], None]  # (file path, retry, retries allowed, why, seconds)


def default_models_dir() -> Path:
    """$DSU_MODELS, else the platform's user data folder (e.g. ~/.local/share/dsu/models)."""
    env = os.environ.get("DSU_MODELS")
    if env:
        return Path(env)
    import platformdirs
    return Path(platformdirs.user_data_dir("dsu", appauthor=False)) / "models"


# ---- the lock file -----------------------------------------------------------------------------------

def read_pins(models_dir: Path) -> dict[str, dict]:
    path = Path(models_dir) / LOCK_FILE
    if not path.is_file():
        return {}
    try:
        data = untrusted.read_json(path, "the lock file")
    except DSUError as e:
        raise DSUError(e.code, f"{e.message}; fix or delete it (it only holds hashes)") from None
    files = data.get("files") if isinstance(data, dict) else None
    return {k: v for k, v in (files or {}).items() if isinstance(v, dict)}


def update_pins(models_dir: Path, change: Callable[[dict], object]) -> None:
    """Read, change and atomically rewrite the lock file, one process at a time."""
    models_dir = Path(models_dir)
    with FileLock(models_dir / f".{LOCK_FILE}.lock"):
        pins = read_pins(models_dir)
        change(pins)
        temp = models_dir / f".{LOCK_FILE}.{os.getpid()}.{secrets.token_hex(3)}.partial"
        try:
            temp.write_text(json.dumps({"version": 1, "files": dict(sorted(pins.items()))}, indent=1) + "\n",
                            encoding="utf-8")
            os.replace(temp, models_dir / LOCK_FILE)
        except OSError as e:
            temp.unlink(missing_ok=True)
            raise DSUError("output_not_writable", f"cannot write {models_dir / LOCK_FILE}: {e.strerror}; the "
                                                  "model's files are in place but their hashes are not pinned: "
                                                  "free some space and download again") from None


# ---- what is installed -------------------------------------------------------------------------------

def file_path(models_dir: Path, spec: FileSpec) -> Path:
    return Path(models_dir).joinpath(*spec.path.split("/"))


def installed(entry: Entry, models_dir: Path | None) -> bool:
    """Every file of the entry is there with its catalog size (hashes are checked by `verify`)."""
    if models_dir is None:
        return False
    for spec in entry.files:
        path = file_path(models_dir, spec)
        if not path.is_file() or (spec.size is not None and path.stat().st_size != spec.size):
            return False
    return True


def config_path(entry: Entry, models_dir: Path) -> Path | None:
    if not entry.config:
        return None
    spec = entry.file(entry.config)
    return file_path(models_dir, spec) if spec else catalogs.package_config(entry.config)


def request_fields(entry: Entry, models_dir: Path) -> dict:
    """The request fields that name this installed entry's files to its family."""
    config = config_path(entry, models_dir)
    checkpoint = entry.file(entry.checkpoint)  # parse_entry: one of its files, or none (a Demucs bag)
    if entry.type == "demucs":
        if entry.checkpoint:
            assert checkpoint is not None
            return {"model_path": str(file_path(models_dir, checkpoint))}
        return {"model_path": str(config), "repo": str(models_dir)}
    assert checkpoint is not None  # required but for Demucs
    fields = {"model_path": str(file_path(models_dir, checkpoint)), "model_type": entry.type}
    if config is not None:
        fields["config_path"] = str(config)
    return fields


def download_command(name: str, models_dir: Path | None) -> str:
    return f"dsu models download {name}" + (f" --models-dir {models_dir}" if models_dir else "")


@lru_cache(maxsize=1)
def _shipped() -> Catalog:
    return catalogs.shipped()


def current_catalog() -> Catalog:
    """The catalog a worker or `dsu separate` resolves names with ($DSU_CATALOG or the shipped one)."""
    return catalogs.load() if os.environ.get("DSU_CATALOG") else _shipped()


def resolve(request: dict, models_dir: Path | None, default_model: str | None = None, catalog: Catalog | None = None):
    """The ModelRef of a catalog model named by `request["model"]` and installed in the models dir;
    None when the catalog does not know the name. A known model that is not installed is a
    `model_not_found` giving the command that installs it."""
    from .. import families

    if request.get("model_path"):
        return None
    name = request.get("model") or default_model
    if not name:
        return None
    entry = (catalog or current_catalog()).find(str(name))
    if entry is None:
        return None
    models_dir = Path(request["models_dir"]) if request.get("models_dir") else Path(models_dir or default_models_dir())
    if not installed(entry, models_dir):
        raise not_installed(name, entry, models_dir)
    naming = {f.name for f in MODEL_NAMING}
    fields = {k: v for k, v in request.items() if k not in naming}
    fields.update(request_fields(entry, models_dir))
    ref = families.resolve(fields, models_dir)
    return replace(ref, name=entry.name)


def family_of(entry_type: str) -> str:
    return "msst" if entry_type in MSST_TYPES else entry_type


def describe(entry: Entry, models_dir: Path) -> dict:
    """An entry as `dsu models list --json` and the worker's `list_models` show it."""
    return {"name": entry.name, "type": entry.type, "family": family_of(entry.type), "stems": list(entry.stems),
            "size": entry.size, "installed": installed(entry, models_dir), "sdr": entry.sdr,
            "purpose": list(entry.purpose), "aliases": list(entry.aliases), "description": entry.description}


def not_installed(name: str, entry: Entry, models_dir: Path) -> DSUError:
    """The `model_not_found` of a catalog model missing from the models dir; `.download` is the
    command that installs it, for front ends that word it their own way."""
    command = download_command(entry.name, models_dir)
    error = DSUError("model_not_found", f"{name} is a catalog model that is not installed in {models_dir}: run "
                                        f"`{command}`")
    error.download = command
    return error


# ---- installing ----------------------------------------------------------------------------------------

def is_config(spec: FileSpec) -> bool:
    return Path(spec.path).suffix.lower() in (".yaml", ".yml")


def file_check(entry: Entry, spec: FileSpec) -> Callable[[Path], None]:
    """Open a file once with its family's reader (weights only, safe YAML), so a file that is not
    what it claims is refused before it is installed (or, found in place, replaced)."""
    def check(path: Path) -> None:
        from ..families import apollo, demucs, msst, vr
        if is_config(spec):
            if entry.type == "demucs":
                if demucs.read_bag(path) is None:
                    raise DSUError("bad_value", "it is not a Demucs bag (no `models` list)")
            elif entry.type == "apollo":
                if apollo.read_config(path) is None:
                    raise DSUError("bad_value", "it is not an Apollo config")
            else:
                msst.load_config(path)
        elif entry.type == "demucs":
            demucs.read_package(path, mmap=True)
        elif entry.type in MSST_TYPES:
            msst.read_state_dict(path)
        elif entry.type == "vr":
            vr.read_state_dict(path)
        elif entry.type == "apollo":
            apollo.read_weights(path)
        elif entry.type == "mdx":
            _check_onnx(path)
    return check


def _check_onnx(path: Path) -> None:
    import onnx
    try:
        onnx.checker.check_model(onnx.load(str(path), load_external_data=False))
    except Exception as e:
        raise DSUError("bad_value", f"not a valid ONNX model ({str(e).splitlines()[0][:200]})") from None


@dataclass
class Installed:
    entry: Entry
    paths: list[Path]
    downloaded: int  # bytes fetched now (0: everything was there already)
    pinned: list[str]


def expected_of(entry: Entry, spec: FileSpec, pinned: str | None = None):
    """What a copy of `spec` must be, bounded by its kind's maximum where the catalog gives no size."""
    kind = "config" if is_config(spec) else entry.type
    what = "model config" if kind == "config" else f"{entry.type} model file"
    return replace(spec.expected(pinned), most=MOST_BYTES[kind], what=what)


def install(entry: Entry, models_dir: Path, *, on_progress: FileProgress | None = None,
            on_retry: FileRetry | None = None, cancelled: Callable[[], bool] | None = None,
            timeout: float = 30.0, retries: int = 5) -> Installed:
    """Download and verify every file of `entry` into `models_dir`; pin the hashes the catalog lacks."""
    models_dir = Path(models_dir)
    models_dir.mkdir(parents=True, exist_ok=True)
    pins = read_pins(models_dir)
    paths, fetched, new_pins = [], 0, {}
    for spec in entry.files:
        pinned = pins.get(spec.path, {}).get("sha256")
        if pinned and spec.sha256 and pinned != spec.sha256:
            pinned = None  # the catalog's own hash wins over an older pin
        expected = expected_of(entry, spec, pinned)
        report = (lambda done, total, speed, p=spec.path: on_progress(p, done, total, speed)) if on_progress else None
        retry = (lambda n, most, why, wait, p=spec.path: on_retry(p, n, most, why, wait)) if on_retry else None
        try:
            got = fetch(spec.url, file_path(models_dir, spec), expected, check=file_check(entry, spec),
                        on_progress=report, on_retry=retry, cancelled=cancelled, timeout=timeout, retries=retries)
        except DSUError as e:
            if e.code == "checksum_mismatch" and pinned and not spec.sha256:
                raise DSUError("checksum_mismatch", f"{e.message}. The expected hash was pinned by the first "
                                                    f"download in {models_dir / LOCK_FILE}; if the publisher "
                                                    f"changed the file, `dsu models remove {entry.name}` drops "
                                                    "the pin") from None
            raise
        paths.append(got.path)
        fetched += got.size if got.downloaded else 0
        if pins.get(spec.path, {}).get("sha256") != got.sha256:
            new_pins[spec.path] = {"sha256": got.sha256, "size": got.size, "url": spec.url, "model": entry.name}
    if new_pins:
        update_pins(models_dir, lambda p: p.update(new_pins))
    return Installed(entry, paths, fetched, [s.path for s in entry.files if s.path in new_pins and not s.sha256])


# ---- checking and removing ------------------------------------------------------------------------------

def verify(entry: Entry, models_dir: Path) -> list[tuple[str, str]]:
    """(file path, 'ok' or what is wrong) for every file of an entry, by the catalog's hash and the pin."""
    pins = read_pins(models_dir)
    out = []
    for spec in entry.files:
        path = file_path(models_dir, spec)
        if not path.is_file():
            out.append((spec.path, "missing"))
            continue
        sha = sha256_of(path).hexdigest()
        pinned = pins.get(spec.path, {}).get("sha256")
        wrong = mismatch(path, path.stat().st_size, sha, spec.expected(),
                         spec.path)
        if wrong is None and pinned and pinned != sha:
            wrong = f"{spec.path}'s sha256 is {sha}, not {pinned} as pinned in {LOCK_FILE}"
        if wrong is None and not (spec.sha256 or pinned):
            wrong = f"{spec.path} has no published or pinned hash to check (sha256 {sha})"
            out.append((spec.path, "unpinned: " + wrong))
            continue
        out.append((spec.path, wrong or "ok"))
    return out


def remove(entry: Entry, models_dir: Path, catalog: Catalog) -> list[Path]:
    """Delete the entry's files (not those another installed entry also uses) and their pins."""
    shared = {s.path for other in catalog if other.name != entry.name and installed(other, models_dir)
              for s in other.files}
    removed = []
    for spec in entry.files:
        path = file_path(models_dir, spec)
        if spec.path in shared or not path.exists():
            continue
        path.unlink()
        removed.append(path)
    gone = {s.path for s in entry.files if s.path not in shared}
    if gone and (Path(models_dir) / LOCK_FILE).is_file():
        update_pins(models_dir, lambda pins: [pins.pop(p, None) for p in gone])
    return removed
