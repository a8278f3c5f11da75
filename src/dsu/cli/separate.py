"""`dsu separate FILE...`: stems of each file, with nothing else required.

The model defaults to `$DSU_MODEL`, else the best installed 4-stem model, else `dsp` (said on stderr);
the output to `separated/` as demucs. Every argument problem is found before work starts and all are
reported at once, one line each, exit 2; a file that fails while separating is reported and the
others go on (exit 1 at the end)."""
from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

from ..device import DEVICES
from ..errors import DSUError
from ..protocol import BACKENDS, PRECISIONS, UVR_SETTINGS
from ..worker.config import _positive
from . import _runner as runner
from .progress import Display, mode_from
from .vocabulary import options_as

BIT_DEPTH_HELP = ("16, 24 or 32 (float). Default: 16 for the demucs and uvr layouts (Demucs, MDX-Net and VR "
                  "models), 32 float for the flat layout (MSST models, dsp); flac holds 16 or 24, mp3 none")
FILES = {"bash": "_shtab_compgen_files", "zsh": "_files"}  # shtab.FILE, without importing shtab
# request fields `-O` may also set besides the model's own options
# UVR's per-model settings (`-O primary_stem=Vocals -O mdx_n_fft_scale_set=7680 ...`) for a file DSU's
# tables do not know: request fields that decide how the model loads
MODEL_SETTINGS = tuple(f.name for f in UVR_SETTINGS)
REQUEST_OPTIONS = ("layout", "output_names", "sample_rate", "mp3_bitrate", "sanitize", *MODEL_SETTINGS)
# request fields as `dsu separate` (and `dsu batch`, `dsu restore`) spells them: a flag, else -O FIELD
FLAGS = {**options_as("-O {}"), "input": "FILE", "output_dir": "-o/--output-dir", "model": "-m/--model",
         "model_path": "--model-path", "config_path": "--config-path", "model_type": "--model-type",
         "repo": "--repo", "models_dir": "--models-dir", "format": "--format", "bit_depth": "--bit-depth",
         "stems": "--stems", "two_stems": "--two-stems", "sample_rate": "--sample-rate", "layout": "--layout",
         "mp3_bitrate": "--mp3-bitrate", "device": "--device", "list_models": "`dsu models list`",
         "backend": "--backend", "precision": "--precision"}


def _option(text: str) -> tuple[str, object]:
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, not {text!r}")
    try:
        return key, json.loads(value)
    except json.JSONDecodeError:
        return key, value


def add_common(parser: argparse.ArgumentParser) -> None:
    """Device, threads and verbosity, as every working subcommand takes them."""
    parser.add_argument("--device", choices=DEVICES, default="auto",
                        help="auto: cuda > mps > cpu; an explicit device that is not there is an error")
    parser.add_argument("--threads", type=_positive, default=None, help="CPU threads (default: physical cores)")
    add_verbosity(parser)


def add_verbosity(parser: argparse.ArgumentParser) -> None:
    """-q, -v and --json, as every working subcommand takes them."""
    loud = parser.add_mutually_exclusive_group()
    loud.add_argument("-q", "--quiet", action="store_true", help="errors only")
    loud.add_argument("-v", "--verbose", action="store_true", help="say what is loaded and done")
    loud.add_argument("--json", action="store_true", help="one JSON line per event on stdout (the worker's messages)")


def add_model_arguments(parser: argparse.ArgumentParser, *, model_help: str, required: bool = False) -> None:
    """Which model a job runs (by name or by file, with its config and architecture), where names are
    looked up, and its options: `dsu separate` and `dsu batch` take them alike."""
    which = parser.add_mutually_exclusive_group(required=required)
    which.add_argument("-m", "--model", help=model_help)
    which.add_argument("--model-path", help="a model file (.th, .yaml bag, .ckpt, .pth, .onnx ...)")
    parser.add_argument("--config-path", help="the YAML config published with --model-path")
    parser.add_argument("--model-type", help="architecture of --model-path when its name does not tell")
    parser.add_argument("--repo", help="folder of Demucs packages to find --model in")
    parser.add_argument("--models-dir", type=Path, default=os.environ.get("DSU_MODELS") or None,
                        help="where model names are looked up (default: $DSU_MODELS, else the user data folder "
                             "`dsu models --help` names)")
    parser.add_argument("--option", "-O", action="append", type=_option, default=[], metavar="KEY=VALUE",
                        help="a model option, e.g. -O shifts=2 -O overlap=0.5 (values parsed as JSON)")
    add_backend_arguments(parser)


