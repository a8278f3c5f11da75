"""`dsu eval`'s work: every system (a model, an ensemble, an oracle) over every track, each separated
once into the cache folder through the Python library, then scored block by block against the
reference stems. A track's separation and its scores are kept in the cache folder with what they
depend on, so an interrupted evaluation goes on where it stopped."""
from __future__ import annotations

import json
import statistics
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .. import paths, tempfiles, untrusted
from ..api import Ensemble, Separator
from ..audio import FileSignal
from ..errors import DSUError
from ..jobs.ensemble import canonical_stem
from .metrics import DEFAULT, TrackScore, check_metrics
from .oracles import ORACLES, Oracle
from .tracks import Track, find

BLOCK = 1 << 16  # frames scored at a time
ENTRY = "entry.json"    # a finished separation: what it was made of and its files
SCORES = "scores.json"  # a track's scores, with what they depend on
Report = Callable[[str, str, str], None]  # (system, track, what happened)


@dataclass
class System:
    """What is scored: `kind` model (`spec` the Separator's arguments), ensemble (the Ensemble's) or
    oracle (`spec` its name)."""
    name: str
    kind: str
    spec: dict
    _runner: Any = field(default=None, repr=False)

    def load(self, models_dir: Path | None, device: str) -> None:
        """The model (an ensemble: its fields) checked and loaded once, before any track."""
        if self.kind != "oracle" and self._runner is None:
            kind = Separator if self.kind == "model" else Ensemble
            self._runner = kind(**self.spec, models_dir=models_dir, device=device)

    def separate(self, track: Track, folder: Path) -> dict[str, Path]:
        assert track.mixture is not None and self._runner is not None
        extra = {"sample_rate": "input"} if self.kind == "model" else {}
        written = self._runner.separate_file(track.mixture, folder, layout="{stem}.{ext}", format="wav",
                                             bit_depth=32, **extra)
        return {p.stem: p for p in written}


def systems(models: Sequence[str] = (), ensembles: Sequence[str] = (), oracles: Sequence[str] = (),
            options: dict | None = None, algorithm: str | None = None) -> list[System]:
    """The systems named on the command line: `ensembles` as `A,B[,C...]` (their members' names)."""
    out = [System(m, "model", {"model": m, **(options or {})}) for m in models]
    for spec in ensembles:
        members = [m.strip() for m in spec.split(",") if m.strip()]
        if len(members) < 2:
            raise DSUError("bad_value", f"`ensemble` {spec!r}: name at least two models, separated by commas")
        out.append(System("ensemble(" + "+".join(members) + ")", "ensemble",
                          {"models": [{"model": m} for m in members], "algorithm": algorithm, **(options or {})}))
    for name in oracles:
        if name not in ORACLES:
            raise DSUError("bad_value", f"unknown oracle {name!r}; choose from {', '.join(ORACLES)}")
        out.append(System(name, "oracle", {"oracle": name}))
    if not out:
        raise DSUError("missing_field", "nothing to evaluate: name a `model`, an `ensemble` or an `oracle`")
    return out


def _pairs(track: Track, estimates: dict[str, Path]) -> tuple[dict[str, tuple[list[Path], Path]], list[str]]:
    """stem -> (the reference files summed, the estimate file), and the references no estimate matches.
    Names match as ensembles match them, and results use the matched name (lower case, `instrumental`
    for `inst`, `no_vocals`, `accompaniment`...), so that every model's rows meet; a two-stem model's
    instrumental is scored against the sum of every reference stem but the vocals, as the corpus
    README scores accompaniment."""
    produced = list(estimates)
    by_name = {canonical_stem(s, produced): p for s, p in estimates.items()}
    refs = {canonical_stem(s, list(track.stems)): (s, p) for s, p in track.stems.items()}
    pairs = {key: ([path], by_name[key]) for key, (_, path) in refs.items() if key in by_name}
    if "instrumental" in by_name and "instrumental" not in refs and "vocals" in refs:
        pairs["instrumental"] = ([p for k, (_, p) in refs.items() if k != "vocals"], by_name["instrumental"])
    skipped = [stem for key, (stem, _) in refs.items() if key not in by_name]
    return pairs, skipped


