"""`dsu-audio-separator FILE... -m MODEL ...`: python-audio-separator's `audio-separator` command line,
run by DSU's families: the same options and defaults (FLAC output, 44100 Hz, the current folder), file
names `<track>_(<Stem>)_<model>.<ext>` (the model file's name up to its first dot; or
`--custom_output_names`), stems in the input's bit depth, exit codes (no files: help and
exit 1). Each family takes its own option group (`--mdx_*`, `--vr_*`, `--demucs_*`, `--mdxc_*`), as
audio-separator does; a group that does not apply to the model is left alone.

Not honoured, so refused by name (exit 2): formats other than WAV/FLAC/MP3, `--output_bitrate` for
lossless formats, `--invert_spect`, `--amplification`, `--chunk_duration`, `--use_autocast`,
`--download_model_only` (`dsu models download` does that), `--mdxc_override_model_segment_size`,
`--mdxc_pitch_shift`, `--demucs_segments_enabled False`, and a `--normalization` other than 0.9 for
models DSU does not normalise (Demucs, MSST).

`--apollo` restores instead: each file through the Apollo checkpoint `-m` (a path, or a name in
`--model_file_dir`) with `--apollo_config`, written as `<output_dir>/<track>_restored.<ext>`."""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from ... import __version__
from ...device import DEVICES
from ...errors import DSUError
from ..progress import Display, mode_from
from ..separate import add_backend_arguments, backend_request
from . import common

PROG = "dsu-audio-separator"
DEFAULT_MODEL = "model_bs_roformer_ep_317_sdr_12.9755.ckpt"
FORMATS = ("wav", "flac", "mp3")
UVR_NORMALISED = ("mdx", "vr")
# request fields as audio-separator's flags say them (dsu.cli.vocabulary); it has no config or
# architecture flag: the YAML lies beside the model in the model file dir, the YAML's keys tell the type
FLAGS = {"model": "-m/--model_filename", "model_path": "-m/--model_filename", "models_dir": "--model_file_dir",
         "config_path": "--model_file_dir a folder holding both",
         "model_type": "its YAML config beside it (its keys tell the architecture)",
         "output_dir": "--output_dir", "format": "--output_format", "mp3_bitrate": "--output_bitrate",
         "sample_rate": "--sample_rate", "stems": "--single_stem", "output_names": "--custom_output_names",
         "input": "an audio file", "list_models": "`dsu-audio-separator --list_models`",
         "segment_size": "--mdx_segment_size", "hop_length": "--mdx_hop_length", "window_size": "--vr_window_size",
         "aggression": "--vr_aggression", "post_process_threshold": "--vr_post_process_threshold",
         "normalization_threshold": "--normalization", "shifts": "--demucs_shifts"}
APOLLO_FLAGS = {**FLAGS, "model_path": "-m/--model_filename", "config_path": "--apollo_config",
                "chunk_seconds": "--apollo_chunk_seconds", "overlap_seconds": "--apollo_overlap_seconds"}