def add_backend_arguments(parser: argparse.ArgumentParser | argparse._ArgumentGroup) -> None:
    """What runs the network, as the request's `backend` and `precision` (docs/performance.md)."""
    parser.add_argument("--backend", choices=BACKENDS, default=None,
                        help="torch, openvino (CPU), or auto: the fastest measured for the family (default)")
    speed = parser.add_mutually_exclusive_group()
    speed.add_argument("--precision", choices=PRECISIONS, default=None,
                       help="auto (default): float32 on a CPU, exact; bfloat16 is 2-4x faster on CPUs with "
                            "native bfloat16, about 37-47 dB from float32")
    speed.add_argument("--fast", dest="precision", action="store_const", const="bfloat16",
                       help="--precision bfloat16")


def backend_request(args: argparse.Namespace) -> dict:
    """The request's `backend` and `precision` from those flags (absent where not given)."""
    return {k: v for k, v in (("backend", args.backend), ("precision", args.precision)) if v is not None}


def add_stem_arguments(parser: argparse.ArgumentParser, bit_depth_help: str) -> None:
    """Which stems are written, and how."""
    parser.add_argument("--format", choices=("wav", "flac", "mp3"), default="wav")
    parser.add_argument("--bit-depth", type=int, choices=(16, 24, 32), help=bit_depth_help)
    parser.add_argument("--stems", help="comma-separated stems to write, any case (default: all)")
    parser.add_argument("--two-stems", metavar="STEM", help="write STEM and no_STEM only")
    parser.add_argument("--sample-rate", default="model", help="model, input, or Hz (default: model)")


def model_request(args: argparse.Namespace) -> dict:
    """The request fields those arguments give (None where not given), the -O options last."""
    return {"model": args.model, "model_path": args.model_path, "config_path": args.config_path,
            "model_type": args.model_type, "repo": args.repo, "format": args.format, "bit_depth": args.bit_depth,
            "two_stems": args.two_stems, "stems": args.stems.split(",") if args.stems else None,
            "sample_rate": int(args.sample_rate) if args.sample_rate.isdigit() else args.sample_rate,
            **backend_request(args), **dict(args.option)}


def add_parser(subparsers) -> argparse.ArgumentParser:
    sep = subparsers.add_parser("separate", help="separate audio files into stems",
                                description="Separate audio files into stems. Written paths go to stdout, "
                                            "progress to stderr.")
    sep.add_argument("files", nargs="+", type=Path, metavar="FILE").complete = FILES
    add_model_arguments(sep, model_help="model name (default: $DSU_MODEL, else the best installed 4-stem "
                                        "model, else dsp); `dsu models list` shows them")
    sep.add_argument("--download", action="store_true",
                     help="download -m NAME first when it is a catalog model that is not installed")
    sep.add_argument("-o", "--output-dir", type=Path, default=Path("separated"),
                     help="stems go under this folder (default: separated)")
    sep.add_argument("--layout", help="demucs, flat, uvr, or a template such as {track}/{stem}.{ext} "
                                      "(default: the model family's own)")
    add_stem_arguments(sep, BIT_DEPTH_HELP)
    sep.add_argument("--mp3-bitrate", type=int, default=None, metavar="KBPS",
                     help="constant bitrate of mp3 stems (default 320, as demucs)")
    add_common(sep)
    sep.set_defaults(run=run)
    return sep


