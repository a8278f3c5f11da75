"""Command-line entry points: `dsu separate|models|worker` and the worker names integrations spawn.

`dsu separate` builds the same request fields a worker gets, validated by the same table, and runs
them through the same job code (dsu.jobs): one file or a hundred, the model is loaded once."""
from __future__ import annotations

import argparse
import functools
import importlib
import os
import sys

from .. import __version__
from ..worker import config as worker_config

EXIT_FAILED, EXIT_USAGE, EXIT_INTERRUPTED = 1, 2, 130
EXIT_PIPE = 141  # 128 + SIGPIPE: what `yes | head -1` leaves for `yes`


# subcommand modules: each has add_parser(subparsers), which sets `run` (args -> exit code)
SUBCOMMANDS = ("dsu.cli.separate", "dsu.cli.restore", "dsu.cli.denoise", "dsu.cli.models", "dsu.cli.ensemble",
               "dsu.cli.batch", "dsu.cli.eval", "dsu.cli.clean", "dsu.cli.completion")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="dsu", description="DSU: music source separation and restoration")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    for module in SUBCOMMANDS:
        importlib.import_module(module).add_parser(sub)

    worker = sub.add_parser("worker", help="run a persistent JSON-lines worker on stdin/stdout")
    worker_config.add_worker_arguments(worker)
    return parser


def _entry_point(entry):
    """What every entry point needs, so no command that prints needs its own: a file name that is
    not UTF-8 (`caf\xe9.wav`, which Python holds as `\udce9`) prints as its bytes, even where the
    locale makes Python's streams strict UTF-8; and a reader that stops early (`dsu models list |
    head -2`) ends the command quietly, as well-behaved CLIs end: no BrokenPipeError traceback, exit 141."""
    @functools.wraps(entry)
    def run(*args, **kwargs) -> int:
        for stream in (sys.stdout, sys.stderr):
            if hasattr(stream, "reconfigure"):  # a TextIOWrapper (not a caller's replacement)
                stream.reconfigure(errors="surrogateescape")
        try:
            code = entry(*args, **kwargs)
            sys.stdout.flush()  # inside the try: the last lines may only fail here
            return code
        except BrokenPipeError:
            # the interpreter flushes stdout once more at exit; /dev/null under it keeps that quiet
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())
            os.close(devnull)
            return EXIT_PIPE
    return run


@_entry_point
def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "worker":
        from ..worker import run
        return run(worker_config.config_from(args))
    try:
        return args.run(args)
    except KeyboardInterrupt:
        print("\ndsu: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED


@_entry_point
def _worker(name: str, argv: list[str] | None = None) -> int:
    """The named worker, or with arguments other than worker flags (and no --worker) the drop-in
    command line of the tool it stands in for (dsu.cli.compat). Typed bare on a terminal it is that
    tool's usage, as demucs and audio-separator print theirs; an integration spawns it with stdin
    a pipe and gets the worker."""
    argv = sys.argv[1:] if argv is None else argv
    bare_on_terminal = not argv and sys.stdin is not None and sys.stdin.isatty()
    if bare_on_terminal or not worker_config.is_worker_call(argv):
        from .compat import MAINS
        try:
            code = MAINS[name](argv)
        except KeyboardInterrupt:
            print(f"\n{name}: interrupted", file=sys.stderr)
            return EXIT_INTERRUPTED
        if bare_on_terminal:
            print(f"{name}: to run the JSON worker on this terminal instead: {name} --worker "
                  "(with stdin a pipe, as integrations spawn it, it is the worker without the flag)",
                  file=sys.stderr)
        return code
    from ..worker import main as worker_main
    return worker_main(argv, name=name)


def demucs_worker(argv: list[str] | None = None) -> int:
    return _worker("dsu-demucs", argv)


def bsroformer_worker(argv: list[str] | None = None) -> int:
    return _worker("dsu-bsroformer", argv)


def audio_separator_worker(argv: list[str] | None = None) -> int:
    return _worker("dsu-audio-separator", argv)


def denoise_worker(argv: list[str] | None = None) -> int:
    return _worker("dsu-denoise", argv)
