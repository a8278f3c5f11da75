"""Errors with the stable codes the protocol reports."""
from __future__ import annotations

import json
import re
from typing import Any

CODES = (
    "bad_json", "unknown_command", "missing_field", "bad_value", "input_not_found", "unsupported_audio",
    "model_not_found", "config_mismatch", "cancelled", "out_of_memory", "internal",
    "output_not_writable",
    "checksum_mismatch", "download_failed",
)


class DSUError(Exception):
    """An error a user can act on: `code` is one of CODES, the message says what to do."""

    # set on some errors only (read with getattr and a default): the command that installs a missing
    # catalog model (catalog.store), whether a failed download may be resumed (catalog.download)
    download: str
    resumable: bool

    def __init__(self, code: str, message: str):
        assert code in CODES, code
        super().__init__(message)
        self.code = code
        self.message = message


def listed(items, most: int, sep: str = ", ") -> str:
    """The first `most` items joined, with ' ...' when there are more."""
    items = list(items)
    return sep.join(items[:most]) + (" ..." if len(items) > most else "")


def state_differences(expected, given) -> tuple[list[str], list[str], list[str]]:
    """How a state dict `given` differs from the `expected` one (both key -> tensor): (missing keys,
    unexpected keys, 'key (given shape) != (expected shape)' for the keys both have)."""
    missing = [k for k in expected if k not in given]
    unexpected = [k for k in given if k not in expected]
    misshapen = [f"{k} {tuple(given[k].shape)} != {tuple(v.shape)}" for k, v in expected.items()
                 if k in given and tuple(given[k].shape) != tuple(v.shape)]
    return missing, unexpected, misshapen


def missing_keys_message(missing, unexpected, what: str = "checkpoint") -> str:
    """The `config_mismatch` text for a state dict that does not fit its model."""
    parts = []
    if missing:
        parts.append(f"missing keys: {listed(missing, 5)}")
    if unexpected:
        parts.append(f"unexpected keys: {listed(unexpected, 5)}")
    return (f"the {what} does not fit its config ({'; '.join(parts)}); "
            "check that the config file is the one published with these weights")


SHOWN_CHARS = 120  # how much of a bad value an error message quotes


def shown_text(text: str) -> str:
    """`text` cut to SHOWN_CHARS for an error message."""
    return text if len(text) <= SHOWN_CHARS else text[:SHOWN_CHARS] + "..."


def shown(value: Any) -> str:
    """A request value as an error message quotes it: JSON, ASCII-escaped, cut short."""
    try:
        text = json.dumps(value)
    except (ValueError, TypeError, RecursionError):
        text = repr(value)
    return shown_text(text)


_FIELD = re.compile(r"`([^`\n]+)`")  # a field, or a request fragment such as `{"model": ...}`


def speak(text: str, flags: dict[str, str] | None) -> str:
    """`text` with each backticked field (or fragment) the map knows replaced by the CLI's words."""
    if not flags:
        return text
    return _FIELD.sub(lambda m: flags.get(m[1], m[0]), text)
