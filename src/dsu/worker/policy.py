"""The previous DSU's runtime policy file, `~/.dsu/runtime_policy.json` (or `$DSU_RUNTIME_POLICY_PATH`):
per worker name, how many models its cache keeps when the command line does not say.

    {"global": {"max_cached_models": 1}, "demucs": {"max_cached_models": 2}, "bsroformer": {...}}

The file is untrusted input: anything wrong with it (not a regular file, too large, not JSON, a value
of the wrong type or range) is one warning on stderr and the defaults hold; it never stops a worker."""
from __future__ import annotations

import os
import sys
from pathlib import Path

from .. import protocol as spec
from .. import untrusted
from ..errors import DSUError

DEFAULT_PATH = "~/.dsu/runtime_policy.json"
MAX_BYTES = 64 * 1024  # the documented file is a few hundred bytes
# the section each worker name reads before `global` (the previous DSU's names)
SECTIONS = {"dsu-demucs": "demucs", "dsu-bsroformer": "bsroformer", "dsu-audio-separator": "audiosep"}
# checked as set_cache_size's `n` is: the same type and bounds
MAX_CACHED_MODELS = next(f for f in spec.COMMANDS["set_cache_size"].fields if f.name == "n")


class PolicyError(Exception):
    pass


def policy_path() -> Path:
    return Path(os.path.expanduser(os.environ.get("DSU_RUNTIME_POLICY_PATH") or DEFAULT_PATH))


def _read(path: Path) -> dict | None:
    """The policy document, None when there is no file; PolicyError saying what is wrong with it."""
    if not os.path.exists(path):  # a dangling link too: there is no policy
        return None
    try:
        document = untrusted.read_json(path, "the file", MAX_BYTES)
    except DSUError as e:
        raise PolicyError(e.message) from None
    if not isinstance(document, dict):
        raise PolicyError(f"it must hold a JSON object, not {type(document).__name__}")
    return document


def _section_value(document: dict, section: str) -> int | None:
    values = document.get(section)
    if values is None:
        return None
    if not isinstance(values, dict):
        raise PolicyError(f"`{section}` must be an object, not {type(values).__name__}")
    value = values.get("max_cached_models")
    if value is None:
        return None
    try:
        return MAX_CACHED_MODELS.check(value, "the policy", f"{section}.max_cached_models")
    except DSUError as e:
        raise PolicyError(e.message) from None


def max_cached_models(worker: str) -> int | None:
    """The policy's `max_cached_models` for worker name `worker` (its own section, else `global`),
    None when the file does not set one or cannot be used (said on stderr)."""
    path = policy_path()
    try:
        document = _read(path)
        if document is None:
            return None
        for section in (SECTIONS.get(worker), "global"):
            value = _section_value(document, section) if section else None
            if value is not None:
                return value
    except PolicyError as e:
        print(f"{worker}: warning: ignoring the runtime policy {path}: {e}; fix or remove it", file=sys.stderr,
              flush=True)
    return None
