"""`dsu ensemble`: several models over one file, or stem files blended into one.

    dsu ensemble song.flac -m dsp -m htdemucs --algorithm avg_fft -o out/
    dsu ensemble song.flac --model-path a.ckpt --config-path a.yaml --model-path b.onnx -o out/
    dsu ensemble song.flac --preset vocal_balanced --models-dir ~/models -o out/
    dsu ensemble --files a.wav b.wav --algorithm avg_fft --weights 1 2 -o out.wav

The request goes through the worker's table and job code, so the CLI and the worker agree."""
from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

from ..protocol import ENSEMBLE_ALGORITHMS, MAX_WEIGHT, number_text
from .vocabulary import options_as

# request fields as `dsu ensemble` spells them (dsu.cli.vocabulary): a member's fields in --member JSON
FLAGS = {**options_as("--member's {}"), "model": "-m/--model", "model_path": "--model-path",
         "config_path": "--config-path", "model_type": "--model-type", "stems": "--stems", "layout": "--layout",
         "format": "--format", "bit_depth": "--bit-depth", "device": "--device", "models_dir": "--models-dir",
         "input": "FILE", "list_models": "`dsu models list`", "models": "members", '{"model": ...}': "-m NAME",
         '{"model_path": ...}': "--model-path FILE", "preset": "--preset", "files": "--files", "output": "-o/--output",
         "output_dir": "-o/--output",
         "algorithm": "-a/--algorithm", "weights": "-w/--weights", "name": "--name", "reference": "--reference",
         "output_names": "--output-names", "stem_map": "--member's `stem_map`"}


class _AddMember(argparse.Action):
    """-m, --model-path and --member add members in the order given; --config-path and
    --model-type complete the member added last."""

    def __call__(self, parser, namespace, value, option_string=None):
        members = getattr(namespace, "members", None) or []
        if self.dest == "member_json":
            try:
                member = json.loads(value)
            except json.JSONDecodeError as e:
                parser.error(f"--member must be a JSON object ({e})")
            members.append(member)
        elif self.dest == "model":
            members.append({"model": value})
        elif self.dest == "model_path":
            members.append({"model_path": value})
        else:
            if not members:
                parser.error(f"{option_string} belongs to a member: give -m or --model-path first")
            members[-1][self.dest] = value
        namespace.members = members


def _names(value: str) -> dict:
    try:
        names = json.loads(value)
    except json.JSONDecodeError as e:
        raise argparse.ArgumentTypeError(f"not JSON ({e})") from None
    if not isinstance(names, dict):
        raise argparse.ArgumentTypeError('a JSON object of stem -> name, e.g. {"vocals": "lead"}')
    return names


def _weight(text: str) -> float:
    """One --weights value, in the protocol table's range (said in the flag's words, not `weights[i]`)."""
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not 0 <= value <= MAX_WEIGHT:
        raise argparse.ArgumentTypeError(f"each weight is a number from 0 to {number_text(MAX_WEIGHT)} "
                                         f"(only their ratios count), not {text}")
    return value


