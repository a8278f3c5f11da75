"""`dsu completion bash|zsh`: a completion script generated from the parsers themselves (shtab), so
it never lags behind the options.

    dsu completion bash > ~/.local/share/bash-completion/completions/dsu
    dsu completion zsh > "${fpath[1]}/_dsu"
"""
from __future__ import annotations

import argparse

SHELLS = ("bash", "zsh")


def add_parser(subparsers) -> argparse.ArgumentParser:
    comp = subparsers.add_parser("completion", help="print a bash or zsh completion script",
                                 description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    comp.add_argument("shell", choices=SHELLS)
    comp.add_argument("--program", choices=("dsu", "dsu-demucs", "dsu-audio-separator", "dsu-bsroformer",
                                            "dsu-denoise"),
                      default="dsu", help="the command to complete (default: dsu)")
    comp.set_defaults(run=run)
    return comp


def script(shell: str, program: str = "dsu") -> str:
    import shtab
    if program == "dsu":
        from . import build_parser
        parser = build_parser()
    else:
        from .compat import PARSERS
        parser = PARSERS[program]()
    return shtab.complete(parser, shell=shell)


def run(args: argparse.Namespace) -> int:
    print(script(args.shell, args.program))
    return 0
