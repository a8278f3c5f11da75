"""Errors in the words of the interface the user typed. The job layer (dsu.jobs, the families, the
ensemble) names request fields in backticks, as the worker protocol spells them (`config_path`); each
command line keeps a map from those fields to its own flags beside its parser, and what it prints
goes through `speak` once (dsu.progress.Display, compat.common.refuse). A field a map lacks stays as
the job layer wrote it."""
from __future__ import annotations

import re

_FIELD = re.compile(r"`([^`\n]+)`")  # a field, or a request fragment such as `{"model": ...}`


def speak(text: str, flags: dict[str, str] | None) -> str:
    """`text` with each backticked field (or fragment) the map knows replaced by the CLI's words."""
    if not flags:
        return text
    return _FIELD.sub(lambda m: flags.get(m[1], m[0]), text)


def options_as(template: str, command: str = "separate") -> dict[str, str]:
    """Every request field of `command` in `template` (`-O {}` for `dsu separate -O sanitize=...`), and
    the model families' options with their aliases, which travel the same way; a CLI's own flags are
    laid over it."""
    from ..worker import spec
    return {**{name: template.format(name) for name in spec.FAMILY_OPTION_NAMES},
            **{f.name: template.format(f.name) for f in spec.COMMANDS[command].fields}}
