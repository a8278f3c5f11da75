"""How often one `separate` job enters paths.py and outputs.py (calls from outside each module, and
every call of each function in them): the dsp model through
`dsu.jobs.separate.run` on a short generated file, counted with sys.setprofile (the job runs once
unprofiled first, so model loading and imports are not counted).

    PYTHONPATH=src python tools/count_flow.py"""
from __future__ import annotations

import sys
import tempfile
from collections import Counter
from pathlib import Path

import numpy as np
import soundfile as sf
import torch

from dsu import paths, protocol
from dsu.cache import ModelCache
from dsu.jobs import outputs, separate

WATCHED = {Path(paths.__file__).resolve(): "paths.py", Path(outputs.__file__).resolve(): "outputs.py"}


def _room(filename: str) -> str:
    parts = Path(filename).parts
    return "/".join(parts[parts.index("dsu") + 1:]) if "dsu" in parts else Path(filename).name


def _job(folder: Path, cache: ModelCache, name: str) -> None:
    fields, extra = protocol.validate(protocol.COMMANDS["separate"],
                                      {"cmd": "separate", "input": str(folder / "song.wav"),
                                       "output_dir": str(folder / name), "model": "dsp"})
    separate.run(fields, extra, cache=cache, models_dir=None, default_model=None, emit=lambda *a, **k: None)


def main() -> None:
    calls: Counter[str] = Counter()
    files = {}

    def profile(frame, event, arg) -> None:
        if event != "call":
            return
        code = frame.f_code
        where = files.get(code.co_filename)
        if where is None:
            where = files[code.co_filename] = WATCHED.get(Path(code.co_filename).resolve(), "")
        if where and not code.co_name.startswith("<"):  # comprehensions are part of their function
            calls[f"{where}:{code.co_name}"] += 1
            caller = frame.f_back.f_code.co_filename if frame.f_back is not None else ""
            if files.get(caller, WATCHED.get(Path(caller).resolve())) != where:
                calls[where] += 1  # entered from outside the module
                calls[f"{where} <- {_room(caller)}"] += 1

    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        sf.write(folder / "song.wav", np.random.default_rng(0).uniform(-0.3, 0.3, (44100, 2)), 44100)
        cache = ModelCache(torch.device("cpu"))
        _job(folder, cache, "warm")
        sys.setprofile(profile)
        try:
            _job(folder, cache, "out")
        finally:
            sys.setprofile(None)
    for key in ("paths.py", "outputs.py"):
        print(f"{key}: entered {calls[key]} times from outside it")
        for entry, n in sorted(calls.items()):
            if entry.startswith(f"{key} <- "):
                print(f"  from {entry.split(' <- ')[1]}: {n}")
    print("calls of each function:")
    for key, n in sorted(calls.items()):
        if ":" in key:
            print(f"  {key}: {n}")


if __name__ == "__main__":
    main()
