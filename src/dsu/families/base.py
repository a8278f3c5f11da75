"""What a model family gives the runtime: how a request names its files, how they load, how a loaded
model cuts a signal into engine passes. Families know nothing of JSON or of the worker."""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import torch

from .. import backends, protocol, untrusted
from ..engine import Pass, Signal
from ..errors import DSUError

CATALOGUE = "models.json"


@dataclass(frozen=True)
class ModelRef:
    """A request's model, resolved to files but not loaded yet."""
    family: str                  # key in dsu.families.FAMILIES
    name: str                    # shown to users; names the output folder of the Demucs layout
    files: tuple[str, ...] = ()  # every file whose content defines the model
    options: tuple[tuple[str, Any], ...] = ()  # load-time options, sorted (key, value) pairs

    def option(self, key: str, default=None):
        return dict(self.options).get(key, default)

    def cache_key(self) -> tuple:
        """Same files (by path, size and mtime) and options: same loaded model."""
        stamps = []
        for f in self.files:
            st = os.stat(f)
            stamps.append((f, st.st_size, st.st_mtime_ns))
        return (self.family, self.name, tuple(stamps), self.options)


def make_ref(family: str, name: str, files, **options) -> ModelRef:
    opts = tuple(sorted((k, _hashable(v)) for k, v in options.items() if v is not None))
    return ModelRef(family, name, tuple(str(Path(f).resolve()) for f in files), opts)


def _hashable(v):
    if isinstance(v, dict):
        return tuple(sorted((k, _hashable(x)) for k, x in v.items()))
    if isinstance(v, list):
        return tuple(_hashable(x) for x in v)
    return v


class LoadedModel:
    """A loaded model, ready to separate. Subclasses set the attributes and implement `passes`."""
    name: str
    family: str                  # key in dsu.families.FAMILIES
    samplerate: int
    audio_channels: int = 2
    stems: list[str]
    options: ClassVar[frozenset[str]] = frozenset()  # request fields this family understands
    device: torch.device = torch.device("cpu")
    amp: bool = False            # the config trains in float16, which `precision: auto` follows on CUDA
    ref: ModelRef | None = None  # what was loaded (set by the loader's caller): keys converted networks

    def passes(self, signal: Signal, runtime: backends.Runtime = backends.EXACT, **options) -> list[Pass]:
        """Engine passes over `signal` (already at `samplerate` with `audio_channels`), whose outputs
        are [len(stems), audio_channels, n] on the signal's timeline; `runtime` runs the networks."""
        raise NotImplementedError

    def core(self, net: torch.nn.Module, runtime: backends.Runtime, core=None, name: str | None = None):
        """What runs `net`'s core (default `net.core`) on `runtime`, kept with this loaded model."""
        if "_cores" not in vars(self):
            self._cores = backends.Cores()
        identity = None
        if runtime.backend == "openvino" and self.ref is not None and self.ref.files:
            from ..backends import ir_cache
            identity = ir_cache.identity(self.ref.files, [self.ref.family, self.ref.options])
        return self._cores.get(net, runtime, identity, core, name or f"{self.name} ({self.family})")

    def finish(self, stems: dict[str, torch.Tensor], mix: torch.Tensor, **options) -> dict[str, torch.Tensor]:
        """Derived stems for a finished block (e.g. an instrumental as mix minus vocals); default none."""
        return stems

    def peak_limit(self, **options) -> float | None:
        """A peak each whole stem file is scaled down to when louder (python-audio-separator's
        normalization); default none."""
        return None

    def memory_estimate(self, length: int, **options):
        """Peak memory of a job over `length` samples (at `samplerate`) with these options, as a
        `dsu.memory.Estimate`, from the options alone before anything is allocated; None: unknown."""
        return None

    def output_stems(self, **options) -> list[str]:
        """The stems `finish` returns for these options."""
        return list(self.stems)

    def nbytes(self) -> int:
        """Memory the loaded model holds, for the cache bound."""
        compiled = self._cores.nbytes() if "_cores" in vars(self) else 0
        return compiled + sum(t.numel() * t.element_size() for m in self._modules() for t in
                              list(m.parameters()) + list(m.buffers()))

    def _modules(self) -> list[torch.nn.Module]:
        return [v for v in vars(self).values() if isinstance(v, torch.nn.Module)]


