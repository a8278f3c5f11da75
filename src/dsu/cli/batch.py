"""`dsu batch`: separate whole folders, globs and lists, resumably, on N workers or a Ray cluster."""
from __future__ import annotations

import argparse
import signal
import sys
from pathlib import Path

from ..device import DEVICES
from ..errors import DSUError, speak
from .separate import FLAGS as SEPARATE_FLAGS
from .separate import add_model_arguments, add_stem_arguments, model_request

EXIT_FAILED, EXIT_INTERRUPTED = 1, 130
# request fields as `dsu batch` spells them (dsu.cli.vocabulary); the rest as `dsu separate`
FLAGS = {**SEPARATE_FLAGS, "input": "INPUT", "layout": "--filename/--layout", "mp3_bitrate": "-O mp3_bitrate"}


def _positive(kind):
    def parse(text: str):
        value = kind(text)
        if value <= 0:
            raise argparse.ArgumentTypeError(f"must be more than 0, not {text}")
        return value
    return parse


def add_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "batch", help="separate folders, globs or lists of files: resumable, parallel, or on a Ray cluster",
        description="Separate many files with one model. Stems keep the inputs' folders under OUT; "
                    "OUT/dsu-batch.jsonl records each finished file, so running the same command again "
                    "skips what is done and retries what failed.")
    p.add_argument("inputs", nargs="+", metavar="INPUT",
                   help="audio files, folders (searched recursively), globs ('music/**/*.flac') or .txt/.csv lists")
    add_model_arguments(p, required=True, model_help="model name (`dsp` needs no files; see `dsu models list`)")
    p.add_argument("-o", "--output-dir", type=Path, required=True, help="stems and the manifest go under this folder")
    p.add_argument("--filename", "--layout", dest="layout", metavar="TEMPLATE",
                   help="output names: demucs, flat, uvr or a template such as '{track}/{stem}.{ext}' "
                        "(placeholders {track} {trackext} {stem} {Stem} {model} {ext}); default: the model family's")
    p.add_argument("--flat-folders", action="store_true",
                   help="write every input's stems directly under OUT instead of mirroring the input folders")
    add_stem_arguments(p, "32 = float (default: the family's)")
    p.add_argument("--device", choices=DEVICES, default="auto")
    p.add_argument("-j", "--jobs", type=_positive(int), default=None,
                   help="local workers (default: from the cores and the model's memory; 1 on a GPU)")
    p.add_argument("--threads", type=_positive(int), default=None,
                   help="CPU threads per worker or Ray actor (default: cores / jobs locally, 1 on Ray)")
    p.add_argument("--force", action="store_true", help="redo every file, even those the manifest says are done")
    p.add_argument("--retries", type=int, default=1, help="tries more for a file whose worker died (default 1)")
    p.add_argument("--timeout", type=_positive(float), metavar="SECONDS",
                   help="a file taking longer has its worker (or Ray actor) killed and is retried")
    p.add_argument("--ray", nargs="?", const="auto", metavar="ADDRESS",
                   help="run on Ray: a cluster ADDRESS (host:6379 or ray://host:10001), auto "
                        "(the cluster `ray start` set up here; the default), or local (start one on this machine)")
    p.add_argument("--ray-actors", type=_positive(int),
                   help="Ray actors (default: the cluster's CPUs / --ray-cpus, or GPUs)")
    p.add_argument("--ray-cpus", type=_positive(float), help="CPUs each actor reserves (default: --threads or 1)")
    p.add_argument("--ray-gpus", type=_positive(float), help="GPUs each actor reserves, fractions allowed (e.g. 0.5)")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress display")
    p.set_defaults(run=run)
    return p


def run(args: argparse.Namespace) -> int:
    from ..batch import run as run_batch
    from ..batch.runner import Interrupted

    request = model_request(args)
    try:
        summary = run_batch(args.inputs, args.output_dir, request, jobs=args.jobs, threads=args.threads,
                            device=args.device, models_dir=args.models_dir, layout=args.layout,
                            keep_folders=not args.flat_folders, force=args.force, retries=args.retries,
                            ray=args.ray, ray_actors=args.ray_actors, ray_cpus=args.ray_cpus,
                            ray_gpus=args.ray_gpus, timeout=args.timeout,
                            progress=not args.quiet, flags=FLAGS)
    except DSUError as e:
        print(f"dsu batch: {e.code}: {speak(e.message, FLAGS)}", file=sys.stderr)
        return EXIT_FAILED
    except Interrupted as e:
        for sig in (signal.SIGINT, signal.SIGTERM):  # a ^C more finds nothing left to stop: exit 130 still
            signal.signal(sig, signal.SIG_IGN)
        s = e.summary
        print(f"dsu batch: interrupted ({s.stopped}): {s.done} done, {s.failed} failed, "
              f"{s.total - s.skipped - s.done - s.failed} not done (nothing of theirs recorded), "
              f"{s.skipped} already done, of {s.total}; run the same command again to do the rest", file=sys.stderr)
        return EXIT_INTERRUPTED
    except KeyboardInterrupt:
        print("\ndsu batch: interrupted before any file started; run the same command again", file=sys.stderr)
        return EXIT_INTERRUPTED
    for failure in summary.failures:
        print(f"dsu batch: {failure['input']}: {failure['code']}: {speak(failure['message'], FLAGS)}", file=sys.stderr)
    rate = summary.audio_seconds / summary.elapsed if summary.elapsed else 0.0
    print(f"dsu batch: {summary.done} done, {summary.failed} failed, {summary.skipped} already done, "
          f"of {summary.total}, in {summary.elapsed:.1f} s ({rate:.1f} audio-min/min, {summary.backend or '-'} "
          f"x{summary.workers}); manifest: {summary.manifest}", file=sys.stderr)
    return 0 if summary.ok else EXIT_FAILED