def _score_files(track: Track, pairs: dict[str, tuple[list[Path], Path]], metrics: Sequence[str]) -> dict:
    """The metrics of each pair, every file read once, block by block."""
    assert track.mixture is not None
    rate, channels, length = track.samplerate, track.channels, track.frames
    needed = sorted({p for refs, _ in pairs.values() for p in refs} | {track.mixture}, key=str)
    signals = {p: FileSignal(p, rate, channels) for p in needed}
    estimates = {stem: FileSignal(est, rate, channels) for stem, (_, est) in pairs.items()}
    score = TrackScore(list(pairs), metrics, rate, channels, length)
    try:
        for pos in range(0, length, BLOCK):
            stop = min(length, pos + BLOCK)
            read = {p: s.read(pos, stop).numpy() for p, s in signals.items()}
            refs = {stem: sum(read[p] for p in files) for stem, (files, _) in pairs.items()}
            ests = {stem: s.read(pos, stop).numpy() for stem, s in estimates.items()}
            for s in [*signals.values(), *estimates.values()]:
                s.forget(stop)
            score.push({k: np.asarray(v, np.float32) for k, v in refs.items()}, ests, read[track.mixture])
    finally:
        for s in [*signals.values(), *estimates.values()]:
            s.close()
    return score.result()


def _score_oracle(track: Track, name: str, metrics: Sequence[str]) -> dict:
    """An oracle's estimates made from the references as they are read, and scored as they come."""
    assert track.mixture is not None
    rate, channels, length = track.samplerate, track.channels, track.frames
    stems = list(track.stems)
    signals = {s: FileSignal(p, rate, channels) for s, p in track.stems.items()}
    mixture = FileSignal(track.mixture, rate, channels)
    oracle = Oracle(name, stems, channels, length)
    score = TrackScore(stems, metrics, rate, channels, length)
    held: dict[str, np.ndarray] = {s: np.zeros((channels, 0), np.float32) for s in [*stems, "mixture"]}

    def take(estimates: dict[str, np.ndarray]) -> None:  # the references waiting for their estimates
        n = next(iter(estimates.values())).shape[-1]
        if n:
            score.push({s: held[s][:, :n] for s in stems}, estimates, held["mixture"][:, :n])
            for s in held:
                held[s] = held[s][:, n:]
    try:
        for pos in range(0, length, BLOCK):
            stop = min(length, pos + BLOCK)
            refs = {s: sig.read(pos, stop).numpy() for s, sig in signals.items()}
            mix = mixture.read(pos, stop).numpy()
            for s, sig in [*signals.items(), ("mixture", mixture)]:
                sig.forget(stop)
                held[s] = np.concatenate([held[s], mix if s == "mixture" else refs[s]], -1)
            take(oracle.push(mix, refs))
        take(oracle.finish())
    finally:
        for sig in [*signals.values(), mixture]:
            sig.close()
    return {canonical_stem(s, stems): v for s, v in score.result().items()}  # the names models' rows use


def _read_json(path: Path) -> dict | None:
    """A cache record read as every untrusted JSON file is (size, depth); None when absent or unreadable,
    so the work it would have saved is done again."""
    if not path.is_file():
        return None
    try:
        data = untrusted.read_json(path, "an evaluation cache record")
    except (DSUError, OSError):
        return None
    return data if isinstance(data, dict) else None


def _cached_files(entry: dict, folder: Path) -> dict[str, Path] | None:
    """The stem files a separation record names, when each is a plain file name in `folder` that exists."""
    files = entry.get("files")
    if not isinstance(files, dict) or not files or \
            not all(isinstance(n, str) and n and Path(n).name == n for n in files.values()):
        return None
    found = {str(stem): folder / name for stem, name in files.items()}
    return found if all(p.is_file() for p in found.values()) else None


def _cached_scores(record: dict, metrics: Sequence[str]) -> dict | None:
    """A scores record's scores when they are stem -> every metric -> a number, else None."""
    scores = record.get("scores")
    if not isinstance(scores, dict) or not all(
            isinstance(by, dict) and set(by) == set(metrics)
            and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in by.values())
            for by in scores.values()):
        return None
    skipped = record.get("skipped", [])
    return scores if isinstance(skipped, list) and all(isinstance(x, str) for x in skipped) else None


def _write_json(path: Path, data: dict) -> None:
    """Written under a partial name and renamed, so a killed evaluation leaves no half a record."""
    partial = tempfiles.temp_name(path)
    partial.write_text(json.dumps(data, indent=1))
    tempfiles.commit({partial: path})


