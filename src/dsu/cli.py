"""Command-line entry points: `dsu separate|models|worker` and the worker names integrations spawn.

`dsu separate` builds the same request fields a worker gets, validated by the same table, and runs
them through the same job code (dsu.jobs): one file or a hundred, the model is loaded once."""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from .errors import DSUError
from .worker import config as worker_config

EXIT_FAILED, EXIT_USAGE, EXIT_INTERRUPTED = 1, 2, 130


def _option(text: str) -> tuple[str, object]:
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, not {text!r}")
    try:
        return key, json.loads(value)
    except json.JSONDecodeError:
        return key, value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="dsu", description="DSU: music source separation and restoration")
    sub = parser.add_subparsers(dest="command", required=True)

    sep = sub.add_parser("separate", help="separate audio files into stems")
    sep.add_argument("files", nargs="+", type=Path, metavar="FILE")
    which = sep.add_mutually_exclusive_group(required=True)
    which.add_argument("-m", "--model", help="model name (`dsp` needs no files; see `dsu models list`)")
    which.add_argument("--model-path", help="a model file (.th, .yaml bag, .ckpt, .pth, .onnx ...)")
    sep.add_argument("--config-path", help="the YAML config published with --model-path")
    sep.add_argument("--model-type", help="architecture of --model-path when its name does not tell")
    sep.add_argument("--repo", help="folder of Demucs packages to find --model in")
    sep.add_argument("-o", "--output-dir", type=Path, required=True, help="stems go under this folder")
    sep.add_argument("--format", choices=("wav", "flac", "mp3"), default="wav")
    sep.add_argument("--bit-depth", type=int, choices=(16, 24, 32),
                     help="32 = float (default: 16 for Demucs models, 32 for others)")
    sep.add_argument("--stems", help="comma-separated stems to write (default: all)")
    sep.add_argument("--two-stems", metavar="STEM", help="write STEM and no_STEM only")
    sep.add_argument("--sample-rate", default="model", help="model, input, or Hz (default: model)")
    sep.add_argument("--option", "-O", action="append", type=_option, default=[], metavar="KEY=VALUE",
                     help="a model option, e.g. -O shifts=2 -O overlap=0.5 (values parsed as JSON)")
    sep.add_argument("--device", choices=worker_config.DEVICES, default="auto")
    sep.add_argument("--threads", type=int, default=None, help="CPU threads (default: physical cores)")
    sep.add_argument("--models-dir", type=Path, default=None, help="where model names are looked up")
    sep.add_argument("-q", "--quiet", action="store_true", help="no progress bar")

    rest = sub.add_parser("restore", help="restore lossy or band-limited audio with an Apollo model")
    rest.add_argument("input", type=Path, metavar="FILE")
    rest.add_argument("-o", "--output", type=Path, required=True, help="the restored file (.wav, .flac, .mp3)")
    rest.add_argument("--model-path", required=True, help="the Apollo checkpoint (.ckpt or .bin)")
    rest.add_argument("--config-path", help="its YAML config (model: sr, win, feature_dim, layer)")
    rest.add_argument("--chunk-seconds", type=float, help="chunk length (default: the model's)")
    rest.add_argument("--overlap-seconds", type=float, help="crossfade between chunks (default: the model's)")
    rest.add_argument("--feature-dim", type=int, help="without a config: the model's feature width")
    rest.add_argument("--layer", type=int, help="without a config: the model's layer count")
    rest.add_argument("--bit-depth", type=int, choices=(16, 24, 32))
    rest.add_argument("--device", choices=worker_config.DEVICES, default="auto")
    rest.add_argument("--threads", type=int, default=None, help="CPU threads (default: physical cores)")
    rest.add_argument("-q", "--quiet", action="store_true", help="no progress bar")

    models = sub.add_parser("models", help="models this installation can find")
    models_sub = models.add_subparsers(dest="models_command", required=True)
    listing = models_sub.add_parser("list", help="list models (built in and in the models dir)")
    listing.add_argument("--models-dir", type=Path, default=None)
    listing.add_argument("--json", action="store_true", help="one JSON object per model")

    from .batch import cli as batch_cli
    batch_cli.add_parser(sub)

    worker = sub.add_parser("worker", help="run a persistent JSON-lines worker on stdin/stdout")
    worker_config.add_worker_arguments(worker)
    return parser