def add_parser(subparsers) -> argparse.ArgumentParser:
    from .separate import add_common  # device, threads, -q/-v/--json as every working subcommand

    p = subparsers.add_parser("ensemble", help="blend several models' stems (or stem files) into one",
                              description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("input", nargs="?", type=Path, metavar="FILE", help="the audio file to separate")
    p.add_argument("-m", "--model", dest="model", action=_AddMember, help="a member by name (repeat)")
    p.add_argument("--model-path", dest="model_path", action=_AddMember, help="a member by file (repeat)")
    p.add_argument("--config-path", dest="config_path", action=_AddMember, help="the last member's YAML")
    p.add_argument("--model-type", dest="model_type", action=_AddMember, help="the last member's architecture")
    p.add_argument("--member", dest="member_json", action=_AddMember, metavar="JSON",
                   help='a member as the worker takes it, e.g. \'{"model": "dsp", "segment": 8, '
                        '"stem_map": {"other": "instrumental"}}\'')
    p.add_argument("--preset", help="a python-audio-separator ensemble preset (e.g. vocal_balanced)")
    p.add_argument("--list-presets", action="store_true", help="print the presets and exit")
    p.add_argument("--files", nargs="+", type=Path, metavar="FILE", help="blend these stem files into -o instead")
    p.add_argument("-o", "--output", type=Path,
                   help="the output folder (models), or the output file (--files)")
    p.add_argument("-a", "--algorithm", "--type", choices=ENSEMBLE_ALGORITHMS, default=None,
                   help="default avg_wave (or the preset's)")
    p.add_argument("-w", "--weights", type=_weight, nargs="+",
                   help=f"one per member or file, 0 to {number_text(MAX_WEIGHT)}; only their ratios count")
    p.add_argument("--stems", help="comma-separated ensemble stems to write (default: all)")
    p.add_argument("--name", help="the ensemble's name in output paths")
    p.add_argument("--layout", help="demucs, flat (msst), uvr (audio_separator) or a template such as "
                                    "{track}/{stem}.{ext}; default flat")
    p.add_argument("--output-names", "--custom-output-names", type=_names, metavar="JSON",
                   help='stem -> file base name, e.g. \'{"vocals": "lead"}\'')
    p.add_argument("--reference", choices=("msst", "audio_separator"), help="whose median_fft (default msst)")
    p.add_argument("--format", choices=("wav", "flac", "mp3"), default="wav")
    p.add_argument("--bit-depth", type=int, choices=(16, 24, 32), help="default 32 (float)")
    p.add_argument("--models-dir", type=Path, default=None, help="where model names are looked up")
    add_common(p)
    p.set_defaults(members=[], run=run)
    return p


def run(args: argparse.Namespace) -> int:
    from .. import protocol as spec
    from ..cache import ModelCache
    from ..errors import DSUError
    from ..jobs import ensemble as job
    from . import _runner as runner
    from .progress import Display, mode_from

    if args.list_presets:
        for name, preset in job.presets().items():
            print(f"{name:<28} {preset['algorithm']:<13} {', '.join(preset['models'])}")
        return 0
    if args.output is None:
        print("dsu ensemble: give -o/--output (a folder, or the file to write with --files)", file=sys.stderr)
        return 2
    request = {"cmd": "ensemble", "algorithm": args.algorithm, "weights": args.weights, "name": args.name,
               "layout": args.layout, "reference": args.reference, "bit_depth": args.bit_depth}
    if args.files:
        request.update(files=[str(f) for f in args.files], output=str(args.output))
        label = args.output.name
    else:
        if args.input is None:
            print("dsu ensemble: give the FILE to separate, or --files to blend", file=sys.stderr)
            return 2
        request.update(input=str(args.input), output_dir=str(args.output), preset=args.preset,
                       models=args.members or None, format=args.format, output_names=args.output_names,
                       stems=args.stems.split(",") if args.stems else None)
        label = args.input.name
    display = Display(mode_from(args.quiet, args.verbose, args.json), total=1, flags=FLAGS)
    problem = runner.device_problem(args.device)
    if problem:
        return runner.report(display, [problem])
    device = runner.setup_device(args.device, args.threads)
    display.start(args.files[0] if args.files else args.input)
    display.name = label
    try:
        fields, extra = spec.validate(spec.COMMANDS["ensemble"], request)
        done = job.ensemble(fields, extra, cache=ModelCache(device, max_models=len(args.members or [0, 0])),
                            models_dir=args.models_dir, emit=display.emit, progress=lambda f, **_: display(f))
    except DSUError as e:
        display.failed(label, e.code, e.message)
        # a request the table or the job refuses before any work is a usage error, as in `dsu separate`
        return runner.EXIT_USAGE if e.code in runner.USAGE_CODES else runner.EXIT_FAILED
    display.done(done)
    return runner.EXIT_OK
