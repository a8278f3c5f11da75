"""`dsu-bsroformer --model_type T --config_path C --start_check_point W --input_folder IN --store_dir OUT`:
Music-Source-Separation-Training's `inference.py` command line, run by DSU's MSST family: every file
under the input folder (recursively), stems written as `--filename_template` (default
`{file_name}/{instr}`, placeholders `{file_name}`, `{instr}`, `{dir_name}`, `{model}`, `{model_type}`,
`{start_time}`) plus `.wav` (float, or `--pcm_type`) or `.flac` (`--flac_file`; PCM_16 when the type
is FLOAT, as MSST falls back). A track that cannot be read is said and skipped, as MSST does. Without
`--model_type` the type is the one the config's keys imply (MSST's default, mdx23c, fits few configs).

Not honoured, so refused by name (exit 2): `--draw_spectro`, `--bigshifts` above 1, the LoRA
checkpoints, several `--device_ids` (one process, one device), a missing `--start_check_point`. Unlike
MSST, the codec is what `--flac_file` says whatever the peak (MSST falls back to wav above 0 dBFS)."""
from __future__ import annotations

import argparse
import re
import sys
import time
from pathlib import Path

from ...errors import DSUError
from ...protocol import MSST_TYPES
from ..progress import Display, mode_from
from ..separate import add_backend_arguments, backend_request
from . import common

PROG = "dsu-bsroformer"
PLACEHOLDERS = {"file_name": "{track}", "instr": "{stem}"}
PER_FILE = ("dir_name", "model", "model_type", "start_time")
PCM_BITS = {"PCM_16": 16, "PCM_24": 24, "FLOAT": 32}
# request fields as inference.py's flags say them (dsu.cli.vocabulary)
FLAGS = {"model_path": "--start_check_point", "config_path": "--config_path", "model_type": "--model_type",
         "input": "a file of --input_folder", "output_dir": "--store_dir", "layout": "--filename_template",
         "format": "--flac_file", "bit_depth": "--pcm_type", "use_tta": "--use_tta",
         "extract_instrumental": "--extract_instrumental", "list_models": "`dsu models list`"}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(PROG, description="MSST inference.py's command line, run by DSU "
                                                  "(`--worker` for the JSON worker)")
    p.add_argument("--model_type", type=str, default=None,
                   help=f"One of {', '.join(MSST_TYPES)} (default: the one the config's "
                        "keys imply; MSST's own default is mdx23c)")
    p.add_argument("--config_path", type=str, help="path to config file")
    p.add_argument("--start_check_point", type=str, default="", help="Initial checkpoint to valid weights")
    p.add_argument("--input_folder", type=str, help="folder with mixtures to process")
    p.add_argument("--store_dir", type=str, default="", help="path to store results as wav file")
    p.add_argument("--draw_spectro", type=float, default=0, help="Refused: DSU draws no spectrograms.")
    p.add_argument("--device_ids", nargs="+", type=int, default=0, help="list of gpu ids (DSU: one)")
    p.add_argument("--extract_instrumental", action="store_true", help="invert vocals to get instrumental")
    p.add_argument("--disable_detailed_pbar", action="store_true", help="disable detailed progress bar")
    p.add_argument("--force_cpu", action="store_true", help="Force the use of CPU even if CUDA is available")
    p.add_argument("--flac_file", action="store_true", help="Output flac file instead of wav")
    p.add_argument("--pcm_type", type=str, choices=["PCM_16", "PCM_24", "FLOAT"], default="FLOAT",
                   help="PCM type of the output files")
    p.add_argument("--use_tta", action="store_true", help="test time augmentation (polarity and channel inverse)")
    p.add_argument("--bigshifts", type=int, default=1, help="Refused above 1.")
    p.add_argument("--lora_checkpoint_peft", type=str, default="", help="Refused.")
    p.add_argument("--filename_template", type=str, default="{file_name}/{instr}",
                   help="Output filename template, without extension, using '/' for subdirectories.")
    p.add_argument("--lora_checkpoint_loralib", type=str, default="", help="Refused.")
    dsu = p.add_argument_group("DSU")
    dsu.add_argument("--threads", type=int, default=None)
    add_backend_arguments(dsu)
    loud = dsu.add_mutually_exclusive_group()
    loud.add_argument("-q", "--quiet", action="store_true", help="errors only")
    loud.add_argument("--json", action="store_true", help="one JSON line per event on stdout")
    return p