def _models_dir_default() -> str:
    return os.environ.get("AUDIO_SEPARATOR_MODEL_DIR") or os.environ.get("DSU_MODELS") or "/tmp/audio-separator-models/"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(PROG, description="Separate audio file into different stems (audio-separator's "
                                                  "command line, run by DSU; `--worker` for the JSON worker).")
    p.add_argument("audio_files", nargs="*", help="The audio file paths to separate.")
    info = p.add_argument_group("Info and Debugging")
    info.add_argument("-v", "--version", action="version", version=f"%(prog)s {__version__} (DSU)")
    info.add_argument("-d", "--debug", action="store_true", help="Enable debug logging.")
    info.add_argument("-e", "--env_info", action="store_true", help="Print environment information and exit.")
    info.add_argument("-l", "--list_models", action="store_true", help="List the models DSU finds and exit.")
    info.add_argument("--log_level", default="info", help="Log level, e.g. info, debug, warning.")
    info.add_argument("--list_filter", help="Filter the model list by name or stem, e.g. vocals")
    info.add_argument("--list_limit", type=int, help="Limit the number of models shown")
    info.add_argument("--list_format", choices=["pretty", "json"], default="pretty")
    io = p.add_argument_group("Separation I/O Params")
    io.add_argument("-m", "--model_filename", default=DEFAULT_MODEL, help="Model to use (default: %(default)s).")
    io.add_argument("--output_format", default=None, help="WAV, FLAC or MP3 (default: FLAC; WAV with --apollo).")
    io.add_argument("--output_bitrate", default=None, help="MP3 bitrate, e.g. 320k.")
    io.add_argument("--output_dir", default=None, help="Directory to write output files (default: <current dir>).")
    io.add_argument("--model_file_dir", default=_models_dir_default(),
                    help="Model files directory (default: $AUDIO_SEPARATOR_MODEL_DIR, $DSU_MODELS or %(default)s).")
    io.add_argument("--download_model_only", action="store_true",
                    help="Refused: this command never downloads (`dsu models download` does).")
    common_ = p.add_argument_group("Common Separation Parameters")
    common_.add_argument("--invert_spect", action="store_true", help="Refused.")
    common_.add_argument("--normalization", type=float, default=0.9, help="Max peak amplitude (default: %(default)s).")
    common_.add_argument("--amplification", type=float, default=0.0, help="Refused when not 0.")
    common_.add_argument("--single_stem", default=None, help="Output only single stem, e.g. Instrumental, Vocals.")
    common_.add_argument("--sample_rate", type=int, default=44100, help="Output sample rate (default: %(default)s).")
    common_.add_argument("--use_soundfile", action="store_true", help="Accepted: DSU always writes with soundfile.")
    common_.add_argument("--use_autocast", action="store_true", help="Refused.")
    common_.add_argument("--chunk_duration", type=float, default=None, help="Refused: DSU streams long files.")
    common_.add_argument("--custom_output_names", type=json.loads, default=None,
                         help='Custom names for output files in JSON, e.g. \'{"Vocals": "vocals_output"}\'')
    mdx = p.add_argument_group("MDX Architecture Parameters")
    mdx.add_argument("--mdx_segment_size", type=int, default=256)
    mdx.add_argument("--mdx_overlap", type=float, default=0.25)
    mdx.add_argument("--mdx_batch_size", type=int, default=1)
    mdx.add_argument("--mdx_hop_length", type=int, default=1024)
    mdx.add_argument("--mdx_enable_denoise", action="store_true")
    vr = p.add_argument_group("VR Architecture Parameters")
    vr.add_argument("--vr_batch_size", type=int, default=1)
    vr.add_argument("--vr_window_size", type=int, default=512)
    vr.add_argument("--vr_aggression", type=int, default=5)
    vr.add_argument("--vr_enable_tta", action="store_true")
    vr.add_argument("--vr_high_end_process", action="store_true")
    vr.add_argument("--vr_enable_post_process", action="store_true")
    vr.add_argument("--vr_post_process_threshold", type=float, default=0.2)
    dm = p.add_argument_group("Demucs Architecture Parameters")
    dm.add_argument("--demucs_segment_size", type=str, default="Default")
    dm.add_argument("--demucs_shifts", type=int, default=2)
    dm.add_argument("--demucs_overlap", type=float, default=0.25)
    dm.add_argument("--demucs_segments_enabled", type=bool, default=True)
    mdxc = p.add_argument_group("MDXC Architecture Parameters")
    mdxc.add_argument("--mdxc_segment_size", type=int, default=256)
    mdxc.add_argument("--mdxc_override_model_segment_size", action="store_true")
    mdxc.add_argument("--mdxc_overlap", type=int, default=8)
    mdxc.add_argument("--mdxc_batch_size", type=int, default=1)
    mdxc.add_argument("--mdxc_pitch_shift", type=int, default=0)
    apollo = p.add_argument_group("Apollo restoration (DSU)")
    apollo.add_argument("--apollo", action="store_true", help="restore each file with the Apollo checkpoint -m")
    apollo.add_argument("--apollo_config", default=None, help="the checkpoint's YAML config")
    apollo.add_argument("--apollo_chunk_seconds", type=float, default=None)
    apollo.add_argument("--apollo_overlap_seconds", type=float, default=None)
    dsu = p.add_argument_group("DSU")
    dsu.add_argument("--device", choices=DEVICES, default="auto")
    dsu.add_argument("--threads", type=int, default=None)
    add_backend_arguments(dsu)
    loud = dsu.add_mutually_exclusive_group()
    loud.add_argument("-q", "--quiet", action="store_true", help="errors only")
    loud.add_argument("--json", action="store_true", help="one JSON line per event on stdout")
    return p


def _bitrate(text: str) -> int | None:
    text = text.strip().lower().rstrip("k").rstrip("b").rstrip("k")
    try:
        return int(float(text))
    except ValueError:
        return None


