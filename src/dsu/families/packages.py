"""Pickled model packages (torch files holding classes and objects, not only tensors), read without
letting the file run code.

A package names the globals it needs; before anything is unpickled, every global outside torch's own
tensor-only allow list is read from the file and compared with the ones the caller expects, so a file
that refers to anything else (`os.system`, `builtins.eval`, ...) is refused with its names and nothing
in it runs. The load itself then goes through torch's weights-only unpickler with just those globals
added."""
from __future__ import annotations

import contextlib
import contextvars
import hashlib
import pickle
import zipfile
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import torch

from .. import untrusted
from ..errors import DSUError

# Whether weight files are memory-mapped (read as the model takes them) rather than read whole first:
# the worker's `set_storage_type` (ssd: mapped, hdd: read whole, DSU's default) sets it around each
# model load (`dsu.cache`), so it is per load, not a process-wide switch.
_MAPPED = contextvars.ContextVar("dsu_mapped_weights", default=False)


@contextlib.contextmanager
def mapped_weights(mapped: bool) -> Iterator[None]:
    """Weight files loaded inside map their tensors (`torch.load(mmap=True)`) when `mapped`."""
    token = _MAPPED.set(mapped)
    try:
        yield
    finally:
        _MAPPED.reset(token)


def _mmap(path: Path, wanted: bool | None) -> bool:
    """Map `path` when asked (None: as `mapped_weights` says) and its format allows: only torch's zip
    files (torch.save's format since 1.6) can be mapped."""
    return (_MAPPED.get() if wanted is None else wanted) and zipfile.is_zipfile(path)


def _qualified_name(obj) -> str:
    """The name a pickle uses for a class or function: `module.qualname`."""
    return f"{obj.__module__}.{obj.__qualname__}"


def load_package(path: str | Path, allowed: Iterable, what: str = "model package", mmap: bool | None = None) -> Any:
    """The object pickled in the torch file `path`, which may refer to tensors, plain data and the
    classes/functions in `allowed`, nothing else. With `mmap` (None: as `mapped_weights` says),
    tensor data is mapped, not read."""
    path = Path(path)
    untrusted.check(path, f"the {what}")
    allowed = list(allowed)
    names = {_qualified_name(g) for g in allowed}
    if not zipfile.is_zipfile(path):
        raise DSUError("bad_value", f"cannot read {path.name} as a {what}: it is not a torch zip file (torch.save's "
                                    "format since torch 1.6); it may be damaged or something else")
    try:
        found = torch.serialization.get_unsafe_globals_in_checkpoint(str(path))
    except Exception as e:  # a damaged torch file
        raise DSUError("bad_value", f"cannot read {path.name} as a {what}: {first_line(e)}") from None
    refused = sorted(set(found) - names)
    if refused:
        raise DSUError("bad_value", f"{path.name} refers to {', '.join(refused)}, which a {what} has no reason "
                                    "to hold; it was refused unread (nothing in it ran). Use the file as its "
                                    "authors published it")
    try:
        with torch.serialization.safe_globals(allowed):
            return torch.load(str(path), map_location="cpu", weights_only=True, mmap=_mmap(path, mmap))
    except pickle.UnpicklingError:  # an allowed global used in a way plain data never is
        raise DSUError("bad_value", f"{path.name} does more than a {what} needs (its pickle builds objects "
                                    "it has no reason to); it was refused (nothing in it ran)") from None
    except Exception as e:
        raise DSUError("bad_value", f"cannot read {path.name} as a {what}: {first_line(e)}") from None


def verify_checksum(path: str | Path, prefix: str) -> None:
    """Raise unless the file's sha256 starts with `prefix` (the `-<sha8>` of demucs file names)."""
    path = Path(path)
    untrusted.check(path, "the model file")
    sha = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            sha.update(block)
    actual = sha.hexdigest()[:len(prefix)]
    if actual != prefix.lower():
        raise DSUError("bad_value", f"{path.name} is damaged or not the file its name promises: its sha256 "
                                    f"starts with {actual}, not {prefix}. Download it again")


def first_line(e: Exception) -> str:
    """An exception's first line, for messages that must stay one line."""
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


# ---- weight files that carry training metadata -------------------------------------------------

# Modules whose objects a training run leaves beside the weights (a Lightning checkpoint's
# hyper-parameters and callback states, omegaconf configs, numpy scalars in logged metrics).
# Their objects are read as inert placeholders, never built: the weights are all DSU uses.
TRAINING_METADATA = ("omegaconf.", "pytorch_lightning.", "lightning.", "lightning_fabric.", "typing.",
                     "argparse.Namespace", "pathlib.", "numpy.", "collections.defaultdict", "enum.", "_codecs.encode")


# Value types published checkpoints hold that are plain data under another name, read as what they
# are: look2hear's `serialize()` (the official Apollo `pytorch_model.bin`) stores `torch.__version__`,
# a `TorchVersion` (a `str` whose construction is `str`'s own).
VALUE_TYPES = {"torch.torch_version.TorchVersion": torch.torch_version.TorchVersion}


class Inert:
    """Stands in for an object of training metadata: takes whatever the pickle gives it, does nothing."""

    def __new__(cls, *args, **kwargs):
        return object.__new__(cls)

    def __init__(self, *args, **kwargs):
        pass

    def __setstate__(self, state):
        pass

    def __setitem__(self, key, value):  # a dict subclass's items
        pass

    def append(self, item):  # a list subclass's items
        pass

    def extend(self, items):
        pass


def load_weights_file(path: str | Path, what: str) -> Any:
    """The object in a torch weights file (tensors and plain data), for a checkpoint that may also
    hold training metadata (see TRAINING_METADATA), which is read as `Inert`. Any other global
    (`os.system`, a model class, ...) refuses the file unread."""
    path = Path(path)
    untrusted.check(path, what)
    mmap = _mmap(path, None)
    try:
        return torch.load(str(path), map_location="cpu", weights_only=True, mmap=mmap)
    except pickle.UnpicklingError:
        pass  # a global outside torch's plain-data allow list: see whether it is only metadata
    except Exception as e:
        raise DSUError("bad_value", f"cannot read {path.name} as {what}: {first_line(e)}") from None
    try:
        found = sorted(torch.serialization.get_unsafe_globals_in_checkpoint(str(path)))
    except Exception as e:
        raise DSUError("bad_value", f"cannot read {path.name} as {what}: {first_line(e)}") from None
    refused = [g for g in found if g not in VALUE_TYPES and not g.startswith(TRAINING_METADATA)]
    if refused:
        raise DSUError("bad_value", f"{path.name} refers to {', '.join(refused[:5])}, which {what} has no reason "
                                    "to hold; it was refused unread (nothing in it ran). Use the file as its "
                                    "authors published it, or save its state_dict alone with torch.save")
    try:
        allowed: list[Callable[..., Any] | tuple[Callable[..., Any], str]] = [
            VALUE_TYPES[name] if name in VALUE_TYPES else (Inert, name) for name in found]
        with torch.serialization.safe_globals(allowed):
            return torch.load(str(path), map_location="cpu", weights_only=True, mmap=mmap)
    except Exception as e:
        raise DSUError("bad_value", f"cannot read {path.name} as {what}: {first_line(e)}") from None
