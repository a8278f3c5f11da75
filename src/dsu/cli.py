"""Command-line entry points: `dsu separate|models|worker` and the worker names integrations spawn.

`dsu separate` builds the same request fields a worker gets, validated by the same table, and runs
them through the same job code (dsu.jobs): one file or a hundred, the model is loaded once."""
from __future__ import annotations

import argparse
import importlib
import sys

from . import __version__
from .worker import config as worker_config

EXIT_FAILED, EXIT_USAGE, EXIT_INTERRUPTED = 1, 2, 130


# subcommand modules: each has add_parser(subparsers), which sets `run` (args -> exit code)
SUBCOMMANDS = ("dsu.commands.separate", "dsu.commands.restore", "dsu.commands.denoise", "dsu.catalog.cli", "dsu.ensemble.cli", "dsu.batch.cli",
               "dsu.clean",
               "dsu.commands.completion")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="dsu", description="DSU: music source separation and restoration")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    for module in SUBCOMMANDS:
        importlib.import_module(module).add_parser(sub)

    worker = sub.add_parser("worker", help="run a persistent JSON-lines worker on stdin/stdout")
    worker_config.add_worker_arguments(worker)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "worker":
        from .worker import run
        return run(worker_config.config_from(args))
    try:
        return args.run(args)
    except KeyboardInterrupt:
        print("\ndsu: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED


def _worker(name: str, argv: list[str] | None = None) -> int:
    """The named worker, or with arguments other than worker flags (and no --worker) the drop-in
    command line of the tool it stands in for (dsu.compat)."""
    argv = sys.argv[1:] if argv is None else argv
    if not worker_config.is_worker_call(argv):
        from .compat import MAINS
        try:
            return MAINS[name](argv)
        except KeyboardInterrupt:
            print(f"\n{name}: interrupted", file=sys.stderr)
            return EXIT_INTERRUPTED
    from .worker import main as worker_main
    return worker_main(argv, name=name)


def demucs_worker(argv: list[str] | None = None) -> int:
    return _worker("dsu-demucs", argv)


def bsroformer_worker(argv: list[str] | None = None) -> int:
    return _worker("dsu-bsroformer", argv)


def audio_separator_worker(argv: list[str] | None = None) -> int:
    return _worker("dsu-audio-separator", argv)


def denoise_worker(argv: list[str] | None = None) -> int:
    return _worker("dsu-denoise", argv)


if __name__ == "__main__":
    raise SystemExit(main())
