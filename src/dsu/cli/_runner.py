"""What every separating command line shares: checks of paths and devices that become one-line
errors, and the loop that runs `separate` requests through `dsu.jobs` with one loaded model."""
from __future__ import annotations

import difflib
import os
from pathlib import Path

from .progress import Display

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130
# errors that mean the command line asked for something wrong, found before any work: exit 2
USAGE_CODES = ("model_not_found", "bad_value", "missing_field")


def report(display: Display, problems: list[str], code: int = EXIT_USAGE) -> int:
    """Each problem on its own line; the exit code."""
    for problem in problems:
        display.error(problem)
    return code


def input_problems(paths) -> list[str]:
    out = []
    for path in paths:
        path = Path(path)
        if path.is_dir():
            out.append(f"{path} is a folder, not an audio file: give the files in it (e.g. {path}/*.wav)")
        elif not path.exists():
            out.append(f"{path}: no such file (check the name; quote a path with spaces)")
    return out


def folder_problem(path: Path, option: str) -> str | None:
    """Why `path` cannot be (or become) a folder files are written into, or None."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        return f"{option} {path} is a file, not a folder: give a folder (it is created when missing)"
    existing = path
    while not existing.exists():
        if existing.parent == existing:
            break
        existing = existing.parent
    if existing.exists() and not existing.is_dir():
        return f"{option} {path}: {existing} is a file, so no folder can be made under it"
    if not os.access(existing, os.W_OK | os.X_OK):
        return f"{option} {path}: {existing} is not writable; choose a folder you can write to"
    return None


def output_file_problems(output: Path, given: str | None, bit_depth: int | None) -> list[str]:
    """Why the one audio file the request field `output` names (`output`, given as GIVEN) cannot be
    written as asked; the fields in backticks, for the caller's Display to say in its flags."""
    out = []
    folder = folder_problem(output.parent, "`output`")
    if folder:
        out.append(folder)
    if output.suffix.lower() not in (".wav", ".flac", ".mp3"):
        out.append(f"`output` {given}: name the file .wav, .flac or .mp3, or give a folder (ending in /)")
    if output.suffix.lower() == ".mp3" and bit_depth:
        out.append(f"`bit_depth` {bit_depth} with an .mp3 output: mp3 has no bit depth")
    return out


def device_problem(wanted: str, flag: str = "--device", instead: str = "use --device auto (or cpu)") -> str | None:
    """An explicitly asked device that is not there is an error; `auto` falls back quietly. `flag`
    and `instead`: how the command line asking says a device, and the choice it has instead."""
    if wanted == "auto" or wanted == "cpu":
        return None
    from .. import device as devices
    chosen, warning = devices.choose_device(wanted)
    if warning:
        return f"{flag} {wanted}: not available in this torch build or machine; {instead}"
    return None


def setup_device(wanted: str, threads: int | None):
    from .. import device as devices
    chosen, _ = devices.choose_device(wanted)
    devices.set_threads(threads)
    return chosen


def unknown_options(given, known, accepted=()) -> list[str]:
    """A line per option name the model does not take, with the closest valid name."""
    valid = sorted(set(known) | set(accepted))
    out = []
    for name in given:
        if name in valid:
            continue
        close = difflib.get_close_matches(name, valid, n=1, cutoff=0.6)
        hint = f"did you mean {close[0]}?" if close else f"this model takes: {', '.join(sorted(known)) or 'none'}"
        out.append(f"-O {name}: not an option of this model; {hint}")
    return out


def load_model(request: dict, *, cache, models_dir, default_model, display: Display):
    """(resolved ref, LoadedModel) of a `separate` request, through the cache."""
    from .. import protocol as spec
    from ..jobs import models as model_jobs
    fields, _ = spec.validate(spec.COMMANDS["separate"], {"input": "-", "output_dir": "-", **request})
    ref = model_jobs.resolve(fields, models_dir, default_model)
    model, _ = model_jobs.load(ref, cache, display.emit)
    return ref, model


def stem_problems(model, request: dict, options: dict) -> list[str]:
    """Stems asked for that the model does not make (matched in any case)."""
    produced = model.output_stems(**options)
    lowered = {s.lower() for s in produced}
    asked = request.get("stems") or []
    asked = [asked] if isinstance(asked, str) else list(asked)
    if request.get("two_stems"):
        asked.append(request["two_stems"])
    return [f"stem {s!r}: {model.name} makes {', '.join(produced)}" for s in asked if s.lower() not in lowered]


def _run_one(display: Display, request: dict, job) -> bool:
    """`job()` for one input, its done or its failure said; False when it failed. A full disk or a
    removed output folder is already a coded error (the writer's `output_not_writable`)."""
    from ..jobs import failures
    display.start(request["input"])
    try:
        done = job()
    except Exception as e:
        known = failures.coded(e)
        if known is not None:  # coded, or what the jobs' one mapping codes (memory run out, a refused write)
            display.failed(request["input"], known.code, known.message)
            return False
        # a bug: one line (the traceback with -v), and the other files go on
        if display.mode == "verbose":
            import traceback
            traceback.print_exc()
        display.failed(request["input"], "internal", f"{type(e).__name__}: {e}")
        return False
    display.done(done)
    return True


def run_separations(requests: list[dict], *, cache, models_dir, default_model, display: Display) -> int:
    """Each request (one input each) through `dsu.jobs.separate`; failures are said and counted."""
    from .. import protocol as spec
    from ..jobs import separate

    def job(request):
        fields, extra = spec.validate(spec.COMMANDS["separate"], request)
        return separate.run(fields, extra, cache=cache, models_dir=models_dir, default_model=default_model,
                            emit=display.emit, progress=display)
    return sum(not _run_one(display, request, lambda: job(request)) for request in requests)  # noqa: B023 -- called at once


def run_restore(request: dict, *, cache, display: Display) -> bool:
    """One `apollo` request through `dsu.jobs.restore`; False (said) when it failed."""
    from .. import protocol as spec
    from ..jobs import restore

    def job():
        fields, _ = spec.validate(spec.COMMANDS["apollo"], request)
        return restore.run(fields, cache=cache, models_dir=None, emit=display.emit, progress=display)
    return _run_one(display, request, job)
