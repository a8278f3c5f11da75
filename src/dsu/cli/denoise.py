"""`dsu denoise FILE -n NOISE [-o OUT]`: noise that follows the music's loudness taken out against a
recording of the noise alone (envelope-matched spectral subtraction, `dsu.jobs.denoise`; no model). OUT is
the file, or a folder (existing, or ending in `/`) that gets `<track>_denoised.wav`; without it the
file goes beside the input, as the previous DSU's dsu-denoise wrote it."""
from __future__ import annotations

import argparse
from pathlib import Path

from .. import protocol as spec
from ..errors import DSUError
from . import _runner as runner
from .progress import Display, mode_from
from .restore import output_file
from .separate import FILES, add_verbosity

FIELDS = {f.name: f for f in spec.DENOISE_FIELDS}
# the request fields as `dsu denoise` spells them (dsu.cli.vocabulary)
FLAGS = {"input": "FILE", "noise_profile": "-n/--noise-profile", "output": "-o/--output", "mode": "--mode",
         "subtraction_factor": "--subtraction-factor", "attack_time": "--attack-time",
         "release_time": "--release-time", "bit_depth": "--bit-depth"}


def _bounded(name: str):
    """An argparse type for request field `name`: a number within the protocol table's bounds."""
    low, high = FIELDS[name].minimum, FIELDS[name].maximum
    assert low is not None and high is not None  # only bounded fields

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
        if not low <= value <= high:  # NaN fails too
            raise argparse.ArgumentTypeError(f"must be from {spec.number_text(low)} to "
                                             f"{spec.number_text(high)}, not {text}")
        return value
    return parse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The tuning options, shared with the drop-in `dsu-denoise`."""
    parser.add_argument("--subtraction-factor", type=_bounded("subtraction_factor"), default=None, metavar="K",
                        help=f"{FIELDS['subtraction_factor'].doc} (default {FIELDS['subtraction_factor'].default})")
    parser.add_argument("--attack-time", type=_bounded("attack_time"), default=None, metavar="SECONDS",
                        help=f"seconds the level the noise follows takes to rise (default "
                             f"{FIELDS['attack_time'].default})")
    parser.add_argument("--release-time", type=_bounded("release_time"), default=None, metavar="SECONDS",
                        help="seconds it takes to fall; slower pumps less (default: the mode's)")
    parser.add_argument("--bit-depth", type=int, choices=(16, 24, 32), default=None,
                        help="16, 24 or 32 float (default 16)")
    add_verbosity(parser)


def add_parser(subparsers) -> argparse.ArgumentParser:
    den = subparsers.add_parser("denoise", help="reduce noise that follows the music's loudness against a noise "
                                                "recording (no model)", description=__doc__)
    den.add_argument("input", type=Path, metavar="FILE").complete = FILES
    den.add_argument("-n", "--noise-profile", type=Path, required=True,
                     help="a recording of the noise alone (any length)").complete = FILES
    den.add_argument("-o", "--output", default=None,
                     help="the denoised file (.wav, .flac, .mp3), or a folder for <track>_denoised.wav "
                          "(default: <track>_denoised.wav beside the input)")
    den.add_argument("--mode", type=str.lower, choices=FIELDS["mode"].choices, default="default",
                     help="release preset: default 0.1 s (vocals, melodic), drums 0.3 s (kicks, percussion), "
                          "slow 0.5 s (pads, sustained sounds)")
    add_arguments(den)
    den.set_defaults(run=run)
    return den


def run(args: argparse.Namespace, prog: str = "dsu", flags: dict[str, str] = FLAGS) -> int:
    from ..jobs.denoise import SUFFIX, default_output
    display = Display(mode_from(args.quiet, args.verbose, args.json), total=1, prog=prog, flags=flags)
    problems = runner.input_problems([args.input, args.noise_profile])
    output = output_file(args.output, args.input, SUFFIX) if args.output else default_output(args.input)
    problems += runner.output_file_problems(output, args.output, args.bit_depth)
    if problems:
        return runner.report(display, problems)
    request = {"input": str(args.input), "noise_profile": str(args.noise_profile), "output": str(output),
               "mode": args.mode, "subtraction_factor": args.subtraction_factor, "attack_time": args.attack_time,
               "release_time": args.release_time, "bit_depth": args.bit_depth}
    from ..jobs import denoise
    display.start(args.input)
    try:
        fields, _ = spec.validate(spec.COMMANDS["denoise"], request)
        done = denoise.run(fields, emit=display.emit, progress=display)
    except DSUError as e:
        display.failed(args.input, e.code, e.message)
        return runner.EXIT_FAILED
    except OSError as e:  # the folder vanished or became unwritable mid-run
        display.failed(args.input, "output_not_writable", f"{e.strerror or e}: {e.filename or ''}".rstrip(": "))
        return runner.EXIT_FAILED
    display.done(done)
    return runner.EXIT_OK