def _refusals(args, fmt: str) -> list[str]:
    out = []
    if fmt not in FORMATS:
        out.append(f"--output_format {args.output_format}: DSU writes WAV, FLAC or MP3")
    if args.output_bitrate is not None and fmt != "mp3":
        out.append("--output_bitrate applies to --output_format MP3 only in DSU")
    if args.output_bitrate is not None and fmt == "mp3" and not 8 <= (_bitrate(args.output_bitrate) or 0) <= 320:
        out.append(f"--output_bitrate {args.output_bitrate}: give 8k to 320k")
    if args.download_model_only:
        out.append("--download_model_only is not supported: this command never downloads; "
                   f"`dsu models download {args.model_filename or 'NAME'}` does")
    for flag, on in (("--invert_spect", args.invert_spect),
                     ("--use_autocast", args.use_autocast),
                     ("--mdxc_override_model_segment_size", args.mdxc_override_model_segment_size)):
        if on:
            out.append(f"{flag} is not supported by DSU")
    if args.amplification:
        out.append("--amplification is not supported by DSU (leave it 0)")
    if args.chunk_duration:
        out.append("--chunk_duration is not supported: DSU streams long files in bounded memory; drop it")
    if args.mdxc_pitch_shift:
        out.append("--mdxc_pitch_shift is not supported by DSU")
    if not args.demucs_segments_enabled:
        out.append("--demucs_segments_enabled False is not supported: DSU always separates in segments")
    if args.sample_rate <= 0:
        out.append(f"--sample_rate {args.sample_rate}: give a number of Hz")
    return out


def family_options(args, family: str) -> tuple[dict, list[str]]:
    """(the options of the loaded model's family, refusals that only show once it is known)."""
    if family == "mdx":
        return {"segment_size": args.mdx_segment_size, "overlap": args.mdx_overlap, "batch_size": args.mdx_batch_size,
                "hop_length": args.mdx_hop_length, "enable_denoise": args.mdx_enable_denoise,
                "normalization_threshold": args.normalization}, []
    if family == "vr":
        return {"batch_size": args.vr_batch_size, "window_size": args.vr_window_size, "aggression": args.vr_aggression,
                "enable_tta": args.vr_enable_tta, "high_end_process": args.vr_high_end_process,
                "enable_post_process": args.vr_enable_post_process,
                "post_process_threshold": args.vr_post_process_threshold,
                "normalization_threshold": args.normalization}, []
    refused = [] if args.normalization == 0.9 else \
        [f"--normalization {args.normalization}: DSU normalises MDX-Net and VR output only"]
    if family == "demucs":
        options = {"shifts": args.demucs_shifts, "overlap": args.demucs_overlap}
        if args.demucs_segment_size != "Default":
            try:
                options["segment"] = int(args.demucs_segment_size)
            except ValueError:
                refused.append(f"--demucs_segment_size {args.demucs_segment_size}: give Default or a number")
        return options, refused
    if family == "msst":
        return {"overlap": args.mdxc_overlap, "batch_size": args.mdxc_batch_size}, refused
    return {}, refused


def input_bit_depth(path, fmt: str) -> int | None:
    """audio-separator writes a stem in its input's bit depth (16 when it cannot tell; flac at most 24)."""
    if fmt == "mp3":
        return None
    try:
        import soundfile as sf

        from ...paths import native
        subtype = sf.info(native(path)).subtype
    except Exception:
        subtype = ""
    bits = 24 if subtype == "PCM_24" else 32 if subtype in ("PCM_32", "FLOAT", "DOUBLE") else 16
    return min(bits, 24) if fmt == "flac" else bits


def list_models(args) -> int:
    from ... import families
    found = families.list_models(args.model_file_dir if Path(args.model_file_dir).is_dir() else None)
    if args.list_filter:
        key = args.list_filter.lower()
        found = [m for m in found if key in m["name"].lower() or key in [str(s).lower() for s in m.get("stems", [])]]
    if args.list_limit and args.list_limit > 0:
        found = found[: args.list_limit]
    if args.list_format == "json":
        print(json.dumps(found, indent=2, default=str))
        return 0
    width = max([len("Model Filename"), *(len(m.get("file") or m["name"]) for m in found)])
    print(f"{'Model Filename':<{width}}  {'Arch':<8}  Output Stems")
    for m in found:
        print(f"{m.get('file') or m['name']:<{width}}  {m['family']:<8}  {', '.join(map(str, m.get('stems', [])))}")
    return 0


def _model_requests(args) -> list[dict]:
    """The ways to find `-m`, in order: a name in --model_file_dir (its catalogue, Demucs signatures,
    UVR tables), that file itself, a path as given."""
    out = [{"model": args.model_filename, "models_dir": args.model_file_dir}] \
        if Path(args.model_file_dir).is_dir() else []
    for path in (Path(args.model_file_dir) / args.model_filename, Path(args.model_filename)):
        if path.is_file():
            out.append({"model_path": str(path)})
    return out or [{"model": args.model_filename, "models_dir": args.model_file_dir}]


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    fmt = (args.output_format or ("wav" if args.apollo else "flac")).lower()
    answered = _without_files(args, parser, fmt)
    if answered is not None:
        return answered
    output_dir = Path(args.output_dir) if args.output_dir else Path.cwd()
    display = Display(mode_from(args.quiet, args.debug, args.json), total=len(args.audio_files), prog=PROG,
                      flags=APOLLO_FLAGS if args.apollo else FLAGS)
    problems = common.runner.input_problems(args.audio_files)
    folder = common.runner.folder_problem(output_dir, "--output_dir")
    if folder:
        problems.append(folder)
    if problems:
        return common.runner.report(display, problems, common.EXIT_FAILED)
    if args.apollo:
        return restore_all(args, fmt, output_dir, display)
    return _separate_all(args, fmt, output_dir, display)


