"""`dsu-denoise AUDIO NOISE_PROFILE [OUTPUT] [--drums|--slow]`: the previous DSU's dsu-denoise command
line (default 0.1 s release, --drums 0.3 s, --slow 0.5 s; OUTPUT defaults to
`<input_dir>/<base>_denoised.wav`), run by `dsu denoise`. Too few arguments print the help, exit 1,
as it did."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .. import denoise

PROG = "dsu-denoise"
FLAGS = {**denoise.FLAGS, "input": "AUDIO", "noise_profile": "NOISE_PROFILE", "output": "OUTPUT",
         "mode": "--drums/--slow"}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG, description="Envelope-matched noise reduction for noise that follows the audio's loudness",
        epilog="Worker mode (JSON lines on stdin/stdout): dsu-denoise --worker, or with stdin a pipe and no "
               "arguments. Modes: default 100 ms release (vocals, melodic), --drums 300 ms (kicks, "
               "percussion), --slow 500 ms (pads, sustained sounds).")
    parser.add_argument("input", type=Path, nargs="?", metavar="AUDIO")
    parser.add_argument("noise_profile", type=Path, nargs="?", metavar="NOISE_PROFILE")
    parser.add_argument("output", nargs="?", metavar="OUTPUT", help="default: <input_dir>/<base>_denoised.wav")
    modes = parser.add_mutually_exclusive_group()
    modes.add_argument("--drums", dest="mode", action="store_const", const="drums", default="default",
                       help="300 ms release for kicks and percussion: prevents pumping")
    modes.add_argument("--slow", dest="mode", action="store_const", const="slow",
                       help="500 ms release for pads and sustained sounds")
    denoise.add_arguments(parser)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    if args.noise_profile is None:
        parser.print_help(sys.stderr)
        return 1
    return denoise.run(args, prog=PROG, flags=FLAGS)