def _estimates(system: System, track: Track, folder: Path, report: Report) -> dict[str, Path]:
    """The system's stems of `track`, from the cache when a finished separation of this mixture is there."""
    key = {"system": system.spec, "track": track.key()}
    entry = _read_json(folder / ENTRY)
    files = _cached_files(entry, folder) if entry and entry.get("key") == key else None
    if files:
        report(system.name, track.name, "cached separation")
        return files
    report(system.name, track.name, "separating")
    files = system.separate(track, folder)
    _write_json(folder / ENTRY, {"key": key, "files": {stem: p.name for stem, p in files.items()}})
    return files


def _track(system: System, track: Track, metrics: Sequence[str], cache_dir: Path, report: Report) -> dict:
    """{"scores": stem -> metric -> value, "skipped": [...]}, from the cache when nothing changed."""
    folder = cache_dir / paths.safe_component(system.name) / paths.safe_component(track.name)
    key = {"system": system.spec, "track": track.key(), "metrics": list(metrics)}
    cached = _read_json(folder / SCORES)
    if cached and cached.get("key") == key and _cached_scores(cached, metrics) is not None:
        report(system.name, track.name, "cached scores")
        return {"scores": cached["scores"], "skipped": cached.get("skipped", [])}
    if system.kind == "oracle":
        report(system.name, track.name, "scoring")
        scores, skipped = _score_oracle(track, system.spec["oracle"], metrics), list[str]()
    else:
        pairs, skipped = _pairs(track, _estimates(system, track, folder, report))
        if not pairs:
            raise DSUError("bad_value", f"track {track.name}: {system.name} makes none of its stems "
                                        f"({', '.join(track.stems)})")
        report(system.name, track.name, "scoring")
        scores = _score_files(track, pairs, metrics)
    folder.mkdir(parents=True, exist_ok=True)
    _write_json(folder / SCORES, {"key": key, "scores": scores, "skipped": skipped})
    return {"scores": scores, "skipped": skipped}


def summary(tracks: dict[str, dict]) -> dict:
    """stem -> metric -> mean, median, std (population) and the number of tracks, over the tracks scored."""
    values: dict[str, dict[str, list[float]]] = {}
    for scores in tracks.values():
        for stem, by_metric in scores.items():
            for metric, v in by_metric.items():
                if v is not None and np.isfinite(v):
                    values.setdefault(stem, {}).setdefault(metric, []).append(float(v))
    return {stem: {m: {"mean": statistics.fmean(vs), "median": statistics.median(vs),
                       "std": statistics.pstdev(vs), "tracks": len(vs)} for m, vs in by_metric.items()}
            for stem, by_metric in values.items()}


def evaluate(dirs: Sequence[str | Path], chosen: list[System], *, cache_dir: str | Path,
             metrics: Sequence[str] = DEFAULT, models_dir: str | Path | None = None, device: str = "auto",
             report: Report | None = None) -> dict:
    """The evaluation's results: per system, per track, per stem, each metric; its summary; errors
    per track (a track that fails is reported and the others go on)."""
    metrics = check_metrics(metrics)
    cache = paths.check_output_dir(cache_dir)
    report = report or (lambda system, track, what: None)
    tracks = find(list(dirs))
    out: dict[str, Any] = {"metrics": list(metrics), "tracks": [t.name for t in tracks], "systems": {}}
    for system in chosen:
        system.load(None if models_dir is None else Path(models_dir), device)  # a wrong model fails the run
        done: dict[str, dict] = {}
        errors: dict[str, str] = {}
        skipped: dict[str, list[str]] = {}
        for track in tracks:
            if track.error:
                errors[track.name] = track.error
                continue
            try:
                result = _track(system, track, metrics, cache, report)
            except DSUError as e:
                errors[track.name] = f"{e.code}: {e.message}"
                report(system.name, track.name, f"error: {e.message}")
                continue
            done[track.name] = result["scores"]
            if result["skipped"]:
                skipped[track.name] = result["skipped"]
        system._runner = None  # done with it: the process cache may let its model go for the next system
        out["systems"][system.name] = {"kind": system.kind, "tracks": done, "summary": summary(done),
                                       "errors": errors, "skipped": skipped}
    return out
