"""`dsu restore FILE -o OUT`: one file through an Apollo model. OUT is the restored file, or a folder
(an existing one, or any path ending in `/`) that gets `<track>_restored.wav`, as the previous DSU
named it."""
from __future__ import annotations

import argparse
import os
from pathlib import Path

from ..cache import ModelCache
from ..protocol import BACKENDS, PRECISIONS
from . import _runner as runner
from .progress import Display, mode_from
from .separate import FILES, add_common
from .separate import FLAGS as SEPARATE_FLAGS

SUFFIX = "_restored"
FLAGS = {**SEPARATE_FLAGS, "output": "-o/--output", "chunk_seconds": "--chunk-seconds",
         "overlap_seconds": "--overlap-seconds", "feature_dim": "--feature-dim", "layer": "--layer",
         "backend": "--backend", "precision": "--precision"}


def add_parser(subparsers) -> argparse.ArgumentParser:
    rest = subparsers.add_parser("restore", help="restore lossy or band-limited audio with an Apollo model")
    rest.add_argument("input", type=Path, metavar="FILE").complete = FILES
    rest.add_argument("-o", "--output", default=".",
                      help="the restored file (.wav, .flac, .mp3), or a folder for <track>_restored.wav "
                           "(default: the current folder)")
    which = rest.add_mutually_exclusive_group(required=True)
    which.add_argument("--model-path", help="the Apollo checkpoint (.ckpt or .bin)")
    which.add_argument("-m", "--model", help="an installed Apollo model by name (`dsu models list --family apollo`)")
    rest.add_argument("--models-dir", type=Path, default=None,
                      help="where --model is installed (default: as `dsu models`)")
    rest.add_argument("--config-path", help="its YAML config (model: sr, win, feature_dim, layer)")
    rest.add_argument("--chunk-seconds", type=float, help="chunk length (default: the model's)")
    rest.add_argument("--overlap-seconds", type=float, help="crossfade between chunks (default: the model's)")
    rest.add_argument("--feature-dim", type=int, help="without a config: the model's feature width")
    rest.add_argument("--layer", type=int, help="without a config: the model's layer count")
    rest.add_argument("--backend", choices=BACKENDS,
                      help="what runs the network: torch, openvino (CPU), auto (default: the fastest measured)")
    rest.add_argument("--precision", choices=PRECISIONS,
                      help="the network's float type (default auto: float32 on a CPU)")
    rest.add_argument("--bit-depth", type=int, choices=(16, 24, 32), help="16, 24 or 32 float (default 16)")
    add_common(rest)
    rest.set_defaults(run=run)
    return rest


def output_file(output: str, input_path: Path, suffix: str = SUFFIX) -> Path:
    """The file `-o` means: itself, or `<track><suffix>.wav` inside it when it is a folder."""
    path = Path(output)
    if path.is_dir() or output.endswith(("/", os.sep)):
        return path / f"{input_path.stem}{suffix}.wav"
    return path


def run(args: argparse.Namespace, prog: str = "dsu") -> int:
    display = Display(mode_from(args.quiet, args.verbose, args.json), total=1, prog=prog, flags=FLAGS)
    problems = runner.input_problems([args.input])
    output = output_file(args.output, args.input)
    problems += runner.output_file_problems(output, args.output, args.bit_depth)
    if args.model:
        from ..catalog import default_models_dir
        from ..errors import DSUError
        from ..jobs import models as model_jobs
        try:  # the worker's lookup: the models dir, then the catalog
            args.model_path, args.config_path = model_jobs.apollo_files(
                {"model": args.model, "config_path": args.config_path}, args.models_dir or default_models_dir())
        except DSUError as e:
            problems.append(f"{e.code}: {e.message}")
    if args.model_path and not Path(args.model_path).is_file():
        problems.append(f"--model-path {args.model_path}: no such file")
    if args.config_path and not Path(args.config_path).is_file():
        problems.append(f"--config-path {args.config_path}: no such file")
    device = runner.device_problem(args.device)
    if device:
        problems.append(device)
    if problems:
        return runner.report(display, problems)
    request = {"cmd": "apollo", "input": str(args.input), "output": str(output),
               "model_path": args.model_path, "config_path": args.config_path,
               "chunk_seconds": args.chunk_seconds, "overlap_seconds": args.overlap_seconds,
               "feature_dim": args.feature_dim, "layer": args.layer, "bit_depth": args.bit_depth,
               "backend": args.backend, "precision": args.precision}
    cache = ModelCache(runner.setup_device(args.device, args.threads), max_models=1)
    return runner.EXIT_OK if runner.run_restore(request, cache=cache, display=display) else runner.EXIT_FAILED
