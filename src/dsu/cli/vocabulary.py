"""Errors in the words of the interface the user typed. The job layer (dsu.jobs, the families, the
ensemble) names request fields in backticks, as the worker protocol spells them (`config_path`); each
command line keeps a map from those fields to its own flags beside its parser, and what it prints
goes through `dsu.errors.speak` once (dsu.cli.progress.Display, dsu.cli.compat.common.refuse). A field a
map lacks stays as
the job layer wrote it."""
from __future__ import annotations


def options_as(template: str, command: str = "separate") -> dict[str, str]:
    """Every request field of `command` in `template` (`-O {}` for `dsu separate -O sanitize=...`), and
    the model families' options with their aliases, which travel the same way; a CLI's own flags are
    laid over it."""
    from .. import protocol as spec
    return {**{name: template.format(name) for name in spec.FAMILY_OPTION_NAMES},
            **{f.name: template.format(f.name) for f in spec.COMMANDS[command].fields}}
