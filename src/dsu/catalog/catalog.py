"""The model catalog: which models a user can ask for by name, which files make each, where they come
from and how they are checked. The format is documented in docs/catalog.md; `FIELDS` and `FILE_FIELDS`
below are that format, and every entry is checked against them when a catalog is read: a bad entry is
reported by name and left out, the others stay usable.

Reading a catalog never touches the network unless a URL is given as its source."""
from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from .. import untrusted
from ..errors import DSUError
from ..protocol import MSST_TYPES
from .download import Expected

VERSION = 1
TYPES = ("demucs", *MSST_TYPES, "vr", "mdx", "apollo")
MODEL_SUFFIXES = (".ckpt", ".pth", ".th", ".onnx", ".pt", ".bin", ".safetensors")  # what a typed name may end in
NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+-]{0,127}")
HEX = re.compile(r"[0-9a-f]+")

# field -> (JSON type, required, what it means); docs/catalog.md documents exactly these
FIELDS: dict[str, tuple[str, bool, str]] = {
    "name": ("string", True, "the name users ask for (`dsu models download NAME`, `\"model\": NAME`)"),
    "type": ("string", True, "the architecture: " + ", ".join(TYPES)),
    "stems": ("string[]", True, "the stems the model writes, in its own spelling"),
    "files": ("object[]", True, "the files to download (see the file fields)"),
    "checkpoint": ("string|null", False, "the `path` of the weights file among `files` (null for a Demucs bag)"),
    "config": ("string|null", False, "the config: the `path` of one of `files`, or a file shipped in the package "
                                     "under `dsu/configs/` (e.g. `demucs/htdemucs.yaml`)"),
    "aliases": ("string[]", False, "other names for the same model"),
    "purpose": ("string[]", False, "what it is for: vocals, instrumental, 4-stem, 6-stem, karaoke, denoise, "
                                   "dereverb, drums, restoration, ..."),
    "description": ("string", False, "one line for listings"),
    "license": ("string", False, "the weights' licence as their publisher states it"),
    "sdr": ("number|object", False, "the published quality figure in dB: one number, or per stem"),
    "source": ("string", False, "where the entry's data comes from (a page or repository)"),
}
FILE_FIELDS: dict[str, tuple[str, bool, str]] = {
    "path": ("string", True, "the file's name as installed, relative to the models dir (as the reference tool "
                             "names it)"),
    "url": ("string", True, "where it is downloaded from (http or https)"),
    "size": ("integer|null", False, "its size in bytes; null when not known"),
    "sha256": ("string|null", False, "its sha256 (64 hex digits); null when not published: the first verified "
                                     "download is then pinned in `<models-dir>/dsu-lock.json`"),
    "sha256_prefix": ("string|null", False, "a known beginning of its sha256, e.g. the `-<sha8>` of Demucs file names"),
}


@dataclass(frozen=True)
class FileSpec:
    path: str
    url: str
    size: int | None = None
    sha256: str | None = None
    sha256_prefix: str | None = None

    def expected(self, pinned: str | None = None) -> Expected:
        """What a copy of this file must be: the catalog's sha256, else the one `pinned` by a first download."""
        return Expected(self.size, self.sha256 or pinned, self.sha256_prefix)


@dataclass(frozen=True)
class Entry:
    name: str
    type: str
    stems: tuple[str, ...]
    files: tuple[FileSpec, ...]
    checkpoint: str | None = None
    config: str | None = None
    aliases: tuple[str, ...] = ()
    purpose: tuple[str, ...] = ()
    description: str = ""
    license: str | None = None
    sdr: Any = None
    source: str | None = None

    @property
    def size(self) -> int | None:
        """Bytes to download, when every file's size is known."""
        sizes = [f.size for f in self.files if f.size is not None]
        return sum(sizes) if len(sizes) == len(self.files) else None

    def file(self, path: str | None) -> FileSpec | None:
        return next((f for f in self.files if f.path == path), None)

    def config_in_package(self) -> bool:
        return bool(self.config) and self.file(self.config) is None


@dataclass
class Catalog:
    source: str
    entries: dict[str, Entry] = field(default_factory=dict)   # by name
    aliases: dict[str, str] = field(default_factory=dict)     # alias -> name
    errors: list[str] = field(default_factory=list)           # one line per entry left out

    def find(self, name: str) -> Entry | None:
        """The entry `name` means: its name or an alias, either with a model file's extension
        (`UVR-MDX-NET-Inst_HQ_3.onnx`, as audio-separator users type it), or the name of its
        weights file as installed, with or without the extension."""
        name = str(name)
        bare = name[:-len(Path(name).suffix)] if Path(name).suffix.lower() in MODEL_SUFFIXES else name
        for key in dict.fromkeys((name, bare)):
            entry = self.entries.get(key) or self.entries.get(self.aliases.get(key, ""))
            if entry is not None:
                return entry
        return next((e for e in self.entries.values() if e.checkpoint and (
            name == Path(e.checkpoint).name or name == Path(e.checkpoint).stem)), None)

    def get(self, name: str) -> Entry:
        entry = self.find(name)
        if entry is None:
            bad = [e for e in self.errors if f"`{name}`" in e]
            if bad:
                raise DSUError("bad_value", f"the catalog entry {name!r} cannot be used: {bad[0]}")
            raise DSUError("model_not_found", f"no model named {name!r} in the catalog ({self.source}); "
                                              "`dsu models list --available` shows the names")
        return entry

    def __iter__(self):
        return iter(self.entries.values())

    def __len__(self) -> int:
        return len(self.entries)