@dataclass
class Family:
    """A model family: how names and paths resolve, how files load, how outputs are laid out."""
    name: str
    # 'demucs': OUT/<model>/<input>/<stem>; 'flat': OUT/<input>/<stem>; 'uvr': OUT/<input>_(<Stem>)_<model>
    layout: str = "flat"
    default_bit_depth: int = 32
    model_types: tuple[str, ...] = ()  # values of `model_type` that pick this family
    extensions: tuple[str, ...] = ()   # model_path endings this family claims when no model_type says otherwise
    loader: Any = field(default=None, repr=False)  # callable (ModelRef, torch.device) -> LoadedModel
    resolver: Any = field(default=None, repr=False)  # callable (request, models_dir) -> ModelRef | None
    lister: Any = field(default=None, repr=False)  # callable (models_dir) -> list[dict]


def whole_number(name: str, value, least: int, default: int | None = None) -> int:
    """A request option that must be a whole number >= `least` (`default` when absent)."""
    if value is None and default is not None:
        return default
    try:
        out = int(value)
    except (TypeError, ValueError):
        out = least - 1
    if out < least or out != float(value):
        raise DSUError("bad_value", f"{name} must be a whole number >= {least}, not {value!r}")
    return out


def option_names(family: str) -> frozenset[str]:
    """The request fields `family` reads as its options: the protocol table's, under every name."""
    return frozenset(n for f in protocol.options_of(family) for n in protocol.option_names(f, family))


def read_options(family: str, options: dict, own: dict | None = None) -> dict:
    """`family`'s options by their plain names: the value under the plain name, else under an alias,
    else the table's default for the family, or where that is the model's own, `own`'s (else None).
    A value is checked by the table as a request's are, so a direct call is held to the worker's
    rules (a true/false option also takes 1/0 and their strings, as older clients send)."""
    out = {}
    for f in protocol.options_of(family):
        given = [(n, options[n]) for n in protocol.option_names(f, family) if options.get(n) is not None]
        if given:
            name, value = given[0]
            out[f.name] = f.check(flag(name, value) if f.type == "boolean" else value, "separate", name)
        else:
            default = dict(f.families)[family]
            out[f.name] = (own or {}).get(f.name) if default is protocol.MODELS_OWN else default
    return out


def flag(name: str, value) -> bool:
    """A request option that must be true or false (also 1/0 and their strings, as older clients send)."""
    if isinstance(value, bool):
        return value
    if isinstance(value, (int, float)) and value in (0, 1):
        return bool(value)
    if isinstance(value, str) and value.lower() in ("true", "false", "1", "0"):
        return value.lower() in ("true", "1")
    raise DSUError("bad_value", f"{name} must be true or false, not {value!r}")


def read_catalogue(models_dir: Path | None, types) -> dict[str, dict]:
    """`<models-dir>/models.json` entries whose `type` is one of `types`, by name. The file maps names
    to {type, checkpoint, config, stems} (or holds a list of such entries each with a `name`)."""
    path = models_dir / CATALOGUE if models_dir else None
    if path is None or not path.is_file():
        return {}
    data = untrusted.read_json(path, "the model list")
    if isinstance(data, dict) and isinstance(data.get("models"), list):
        data = data["models"]
    if isinstance(data, list):
        data = {e["name"]: e for e in data if isinstance(e, dict) and isinstance(e.get("name"), str) and e["name"]}
    if not isinstance(data, dict):
        raise DSUError("bad_value", f"{path} must map model names to {{type, config, checkpoint, stems}}")
    found = {k: v for k, v in data.items() if isinstance(v, dict) and v.get("type") in types}
    for name, entry in found.items():
        for key in ("checkpoint", "config"):
            if entry.get(key) is not None and not (isinstance(entry[key], str) and "\0" not in entry[key]):
                raise DSUError("bad_value", f"{path}: `{key}` of {name!r} must be a file path (relative to the "
                                            "models dir), not " + json.dumps(entry[key])[:40])
        stems = entry.get("stems")
        if stems is not None and not (isinstance(stems, list) and all(isinstance(s, str) for s in stems)):
            raise DSUError("bad_value", f"{path}: `stems` of {name!r} must be a list of stem names")
    return found


UVR_FAMILIES = ("vr", "mdx")  # their stems are UVR's own names already


def capitalised(stem: str, family: str) -> str:
    """python-audio-separator's spelling of a stem, UVR's vocabulary: UVR models' names as their
    tables give them (`lead_only` too); Demucs', DSU's and MSST configs' lower-case names capitalised
    (Drums, Vocals), as audio-separator's Demucs mapping and UVR's copies of the MSST configs (which
    audio-separator reads, and names MDXC stems from) spell them; `no_x` as UVR's `No X`."""
    if stem.startswith("no_"):
        return "No " + capitalised(stem[3:], family)
    if family in UVR_FAMILIES:
        return stem
    return stem[:1].upper() + stem[1:]