def dsu_template(template: str, values: dict[str, str]) -> str:
    """MSST's template (str.replace of its placeholders, the rest literal) as a DSU layout template."""
    out = []
    for part in re.split(r"(\{[a-z_]+\})", template):
        key = part[1:-1] if part.startswith("{") and part.endswith("}") else None
        if key in PLACEHOLDERS:
            out.append(PLACEHOLDERS[key])
        elif key in values:
            out.append(values[key].replace("{", "{{").replace("}", "}}"))
        else:
            out.append(part.replace("{", "{{").replace("}", "}}"))
    # an empty {dir_name} leaves an empty folder name, which MSST's os.path.join drops too
    return "/".join(p for p in "".join(out).split("/") if p not in ("", ".")) + ".{ext}"


def _refusals(args) -> list[str]:
    out = []
    if args.draw_spectro:
        out.append("--draw_spectro is not supported by DSU")
    if args.bigshifts > 1:
        out.append(f"--bigshifts {args.bigshifts} is not supported by DSU (1 only)")
    for flag in ("lora_checkpoint_peft", "lora_checkpoint_loralib"):
        if getattr(args, flag):
            out.append(f"--{flag} is not supported by DSU")
    ids = args.device_ids if isinstance(args.device_ids, list) else [args.device_ids]
    if ids != [0]:
        out.append(f"--device_ids {' '.join(map(str, ids))}: DSU uses one device, cuda:0 (or --force_cpu)")
    if not args.start_check_point:
        out.append("--start_check_point is required: DSU runs trained weights only")
    if not args.input_folder:
        out.append("--input_folder is required")
    return out


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    problems = _refusals(args)
    if problems:
        return common.refuse(PROG, problems, FLAGS)
    started = time.time()
    folder = Path(args.input_folder)
    store = Path(args.store_dir or ".")
    display = Display(mode_from(args.quiet, False, args.json), prog=PROG, flags=FLAGS)
    device = "cpu" if args.force_cpu else "auto"
    problems = _path_problems(args, folder, store)
    if problems:
        return common.runner.report(display, problems, common.EXIT_FAILED)
    request = _request(args, store)
    files = sorted(p for p in folder.rglob("*.*") if p.is_file())
    display.total = len(files)
    cache = common.open_cache(device, args.threads)
    try:
        ref, model = common.load(request, cache, None, display)
    except DSUError as e:
        return common.fail(display, e)
    display.result(f"Total files found: {len(files)}. Using sample rate: {model.samplerate}")
    display.result(f"Instruments: {model.stems}")
    values = {"model": Path(args.start_check_point).stem, "model_type": ref.option("model_type"),
              "start_time": str(int(started))}
    failed = sum(not _separate(args, path, folder, request, values, cache, display) for path in files)
    display.result(f"Elapsed time: {time.time() - started:.2f} seconds.")
    return common.exit_code(failed)


def _path_problems(args, folder: Path, store: Path) -> list[str]:
    problems = []
    if not folder.is_dir():
        problems.append(f"--input_folder {folder}: no such folder")
    for flag, path in (("--start_check_point", args.start_check_point), ("--config_path", args.config_path)):
        if path and not Path(path).is_file():
            problems.append(f"{flag} {path}: no such file")
    bad_folder = common.runner.folder_problem(store, "--store_dir")
    if bad_folder:
        problems.append(bad_folder)
    return problems


def _request(args, store: Path) -> dict:
    fmt = "flac" if args.flac_file else "wav"
    pcm = args.pcm_type
    if fmt == "flac" and pcm == "FLOAT":
        print("WARNING: codec flac doesn't support subtype FLOAT, defaulting to PCM_16", file=sys.stderr)
        pcm = "PCM_16"
    request = {"model_path": args.start_check_point, "config_path": args.config_path,
               "model_type": args.model_type, "format": fmt, "bit_depth": PCM_BITS[pcm],
               "output_dir": str(store), "use_tta": args.use_tta,
               "extract_instrumental": args.extract_instrumental, **backend_request(args)}
    return common.given(request)


def _separate(args, path: Path, folder: Path, request: dict, values: dict[str, str], cache,
              display: Display) -> bool:
    """One file, named by MSST's template; False when it failed (a file not read is said and skipped, as MSST)."""
    from ... import protocol as spec
    from ...jobs import separate
    dir_name = "" if path.parent == folder else path.parent.relative_to(folder).as_posix()
    layout = dsu_template(args.filename_template, {"dir_name": dir_name, **values})
    display.start(path)
    try:
        fields, extra = spec.validate(spec.COMMANDS["separate"], {**request, "layout": layout, "input": str(path)})
        done = separate.run(fields, extra, cache=cache, models_dir=None, default_model=None,
                            emit=display.emit, progress=display)
    except DSUError as e:
        display.close_bar()
        if e.code == "unsupported_audio":  # as MSST: said, skipped, not a failure of the run
            display.result(f"Cannot read track: {path}")
            display.result(f"Error message: {e.message}")
            return True
        display.failed(path, e.code, e.message)
        return False
    display.done(done)
    return True