def _without_files(args, parser: argparse.ArgumentParser, fmt: str) -> int | None:
    """The exit code when the command ends before any file: --env_info, --list_models, refused
    options (2), no files (help, 1); None when it goes on to the files."""
    if args.env_info:
        import platform

        import torch
        print(f"DSU {__version__}, Python {platform.python_version()}, torch {torch.__version__}, "
              f"CUDA {torch.cuda.is_available()}, {platform.platform()}")
        return 0
    if args.list_models:
        return list_models(args)
    problems = _refusals(args, fmt)
    unavailable = common.runner.device_problem(args.device)
    if unavailable:
        problems.append(unavailable)
    if problems:
        return common.refuse(PROG, problems, FLAGS)
    if not args.audio_files:
        parser.print_help()
        return common.EXIT_FAILED
    return None


def _separate_all(args, fmt: str, output_dir: Path, display: Display) -> int:
    request = _request(args, fmt, output_dir)
    cache = common.open_cache(args.device, args.threads)
    try:
        ref, model = _load(args, request, cache, display)
    except DSUError as e:
        return common.fail(display, e)
    options, problems = _options(args, ref.family, model, request)
    if problems:
        return common.refuse(PROG, problems, FLAGS)
    requests = [{**request, **options, "input": str(f), "bit_depth": input_bit_depth(f, fmt)} for f in args.audio_files]
    return common.run_all(requests, cache, None, display)


def _request(args, fmt: str, output_dir: Path) -> dict:
    # audio-separator names files after the model file up to its first dot, whatever DSU calls the model
    model_stem = Path(args.model_filename).name.split(".")[0].replace("{", "{{").replace("}", "}}")
    request = {"output_dir": str(output_dir), "format": fmt,
               "layout": "{track}_({Stem})_" + model_stem + ".{ext}",
               "sample_rate": args.sample_rate, "stems": [args.single_stem] if args.single_stem else None,
               "output_names": args.custom_output_names, **backend_request(args)}
    if fmt == "mp3" and args.output_bitrate:
        request["mp3_bitrate"] = _bitrate(args.output_bitrate)
    return common.given(request)


def _load(args, request: dict, cache, display: Display):
    """(ref, model) by the first of `_model_requests` that loads, which `request` then holds; else
    the last one's error, worded for this command."""
    error = None
    for way in _model_requests(args):
        try:
            ref, model = common.load({**request, **way}, cache, None, display)
        except DSUError as e:
            error = e
            continue
        request.update(way)
        return ref, model
    assert error is not None  # `_model_requests` gives at least one way
    if error.code == "model_not_found" and getattr(error, "download", None):  # the catalog knows it
        raise DSUError(error.code, f"{error.message}, or put {args.model_filename} in {args.model_file_dir} "
                                   "(--model_file_dir)")
    if error.code == "model_not_found":
        raise DSUError(error.code, f"{error.message}. This command does not download models: put "
                                   f"{args.model_filename} in {args.model_file_dir} (--model_file_dir) or give "
                                   "its path with -m")
    raise error


def _options(args, family: str, model, request: dict) -> tuple[dict, list[str]]:
    """(the family's options, as audio-separator writes the stems, what of them is refused)."""
    options, refused = family_options(args, family)
    if refused:
        return options, refused
    from ...jobs.outputs import upstream_options
    options = upstream_options(PROG, model, options)  # the rest of the mix too, as audio-separator writes it
    try:
        problems = common.runner.stem_problems(model, request, options)
    except DSUError as e:
        problems = [f"{e.code}: {e.message}"]
    return options, problems


def restore_all(args, fmt: str, output_dir: Path, display: Display) -> int:
    path = Path(args.model_filename)
    if not path.is_file():
        path = Path(args.model_file_dir) / args.model_filename
    cache = common.open_cache(args.device, args.threads)
    failed = 0
    for f in args.audio_files:
        request = {"input": str(f), "output": str(output_dir / f"{Path(f).stem}_restored.{fmt}"),
                   "model_path": str(path), "config_path": args.apollo_config,
                   "chunk_seconds": args.apollo_chunk_seconds, "overlap_seconds": args.apollo_overlap_seconds}
        failed += not common.runner.run_restore(request, cache=cache, display=display)
    return common.exit_code(failed)


if __name__ == "__main__":
    sys.exit(main())
