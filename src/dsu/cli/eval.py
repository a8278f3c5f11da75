"""`dsu eval DIR ... -m MODEL ...`: models, ensembles and oracles scored on MUSDB-style folders with
the metrics the community ranks models by (`dsu.evaluate`)."""
from __future__ import annotations

import argparse
import sys

from .separate import _option

FLAGS = {"model": "-m/--model", "ensemble": "--ensemble", "oracle": "--oracle", "output_dir": "-o/--output-dir",
         "--json": "--json", "--csv": "--csv", "--plot": "--plot"}


def add_parser(subparsers) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "eval", help="score models on folders of tracks with ground-truth stems",
        description="Separate every track (DIR/mixture.<ext> plus one file per stem, or folders of such) with "
                    "each model once, score the stems as MSST's valid.py and demucs do, and print a table per "
                    "stem. Separations and scores are kept in the output folder: run it again to go on.")
    parser.add_argument("dirs", nargs="+", metavar="DIR", help="a track folder, or a folder of track folders")
    parser.add_argument("-m", "--model", action="append", default=[], help="a model to score (repeatable)")
    parser.add_argument("--ensemble", action="append", default=[], metavar="A,B[,...]",
                        help="an ensemble of these models to score (repeatable); --algorithm blends it")
    parser.add_argument("--algorithm", help="the ensembles' algorithm (default: the ensemble's, avg_wave)")
    parser.add_argument("--oracle", action="append", default=[], choices=("mixture", "irm"),
                        help="a trivial separator beside the models: the mixture as every stem (the floor) or "
                             "the ideal ratio mask (the ceiling), as the corpus README defines them")
    parser.add_argument("--metrics", default=None,
                        help="comma-separated: sdr, si_sdr, l1_freq, bleedless, fullness (the default: streamed, "
                             "flat memory), aura_stft, aura_mrstft, bss_sdr (museval's BSSEval v4, median over "
                             "1 s frames; these hold the whole track)")
    parser.add_argument("-O", "--option", action="append", type=_option, default=[], metavar="KEY=VALUE",
                        help="a model option for every model, e.g. -O shifts=0")
    parser.add_argument("-o", "--output-dir", default="eval", help="separations and scores go here (default: eval)")
    parser.add_argument("--models-dir", default=None, help="the models folder (default: $DSU_MODELS)")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N or mps")
    parser.add_argument("--json", help="write every score and the summary to this JSON file")
    parser.add_argument("--csv", help="write one row per model, track and stem to this CSV file")
    parser.add_argument("--plot", help="plot each model's per-track SDR to this .png or .svg file")
    parser.add_argument("-q", "--quiet", action="store_true", help="no progress lines")
    parser.set_defaults(run=run)
    return parser


def run(args: argparse.Namespace) -> int:
    try:
        from ..evaluate import report
        from ..evaluate import run as evaluation
        from ..evaluate.metrics import DEFAULT
    except ImportError as e:  # the eval extra is not installed (a frozen build, a plain install)
        print(f"dsu eval: {e.name} is missing: pip install 'dsu[eval]'", file=sys.stderr)
        return 1
    from ..errors import DSUError, speak

    def progress(system: str, track: str, what: str) -> None:
        if not args.quiet:
            print(f"dsu eval: {system}: {track}: {what}", file=sys.stderr)
    try:
        metrics = [m.strip() for m in args.metrics.split(",")] if args.metrics else list(DEFAULT)
        chosen = evaluation.systems(args.model, args.ensemble, args.oracle, dict(args.option), args.algorithm)
        results = evaluation.evaluate(args.dirs, chosen, cache_dir=args.output_dir, metrics=metrics,
                                      models_dir=args.models_dir, device=args.device, report=progress)
        print(report.tables(results))
        for path, write in ((args.json, report.write_json), (args.csv, report.write_csv),
                            (args.plot, report.plot)):
            if path:
                print(f"dsu eval: wrote {write(results, path)}", file=sys.stderr)
    except DSUError as e:
        print(f"dsu eval: {e.code}: {speak(e.message, FLAGS)}", file=sys.stderr)
        return 2 if e.code in ("bad_value", "missing_field", "model_not_found") else 1
    failed = any(s["errors"] for s in results["systems"].values())
    return 1 if failed else 0