def _argument_problems(args) -> list[str]:
    problems = runner.input_problems(args.files)
    out = runner.folder_problem(args.output_dir, "-o/--output-dir")
    if out:
        problems.append(out)
    if args.format == "mp3" and args.bit_depth:
        problems.append(f"--bit-depth {args.bit_depth} with --format mp3: mp3 has no bit depth; "
                        "drop --bit-depth or use --format wav/flac")
    if args.format == "flac" and args.bit_depth == 32:
        problems.append("--bit-depth 32 with --format flac: flac holds 16 or 24 bits; "
                        "use 24, or --format wav for float")
    if args.mp3_bitrate is not None and args.format != "mp3":
        problems.append(f"--mp3-bitrate {args.mp3_bitrate} applies to --format mp3 only; add --format mp3")
    if args.mp3_bitrate is not None and not 8 <= args.mp3_bitrate <= 320:
        problems.append(f"--mp3-bitrate {args.mp3_bitrate}: give 8 to 320 kbps")
    if args.sample_rate not in ("model", "input") and not (args.sample_rate.isdigit() and int(args.sample_rate) > 0):
        problems.append(f"--sample-rate {args.sample_rate}: give model, input or a number of Hz")
    if args.two_stems and args.stems:
        problems.append("--two-stems and --stems together: choose one")
    device = runner.device_problem(args.device)
    if device:
        problems.append(device)
    return problems


def run(args: argparse.Namespace, prog: str = "dsu") -> int:
    display = Display(mode_from(args.quiet, args.verbose, args.json), total=len(args.files), prog=prog,
                      flags=FLAGS)
    problems = _argument_problems(args)
    if args.models_dir is None:  # the folder `dsu models download` installs into, once it exists
        from ..catalog import default_models_dir
        args.models_dir = default_models_dir() if default_models_dir().is_dir() or args.download else None
    if args.download and args.model and not problems:
        from . import models as models_cli
        status = models_cli.download_missing(args.model, args.models_dir, quiet=args.quiet or args.json)
        if status:
            return status
    model_name, why = args.model, None
    # a models dir that does not exist yet holds nothing: the catalog says how to fill it
    from ..jobs import models as model_jobs
    try:
        if not model_name and not args.model_path:
            from . import default_model
            model_name, why = default_model.choose(args.models_dir)
        model_jobs.resolve({"model": model_name, "model_path": args.model_path, "config_path": args.config_path,
                          "model_type": args.model_type, "repo": args.repo,
                          **{k: v for k, v in args.option if k in MODEL_SETTINGS}}, args.models_dir)
    except DSUError as e:  # resolving reads no weights: a wrong name is found with the other mistakes
        # only this command has --download; the job layer's message is every interface's
        problems.append(f"{e.code}: {e.message}" + (" (or add --download)" if getattr(e, "download", None) else ""))
    if problems:
        return runner.report(display, problems)
    if why:
        display.info(f"model {model_name}: {why}")
    request = {"cmd": "separate", "output_dir": str(args.output_dir), "mp3_bitrate": args.mp3_bitrate,
               "layout": args.layout, **model_request(args), "model": model_name}
    request = {k: v for k, v in request.items() if v is not None}
    from ..cache import ModelCache
    cache = ModelCache(runner.setup_device(args.device, args.threads), max_models=1)
    try:
        ref, model = runner.load_model(request, cache=cache, models_dir=args.models_dir, default_model=None,
                                       display=display)
    except DSUError as e:
        display.error(f"{e.code}: {e.message}", e.code)
        return runner.EXIT_USAGE if e.code in runner.USAGE_CODES else runner.EXIT_FAILED
    options = {k: v for k, v in args.option if k in model.options}
    problems = runner.unknown_options([k for k, _ in args.option], model.options, REQUEST_OPTIONS)
    try:
        problems += runner.stem_problems(model, request, options)
    except DSUError as e:
        problems.append(f"{e.code}: {e.message}")
    if problems:
        return runner.report(display, problems)
    display.detail(f"{ref.name} ({ref.family}) on {model.device}, stems: {', '.join(model.output_stems(**options))}")
    requests = [{**request, "input": str(path)} for path in args.files]
    failed = runner.run_separations(requests, cache=cache, models_dir=args.models_dir, default_model=None,
                                    display=display)
    return runner.EXIT_FAILED if failed else runner.EXIT_OK
