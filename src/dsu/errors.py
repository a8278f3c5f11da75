"""Errors with the stable codes the protocol reports."""
from __future__ import annotations

CODES = (
    "bad_json", "unknown_command", "missing_field", "bad_value", "input_not_found", "unsupported_audio",
    "model_not_found", "config_mismatch", "cancelled", "out_of_memory", "internal",
)


class DSUError(Exception):
    """An error a user can act on: `code` is one of CODES, the message says what to do."""

    def __init__(self, code: str, message: str):
        assert code in CODES, code
        super().__init__(message)
        self.code = code
        self.message = message


def missing_keys_message(missing, unexpected, what: str = "checkpoint") -> str:
    """The `config_mismatch` text for a state dict that does not fit its model."""
    parts = []
    if missing:
        parts.append(f"missing keys: {', '.join(list(missing)[:5])}" + (" ..." if len(missing) > 5 else ""))
    if unexpected:
        parts.append(f"unexpected keys: {', '.join(list(unexpected)[:5])}" + (" ..." if len(unexpected) > 5 else ""))
    return (f"the {what} does not fit its config ({'; '.join(parts)}); "
            "check that the config file is the one published with these weights")