# ---- checking -----------------------------------------------------------------------------------------

def _type_ok(value, kind: str) -> bool:
    for k in kind.split("|"):
        if k == "null" and value is None or k == "string" and isinstance(value, str) \
                or k == "integer" and isinstance(value, int) and not isinstance(value, bool) \
                or k == "number" and isinstance(value, (int, float)) and not isinstance(value, bool) \
                or k == "object" and isinstance(value, dict) \
                or k == "string[]" and isinstance(value, list) and all(isinstance(x, str) for x in value) \
                or k == "object[]" and isinstance(value, list) and all(isinstance(x, dict) for x in value):
            return True
    return False


def _check_fields(obj: dict, fields: dict, where: str) -> None:
    for key, (kind, required, _) in fields.items():
        if key not in obj:
            if required:
                raise ValueError(f"{where} has no `{key}`")
        elif not _type_ok(obj[key], kind):
            raise ValueError(f"{where}: `{key}` must be {kind.replace('|', ' or ')}, not {json.dumps(obj[key])[:60]}")
    unknown = sorted(set(obj) - set(fields))
    if unknown:
        raise ValueError(f"{where}: unknown field(s) {', '.join(unknown)}")


def safe_relative(path: str) -> bool:
    """A catalog's file path may only name a file under the models dir."""
    parts = path.split("/")
    return bool(path) and not path.startswith("/") and "\\" not in path and ":" not in path \
        and "\0" not in path and all(p not in ("", ".", "..") for p in parts)


def _file(obj: dict, where: str) -> FileSpec:
    _check_fields(obj, FILE_FIELDS, where)
    path, url = obj["path"], obj["url"]
    if not safe_relative(path):
        raise ValueError(f"{where}: `path` {path!r} must be a relative path inside the models dir (no `..`)")
    if not url.startswith(("http://", "https://")):
        raise ValueError(f"{where}: `url` must start with http:// or https://")
    size = obj.get("size")
    if size is not None and size <= 0:
        raise ValueError(f"{where}: `size` must be a positive number of bytes")
    sha, prefix = obj.get("sha256"), obj.get("sha256_prefix")
    if sha is not None and not (len(sha) == 64 and HEX.fullmatch(sha)):
        raise ValueError(f"{where}: `sha256` must be 64 lowercase hex digits")
    if prefix is not None and not (4 <= len(prefix) <= 64 and HEX.fullmatch(prefix)):
        raise ValueError(f"{where}: `sha256_prefix` must be 4 to 64 lowercase hex digits")
    return FileSpec(path, url, size, sha, prefix)


def package_config(relative: str) -> Path:
    """A config shipped in the package (`dsu/configs/<relative>`), as a file path."""
    return Path(str(resources.files("dsu").joinpath("configs", *relative.split("/"))))


def parse_entry(obj: Any, index: int) -> Entry:
    """One catalog entry, checked; ValueError says what is wrong."""
    if not isinstance(obj, dict):
        raise ValueError(f"entry #{index} is not an object")
    name = obj.get("name")
    where = f"entry `{name}`" if isinstance(name, str) else f"entry #{index}"
    _check_fields(obj, FIELDS, where)
    assert isinstance(name, str)  # a required string field: _check_fields checked it
    if not NAME.fullmatch(name):
        raise ValueError(f"{where}: `name` may hold letters, digits and . _ + - only")
    if obj["type"] not in TYPES:
        raise ValueError(f"{where}: `type` must be one of {', '.join(TYPES)}, not {obj['type']!r}")
    if not obj["files"]:
        raise ValueError(f"{where}: `files` is empty")
    if not obj["stems"]:
        raise ValueError(f"{where}: `stems` is empty")
    files = tuple(_file(f, f"{where}, file #{i}") for i, f in enumerate(obj["files"]))
    paths = [f.path for f in files]
    if len(set(paths)) != len(paths):
        raise ValueError(f"{where}: two files have the same `path`")
    checkpoint, config = obj.get("checkpoint"), obj.get("config")
    if checkpoint is not None and checkpoint not in paths:
        raise ValueError(f"{where}: `checkpoint` {checkpoint!r} is not the path of one of its files")
    if checkpoint is None and obj["type"] != "demucs":
        raise ValueError(f"{where}: `checkpoint` is required (the path of its weights file)")
    if config is not None and config not in paths:
        if not safe_relative(config) or not package_config(config).is_file():
            raise ValueError(f"{where}: `config` {config!r} is neither one of its files nor a config shipped "
                             "in the package (dsu/configs/)")
    if obj["type"] in MSST_TYPES and config is None:
        raise ValueError(f"{where}: an MSST model needs its `config`")
    if obj["type"] == "demucs" and checkpoint is None and config is None:
        raise ValueError(f"{where}: a Demucs bag needs its `config` (the bag .yaml)")
    for alias in obj.get("aliases", []):
        if not NAME.fullmatch(alias):
            raise ValueError(f"{where}: alias {alias!r} may hold letters, digits and . _ + - only")
    return Entry(name=name, type=obj["type"], stems=tuple(obj["stems"]), files=files, checkpoint=checkpoint,
                 config=config, aliases=tuple(obj.get("aliases", ())), purpose=tuple(obj.get("purpose", ())),
                 description=obj.get("description", ""), license=obj.get("license"), sdr=obj.get("sdr"),
                 source=obj.get("source"))