class ProgressBar:
    def __init__(self, label: str, enabled: bool, width: int = 30):
        self.label, self.enabled, self.width = label, enabled, width
        self.shown = -1

    def __call__(self, fraction: float) -> None:
        percent = int(fraction * 100)
        if not self.enabled or percent == self.shown:
            return
        self.shown = percent
        filled = int(fraction * self.width)
        sys.stderr.write(f"\r{self.label} [{'#' * filled}{'.' * (self.width - filled)}] {percent:3d}%")
        sys.stderr.flush()

    def end(self) -> None:
        if self.enabled and self.shown >= 0:
            sys.stderr.write("\n")


def _device(args: argparse.Namespace):
    """The device and CPU threads `--device`/`--threads` ask for, with any fallback said on stderr."""
    from . import device as devices
    device, warning = devices.choose_device(args.device)
    if warning:
        print(f"dsu: {warning}", file=sys.stderr)
    devices.set_threads(args.threads)
    return device


def separate_command(args: argparse.Namespace) -> int:
    from . import jobs
    from .cache import ModelCache
    from .worker import spec

    request = {"cmd": "separate", "output_dir": str(args.output_dir), "format": args.format,
               "model": args.model, "model_path": args.model_path, "config_path": args.config_path,
               "model_type": args.model_type, "repo": args.repo, "bit_depth": args.bit_depth,
               "two_stems": args.two_stems, "stems": args.stems.split(",") if args.stems else None,
               "sample_rate": int(args.sample_rate) if args.sample_rate.isdigit() else args.sample_rate,
               **dict(args.option)}
    device = _device(args)
    cache = ModelCache(device, max_models=1)
    failed = 0
    for path in args.files:
        bar = ProgressBar(path.name, not args.quiet)

        def emit(status: str, **fields) -> None:
            if status == "loading_model" and not args.quiet:
                print(f"loading {fields['model']} ...", file=sys.stderr)

        try:
            fields, extra = spec.validate(spec.COMMANDS["separate"], {**request, "input": str(path)})
            done = jobs.separate(fields, extra, cache=cache, models_dir=args.models_dir, default_model=None,
                                 emit=emit, progress=bar)
        except DSUError as e:
            bar.end()
            print(f"dsu: {path}: {e.code}: {e.message}", file=sys.stderr)
            failed += 1
            continue
        bar.end()
        for p in done["paths"]:
            print(p)
        if done.get("ignored"):
            print(f"dsu: {done['model']} does not use: {', '.join(done['ignored'])}", file=sys.stderr)
        if not args.quiet:
            print(f"{path.name}: {len(done['paths'])} stems in {done['elapsed']:.1f} s", file=sys.stderr)
    return EXIT_FAILED if failed else 0


def restore_command(args: argparse.Namespace) -> int:
    from . import jobs
    from .cache import ModelCache
    from .worker import spec

    request = {"cmd": "apollo", "input": str(args.input), "output": str(args.output),
               "model_path": args.model_path, "config_path": args.config_path,
               "chunk_seconds": args.chunk_seconds, "overlap_seconds": args.overlap_seconds,
               "feature_dim": args.feature_dim, "layer": args.layer, "bit_depth": args.bit_depth}
    device = _device(args)
    bar = ProgressBar(args.input.name, not args.quiet)
    try:
        fields, _ = spec.validate(spec.COMMANDS["apollo"], request)
        done = jobs.restore(fields, cache=ModelCache(device, max_models=1), models_dir=None,
                            emit=lambda status, **_: None, progress=bar)
    except DSUError as e:
        bar.end()
        print(f"dsu: {args.input}: {e.code}: {e.message}", file=sys.stderr)
        return EXIT_FAILED
    bar.end()
    print(done["paths"][0])
    return 0


def models_command(args: argparse.Namespace) -> int:
    from . import families

    try:
        found = families.list_models(args.models_dir)
    except DSUError as e:
        print(f"dsu: {e.code}: {e.message}", file=sys.stderr)
        return EXIT_FAILED
    for m in found:
        if args.json:
            print(json.dumps(m, default=str))
        else:
            print(f"{m['name']:<32} {m['family']:<8} {', '.join(m.get('stems', []))}")
    return 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "worker":
        from .worker import run
        return run(worker_config.config_from(args))
    try:
        from .batch import cli as batch_cli
        commands = {"separate": separate_command, "restore": restore_command, "models": models_command,
                    "batch": batch_cli.run}
        return commands[args.command](args)
    except KeyboardInterrupt:
        print("\ndsu: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED


def _worker(name: str) -> int:
    from .worker import main as worker_main
    return worker_main(sys.argv[1:], name=name)


def demucs_worker() -> int:
    return _worker("dsu-demucs")


def bsroformer_worker() -> int:
    return _worker("dsu-bsroformer")


def audio_separator_worker() -> int:
    return _worker("dsu-audio-separator")


if __name__ == "__main__":
    raise SystemExit(main())
