"""`dsu-demucs TRACK... [-n NAME] ...`: demucs' `python -m demucs` command line (demucs 4.1
`separate.py`): the same options, defaults, output folders (`<out>/<name>/<track>/<stem>.<ext>`), file
names and exit codes, run by DSU's Demucs family.

Not honoured, so refused by name (exit 2): `--no-split` (DSU always separates in segments),
`--other-method minus` (writes `minus_<stem>`), `--clip-mode clamp`, `--mp3-preset` other than 2, and
`-d cuda:N` for N > 0. `-j N` sets N CPU threads (the same result as N demucs jobs, in one process)."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ...device import KINDS
from ...errors import DSUError
from ..progress import Display, mode_from
from ..separate import add_backend_arguments, backend_request
from . import common

PROG = "dsu-demucs"
# request fields as demucs' flags say them (dsu.cli.vocabulary)
FLAGS = {"model": "-n/--name", "model_path": "-n/--name", "repo": "--repo", "models_dir": "--models-dir",
         "output_dir": "-o/--out", "layout": "--filename", "format": "--flac/--mp3", "bit_depth": "--int24/--float32",
         "stems": "--two-stems", "two_stems": "--two-stems", "mp3_bitrate": "--mp3-bitrate", "shifts": "--shifts",
         "overlap": "--overlap", "segment": "--segment", "clip_mode": "--clip-mode", "input": "TRACK",
         "list_models": "`dsu-demucs --list-models`"}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(PROG, description="Separate the sources for the given tracks (demucs' command "
                                                  "line, run by DSU; `--worker` for the JSON worker)")
    p.add_argument("tracks", nargs="*", type=Path, default=[], help="Path to tracks")
    names = p.add_mutually_exclusive_group()
    names.add_argument("-s", "--sig", help="Locally trained XP signature.")
    names.add_argument("-n", "--name", default="htdemucs",
                       help="Pretrained model name or signature. Default is htdemucs.")
    p.add_argument("--repo", type=Path, help="Folder containing all pre-trained models for use with -n.")
    p.add_argument("--list-models", action="store_true", help="List available models from current repo and exit")
    p.add_argument("-v", "--verbose", action="store_true")
    p.add_argument("-o", "--out", type=Path, default=Path("separated"),
                   help="Folder where to put extracted tracks. A subfolder with the model name will be created.")
    p.add_argument("--filename", default="{track}/{stem}.{ext}",
                   help='Set the name of output file. Use "{track}", "{trackext}", "{stem}", "{ext}". '
                        'Default is "{track}/{stem}.{ext}".')
    p.add_argument("-d", "--device", default=None, help="Device to use, default is cuda if available else cpu")
    p.add_argument("--shifts", default=1, type=int, help="Number of random shifts for equivariant stabilization.")
    p.add_argument("--overlap", default=0.25, type=float, help="Overlap between the splits.")
    split = p.add_mutually_exclusive_group()
    split.add_argument("--no-split", action="store_false", dest="split", default=True,
                       help="Doesn't split audio in chunks (refused: DSU always splits).")
    split.add_argument("--segment", type=int, help="Set split size of each chunk.")
    p.add_argument("--two-stems", dest="stem", metavar="STEM", help="Only separate audio into {STEM} and no_{STEM}.")
    p.add_argument("--other-method", dest="other_method", choices=["none", "add", "minus"], default="add",
                   help='How to get "no_{STEM}": "none" does not save it, "add" sums the other stems.')
    depth = p.add_mutually_exclusive_group()
    depth.add_argument("--int24", action="store_true", help="Save wav output as 24 bits wav.")
    depth.add_argument("--float32", action="store_true", help="Save wav output as float32 (2x bigger).")
    p.add_argument("--clip-mode", default="rescale", choices=["rescale", "clamp", "none"],
                   help="Strategy for avoiding clipping: rescaling entire signal if necessary (rescale).")
    fmt = p.add_mutually_exclusive_group()
    fmt.add_argument("--flac", action="store_true", help="Convert the output wavs to flac.")
    fmt.add_argument("--mp3", action="store_true", help="Convert the output wavs to mp3.")
    p.add_argument("--mp3-bitrate", default=320, type=int, help="Bitrate of converted mp3.")
    p.add_argument("--mp3-preset", choices=range(2, 8), type=int, default=2, help="Encoder preset of MP3 (only 2).")
    p.add_argument("-j", "--jobs", default=0, type=int, help="Number of jobs (DSU: CPU threads).")
    dsu = p.add_argument_group("DSU")
    add_backend_arguments(dsu)
    dsu.add_argument("--models-dir", type=Path, default=common.models_dir_from_env(),
                     help="where -n names are looked up when --repo is not given (default: $DSU_MODELS)")
    loud = dsu.add_mutually_exclusive_group()
    loud.add_argument("-q", "--quiet", action="store_true", help="errors only")
    loud.add_argument("--json", action="store_true", help="one JSON line per event on stdout")
    return p


def _device(value: str | None) -> tuple[str, str | None]:
    if value is None:
        return "auto", None
    kind, _, index = value.partition(":")
    if kind not in KINDS or (index and (kind != "cuda" or index != "0")):
        return "auto", f"-d {value}: DSU runs on cpu, cuda (cuda:0) or mps"
    return kind, None


def _refusals(args) -> list[str]:
    out = []
    if not args.split:
        out.append("--no-split is not supported: DSU always separates in overlapping segments "
                   "(use --segment for longer ones)")
    if args.stem and args.other_method == "minus":
        out.append("--other-method minus is not supported: use add (the default) or none")
    if args.clip_mode == "clamp":
        out.append("--clip-mode clamp is not supported: use rescale (the default) or none")
    if args.mp3_preset != 2:
        out.append(f"--mp3-preset {args.mp3_preset} is not supported: DSU's mp3 encoder takes only the bitrate")
    if args.mp3 and not 8 <= args.mp3_bitrate <= 320:
        out.append(f"--mp3-bitrate {args.mp3_bitrate}: give 8 to 320")
    return out


def list_models(args) -> int:
    from ... import families
    where = args.repo or args.models_dir
    found = [m for m in families.list_models(where) if m.get("family") == "demucs"]
    bags = [m["name"] for m in found if str(m.get("file", "")).endswith((".yaml", ".yml"))]
    singles = [m["name"] for m in found if m["name"] not in bags]
    print("Bag of models:", end="\n    ")
    print("\n    ".join(bags))
    print("Single models:", end="\n    ")
    print("\n    ".join(singles))
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    device, device_problem = _device(args.device)
    answered = _without_tracks(args, parser, device_problem)
    if answered is not None:
        return answered
    name = args.sig or args.name
    display = Display(mode_from(args.quiet, args.verbose, args.json), total=len(args.tracks), prog=PROG,
                      flags=FLAGS)
    unavailable = common.runner.device_problem(device, "-d", "leave -d out (cuda when there, else cpu) or give -d cpu")
    if unavailable:
        display.error(unavailable)
        return common.EXIT_FAILED
    request = _request(args, name)
    cache = common.open_cache(device, args.jobs or None)
    try:
        ref, model = common.load(request, cache, args.models_dir, display)
    except DSUError as e:
        return common.fail(display, e)
    wrong = _model_problem(args, model)
    if wrong:
        display.error(wrong)
        return common.EXIT_FAILED
    out = args.out / name.replace("hf://", "").replace("/", "_")
    out.mkdir(parents=True, exist_ok=True)
    display.result(f"Separated tracks will be stored in {out.resolve()}")
    return _separate_all(args, _requests(args, request), cache, display)


def _without_tracks(args, parser: argparse.ArgumentParser, device_problem: str | None) -> int | None:
    """The exit code when the command ends before any track: refused options (2), --list-models,
    no tracks (usage, 1); None when it goes on to the tracks."""
    problems = _refusals(args) + ([device_problem] if device_problem else [])
    if problems:
        return common.refuse(PROG, problems, FLAGS)
    if args.list_models:
        try:
            return list_models(args)
        except DSUError as e:
            common.refuse(PROG, [f"{e.code}: {e.message}"], FLAGS)
            return common.EXIT_FAILED
    if not args.tracks:
        parser.print_usage(sys.stderr)
        print("error: the following arguments are required: tracks", file=sys.stderr)
        return common.EXIT_FAILED
    return None


def _request(args, name: str) -> dict:
    ext = "mp3" if args.mp3 else "flac" if args.flac else "wav"
    bit_depth = None if args.mp3 else 24 if args.int24 else 32 if args.float32 and not args.flac else 16
    request = {"model": name, "format": ext, "bit_depth": bit_depth, "output_dir": str(args.out),
               "layout": "{model}/" + args.filename, "shifts": args.shifts, "overlap": args.overlap,
               "clip_mode": args.clip_mode, **backend_request(args)}
    if args.repo:
        request["repo"] = str(args.repo)
    if args.segment is not None:
        request["segment"] = args.segment
    if args.mp3:
        request["mp3_bitrate"] = args.mp3_bitrate
    if args.stem:
        request["two_stems" if args.other_method == "add" else "stems"] = args.stem
    return common.given(request)


def _model_problem(args, model) -> str | None:
    """What demucs says when --two-stems or --segment does not fit the loaded model."""
    if args.stem and args.stem.lower() not in {s.lower() for s in model.stems}:
        return (f'error: stem "{args.stem}" is not in selected model. '
                f"STEM must be one of {', '.join(model.stems)}.")
    max_segment = getattr(model, "max_segment", float("inf"))
    if args.segment is not None and args.segment > max_segment:
        return ("Cannot use a Transformer model with a longer segment than it was trained for. "
                f"Maximum segment is: {max_segment}")
    return None


def _requests(args, request: dict) -> list[dict]:
    requests = []
    for track in args.tracks:
        if not track.exists():  # demucs says so and goes on with the others (exit 0)
            print(f"File {track} does not exist. If the path contains spaces, "
                  'please try again after surrounding the entire path with quotes "".', file=sys.stderr)
            continue
        requests.append({**request, "input": str(track)})
    return requests


def _separate_all(args, requests: list[dict], cache, display: Display) -> int:
    display.total = len(requests)
    failed = 0
    for r in requests:
        display.result(f"Separating track {r['input']}")
        failed += common.runner.run_separations([r], cache=cache, models_dir=args.models_dir,
                                                default_model=None, display=display)
    return common.exit_code(failed)