def parse(data: Any, source: str, into: Catalog | None = None) -> Catalog:
    """A catalog from the parsed JSON of one file (added to `into` when given). A document that is not a
    catalog at all is an error; a bad entry is recorded in `errors` and left out."""
    catalog = into if into is not None else Catalog(source)
    if not isinstance(data, dict) or not isinstance(data.get("models"), list):
        raise DSUError("bad_value", f"{source} is not a DSU catalog: expected {{\"version\": {VERSION}, "
                                    "\"models\": [...]}} (see docs/catalog.md)")
    if data.get("version") != VERSION:
        raise DSUError("bad_value", f"{source}: catalog version {data.get('version')!r} is not supported "
                                    f"(this DSU reads version {VERSION})")
    for i, obj in enumerate(data["models"]):
        try:
            entry = parse_entry(obj, i)
            taken = [n for n in (entry.name, *entry.aliases) if n in catalog.entries or n in catalog.aliases]
            if taken:
                raise ValueError(f"entry `{entry.name}`: the name {taken[0]!r} is already used by another entry")
        except ValueError as e:
            catalog.errors.append(f"{source}: {e}")
            continue
        catalog.entries[entry.name] = entry
        catalog.aliases.update({a: entry.name for a in entry.aliases})
    return catalog


def shipped() -> Catalog:
    """The catalog shipped in the package: every `dsu/data/catalog/*.json`, merged."""
    folder = resources.files("dsu").joinpath("data", "catalog")
    catalog = Catalog("the shipped catalog")
    for item in sorted(folder.iterdir(), key=lambda p: p.name):
        if item.name.endswith(".json"):
            parse(json.loads(item.read_text(encoding="utf-8")), f"dsu/data/catalog/{item.name}", catalog)
    return catalog


MOST_URL_BYTES = 16 << 20  # the shipped catalog is ~100 kB; a document past this is no catalog
URL_TIMEOUT = 30.0


def read(source: str | Path, cancelled=None) -> Catalog:
    """A catalog from a file or an http(s) URL (an organisation's mirror, an offline copy). A URL is
    read like a download: bounded in bytes, at least `download.MIN_RATE` B/s, no retries."""
    source = str(source)
    if source.startswith(("http://", "https://")):
        try:
            text = _fetch_text(source, cancelled)
        except ValueError as e:  # not UTF-8
            raise DSUError("bad_value", f"cannot read the catalog at {source}: {e}") from None
        data = untrusted.parse_json(text, "the catalog", source)
    else:
        data = untrusted.read_json(source, "the catalog")
    return parse(data, source)


def _fetch_text(url: str, cancelled=None) -> str:
    import httpx

    from . import download
    http, _ = download.client(URL_TIMEOUT, cancelled=cancelled)
    body = bytearray()
    try:
        with http, http.stream("GET", url) as response:
            response.raise_for_status()
            for block in response.iter_bytes():
                body += block
                if len(body) > MOST_URL_BYTES:
                    raise DSUError("bad_value", f"the catalog at {url} is larger than {MOST_URL_BYTES} bytes: "
                                                "it is not a DSU catalog")
        return body.decode("utf-8")
    except httpx.HTTPError as e:
        gai = download.unresolved(e)
        why = f"the host does not resolve ({gai.strerror}): no network, or a wrong URL" if gai else \
            f"{type(e).__name__}: {e or 'no detail'}"
        raise DSUError("bad_value", f"cannot read the catalog at {url}: {why}") from None


def load(source: str | Path | None = None, cancelled=None) -> Catalog:
    """The catalog in use: `source`, else $DSU_CATALOG, else the shipped one."""
    source = source or os.environ.get("DSU_CATALOG")
    return read(source, cancelled) if source else shipped()
