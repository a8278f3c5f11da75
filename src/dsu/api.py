"""DSU as a Python library: models loaded once and kept in the process, arrays or files in, stems out.

`Separator` separates (every family), `Restorer` restores with Apollo, `Ensemble` blends several
models. They take the fields of the worker's `separate`, `apollo` and `ensemble` requests as keyword
arguments, checked by the same protocol table, and raise `dsu.DSUError` with the protocol's codes.
Arrays run through the same engine passes as files (`dsu.audio.ArraySignal` reads them as a file is
read), so `separate` gives exactly the samples `dsu separate` writes for the same audio."""
from __future__ import annotations

import tempfile
import threading
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import soundfile as sf
import soxr
import torch

from . import protocol
from .audio import ArraySignal, read_audio
from .cache import ModelCache
from .device import choose_device, set_threads
from .errors import DSUError
from .families import LoadedModel, ModelRef
from .jobs import models as model_jobs
from .jobs import restore as restore_job
from .jobs import separate as separate_job
from .jobs._pipeline import runtime_for

__all__ = ["DSUError", "Ensemble", "Restorer", "Separator"]

ProgressCallback = Callable[[float, str], None]  # (fraction 0-1, stage: loading, converting, separating, ...)
MAX_CHANNELS = 64  # more rows than this and few columns: an array given as [samples, channels]

_caches: dict[str, ModelCache] = {}
_caches_lock = threading.Lock()


def _cache(device: torch.device) -> ModelCache:
    """The process' model cache for `device`, shared by every instance (each also holds its own model,
    so eviction never unloads a model an instance still uses)."""
    with _caches_lock:
        return _caches.setdefault(str(device), ModelCache(device, max_models=4))


def _models_dir(models_dir: str | Path | None) -> Path | None:
    if models_dir is not None:
        return Path(models_dir)
    from .catalog import default_models_dir  # where `dsu models download` installs, once it exists
    return default_models_dir() if default_models_dir().is_dir() else None


_SPOKEN = {"separate": "Separator", "apollo": "Restorer", "ensemble": "Ensemble"}


def _checked(command: str, request: dict) -> tuple[dict, dict]:
    """The request's fields and other fields, checked by the protocol table of `command`; its errors
    name the class the caller used rather than the worker command."""
    try:
        return protocol.validate(protocol.COMMANDS[command], {k: v for k, v in request.items() if v is not None})
    except DSUError as e:
        raise DSUError(e.code, e.message.replace(f" of {command} ", f" of {_SPOKEN[command]} ")
                       .replace(f"{command} needs ", f"{_SPOKEN[command]} needs ")) from None


def _frames(audio: Any, what: str = "audio") -> np.ndarray:
    """`audio` ([channels, samples] or [samples], numpy or torch, floating) as float32 [frames, channels]."""
    if isinstance(audio, torch.Tensor):
        audio = audio.detach().cpu().numpy()
    if not isinstance(audio, np.ndarray):
        raise DSUError("bad_value", f"`{what}` must be a numpy array or a torch tensor, not {type(audio).__name__}")
    if not np.issubdtype(audio.dtype, np.floating):
        hint = " (scale integer PCM to [-1, 1] first, e.g. audio / 32768)" if np.issubdtype(audio.dtype, np.integer) \
            else ""
        raise DSUError("bad_value", f"`{what}` must hold floating-point samples, not {audio.dtype}{hint}")
    if audio.ndim == 1:
        audio = audio[None]
    if audio.ndim != 2:
        raise DSUError("bad_value", f"`{what}` must be [channels, samples] or [samples], not shape {audio.shape}")
    if audio.shape[0] > MAX_CHANNELS and audio.shape[1] <= MAX_CHANNELS:
        raise DSUError("bad_value", f"`{what}` has shape {audio.shape}: that looks like [samples, channels]; "
                                    "pass it transposed ([channels, samples], e.g. audio.T)")
    if audio.shape[1] == 0:
        raise DSUError("bad_value", f"`{what}` holds no samples (shape {audio.shape})")
    return np.ascontiguousarray(audio.T, dtype=np.float32)


def _rate(value: Any, name: str, default: int) -> int:
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or not 1000 <= int(value) <= 768000:
        raise DSUError("bad_value", f"`{name}` must be a whole number of Hz from 1000 to 768000, not {value!r}")
    return int(value)


def _resampled(stems: dict[str, np.ndarray], rate: int, to: int) -> dict[str, np.ndarray]:
    if rate == to:
        return stems
    return {k: np.ascontiguousarray(soxr.resample(v.T, rate, to, quality="HQ").T) for k, v in stems.items()}


class _Run:
    """One call's progress and cancel: `progress(fraction, stage)`, a `threading.Event` or the
    instance's `cancel()`."""

    def __init__(self, owner: _Loaded, progress: ProgressCallback | None, cancel: threading.Event | None):
        self.progress = progress or owner.progress
        self.event = cancel or threading.Event()
        owner._running.append(self.event)
        self.owner = owner

    def cancelled(self) -> bool:
        return self.event.is_set()

    def stage(self, name: str) -> Callable[..., None]:
        """The job's progress callback; an ensemble's also names the member running (`member=`)."""
        def report(fraction: float, member: str | None = None, **_: Any) -> None:
            if self.progress:
                self.progress(fraction, f"{name} {member}" if member else name)
        return report

    def emit(self, status: str, **fields) -> None:
        if self.progress and status == "preparing":
            self.progress(0.0, "converting" if fields.get("stage") == "converting" else "preparing")

    def __enter__(self) -> _Run:
        return self

    def __exit__(self, *exc) -> None:
        self.owner._running.remove(self.event)


class _Loaded:
    """What the three classes share: the device, threads, models dir, progress and cancel."""

    def __init__(self, device: str, threads: int | None, models_dir, progress: ProgressCallback | None):
        if not isinstance(device, str):
            raise DSUError("bad_value", f"`device` must be auto, cpu, cuda, cuda:N or mps, not {device!r}")
        self.device, _ = choose_device(device)
        if threads is not None:  # torch's threads are the process' own: the last instance's setting wins
            if isinstance(threads, bool) or not isinstance(threads, int) or threads < 1:
                raise DSUError("bad_value", f"`threads` must be a whole number of at least 1, not {threads!r}")
            set_threads(threads)
        self.models_dir = _models_dir(models_dir)
        self.progress = progress
        self._running: list[threading.Event] = []

    def cancel(self) -> None:
        """Stop what this instance is running (from any thread): the call raises DSUError `cancelled`."""
        for event in list(self._running):
            event.set()

    def _load(self, ref: ModelRef) -> LoadedModel:
        if self.progress:
            self.progress(0.0, "loading")
        model, _ = model_jobs.load(ref, _cache(self.device), lambda *a, **k: None)
        return model


class Separator(_Loaded):
    """A separation model kept loaded: `model` (a name from the models dir or the catalog) or
    `model_path` (+ `config_path`), as `dsu separate` takes them; `options` are the family options
    (`shifts`, `overlap`, `batch_size`, `backend`, `precision`, ...) of the `separate` request."""

    def __init__(self, model: str | None = None, *, model_path: str | Path | None = None,
                 config_path: str | Path | None = None, models_dir: str | Path | None = None,
                 device: str = "auto", threads: int | None = None, progress: ProgressCallback | None = None,
                 **options: Any):
        super().__init__(device, threads, models_dir, progress)
        if model is None and model_path is None:
            raise DSUError("missing_field", "give `model` (a name: `dsu models list`) or `model_path` (a file)")
        naming = {"model": model, "model_path": None if model_path is None else str(model_path),
                  "config_path": None if config_path is None else str(config_path)}
        fields, extra = _checked("separate", {"cmd": "separate", "input": "-", "output_dir": "-", **naming,
                                              **options})
        self._request = {k: v for k, v in {**naming, **options}.items() if v is not None}
        self.ref = model_jobs.resolve(fields, self.models_dir)
        self.model = self._load(self.ref)
        self.options, ignored = model_jobs.family_options(self.model, extra)
        if ignored:
            raise DSUError("bad_value", f"{', '.join(ignored)}: not an option of {self.ref.family} models; "
                                        f"options: {', '.join(sorted(self.model.options)) or 'none'}")
        self._runtime = runtime_for(self.model, self.options, self.models_dir)

    @property
    def name(self) -> str:
        return self.ref.name

    @property
    def stems(self) -> list[str]:
        return self.model.output_stems(**self.options)

    @property
    def samplerate(self) -> int:
        return self.model.samplerate

    def separate(self, audio: Any, sample_rate: int | None = None, *, stems: Sequence[str] | str | None = None,
                 two_stems: str | None = None, output_sample_rate: int | str = "model", sanitize: bool = False,
                 progress: ProgressCallback | None = None,
                 cancel: threading.Event | None = None) -> dict[str, np.ndarray]:
        """The stems of `audio` ([channels, samples] or [samples], float, at `sample_rate`, default the
        model's) as stem -> float32 [channels, samples], at the model's rate or, with
        `output_sample_rate="input"` (or a number), resampled to that one."""
        frames = _frames(audio)
        rate = _rate(sample_rate, "sample_rate", self.model.samplerate)
        out_rate = rate if output_sample_rate == "input" else \
            _rate(None if output_sample_rate == "model" else output_sample_rate, "output_sample_rate",
                  self.model.samplerate)
        _checked("separate", {"cmd": "separate", "input": "-", "output_dir": "-", "stems": stems,
                              "two_stems": two_stems, "sanitize": sanitize})
        with _Run(self, progress, cancel) as run:
            signal = ArraySignal(frames, rate, self.model.samplerate, self.model.audio_channels, sanitize=sanitize)
            tensors, _ = separate_job.separate_signal(self.model, signal, stems=stems, two_stems=two_stems,
                                                      options=self.options, progress=run.stage("separating"),
                                                      cancelled=run.cancelled, runtime=self._runtime)
        return _resampled({k: v.numpy() for k, v in tensors.items()}, self.model.samplerate, out_rate)

    def separate_file(self, path: str | Path, output_dir: str | Path, *, layout: str | None = None,
                      format: str = "wav", bit_depth: int | None = None, progress: ProgressCallback | None = None,
                      cancel: threading.Event | None = None, **fields: Any) -> list[Path]:
        """The files `dsu separate` writes for `path` under `output_dir`; `fields` are the other fields of
        a `separate` request (`stems`, `two_stems`, `sample_rate`, `output_names`, `mp3_bitrate`, ...)."""
        request = {"cmd": "separate", **self._request, "input": str(path), "output_dir": str(output_dir),
                   "layout": layout, "format": format, "bit_depth": bit_depth, **fields}
        checked, extra = _checked("separate", request)
        with _Run(self, progress, cancel) as run:
            done = separate_job.run(checked, extra, cache=_cache(self.device), models_dir=self.models_dir,
                                    default_model=None, emit=run.emit, progress=run.stage("separating"),
                                    cancelled=run.cancelled)
        return [Path(p) for p in done["paths"]]


class Restorer(_Loaded):
    """An Apollo restoration model kept loaded: `model` (a catalog name) or `model_path` (+ `config_path`);
    `arch` the shape fields of the `apollo` request for a checkpoint without its config."""

    def __init__(self, model: str | None = None, *, model_path: str | Path | None = None,
                 config_path: str | Path | None = None, models_dir: str | Path | None = None,
                 device: str = "auto", threads: int | None = None, progress: ProgressCallback | None = None,
                 backend: str | None = None, precision: str | None = None, **arch: Any):
        super().__init__(device, threads, models_dir, progress)
        naming = {"model": model, "model_path": None if model_path is None else str(model_path),
                  "config_path": None if config_path is None else str(config_path)}
        fields, extra = _checked("apollo", {"cmd": "apollo", "input": "-", "output": "-", **naming,
                                            "backend": backend, "precision": precision, **arch})
        if extra:
            raise DSUError("bad_value", f"{', '.join(sorted(extra))}: not a field of `apollo`")
        self._request = {k: v for k, v in {**naming, "backend": backend, "precision": precision, **arch}.items()
                         if v is not None}
        checkpoint, config = model_jobs.apollo_files(fields, self.models_dir)
        from . import families
        self.ref = families.resolve({"model_path": checkpoint, "config_path": config, "model_type": "apollo",
                                     **{k: fields[k] for k in model_jobs.APOLLO_KEYS if k in fields}},
                                    self.models_dir)
        self.model = self._load(self.ref)
        self._runtime = runtime_for(self.model, fields, self.models_dir)

    @property
    def samplerate(self) -> int:
        return self.model.samplerate

    def restore(self, audio: Any, sample_rate: int | None = None, *, chunk_seconds: float | None = None,
                overlap_seconds: float | None = None, sanitize: bool = False,
                progress: ProgressCallback | None = None, cancel: threading.Event | None = None) -> np.ndarray:
        """`audio` restored: float32 [channels, samples] at the model's rate (each channel on its own)."""
        frames = _frames(audio)
        rate = _rate(sample_rate, "sample_rate", self.model.samplerate)
        tuning, _ = _checked("apollo", {"cmd": "apollo", "input": "-", "output": "-",
                                        "chunk_seconds": chunk_seconds, "overlap_seconds": overlap_seconds})
        with _Run(self, progress, cancel) as run:
            signal = ArraySignal(frames, rate, self.model.samplerate, sanitize=sanitize)
            out, _ = restore_job.restore_signal(self.model, signal, chunk_seconds=tuning.get("chunk_seconds"),
                                                overlap_seconds=tuning.get("overlap_seconds"),
                                                progress=run.stage("restoring"), cancelled=run.cancelled,
                                                runtime=self._runtime)
        return out.numpy()

    def restore_file(self, path: str | Path, output: str | Path, *, progress: ProgressCallback | None = None,
                     cancel: threading.Event | None = None, **fields: Any) -> Path:
        """The file `dsu restore` writes for `path` at `output`; `fields`: the `apollo` request's others."""
        checked, _ = _checked("apollo", {"cmd": "apollo", **self._request, "input": str(path),
                                         "output": str(output), **fields})
        with _Run(self, progress, cancel) as run:
            done = restore_job.run(checked, cache=_cache(self.device), models_dir=self.models_dir, emit=run.emit,
                                   progress=run.stage("restoring"), cancelled=run.cancelled)
        return Path(done["paths"][0])


class Ensemble(_Loaded):
    """Several models blended, as the worker's `ensemble` request: `models` (names or requests such as
    `{"model": "htdemucs", "shifts": 2}`) or `preset`, with `algorithm`, `weights` and family options
    for every member. Members load on first use and stay in the process' cache."""

    def __init__(self, models: Sequence[str | Mapping[str, Any]] | None = None, *, preset: str | None = None,
                 algorithm: str | None = None, weights: Sequence[float] | None = None,
                 models_dir: str | Path | None = None, device: str = "auto", threads: int | None = None,
                 progress: ProgressCallback | None = None, **options: Any):
        super().__init__(device, threads, models_dir, progress)
        members = None if models is None else [{"model": m} if isinstance(m, str) else dict(m) for m in models]
        self._request = {k: v for k, v in {"models": members, "preset": preset, "algorithm": algorithm,
                                           "weights": None if weights is None else list(weights),
                                           **options}.items() if v is not None}
        _checked("ensemble", {"cmd": "ensemble", **self._request})

    def separate_file(self, path: str | Path, output_dir: str | Path, *, progress: ProgressCallback | None = None,
                      cancel: threading.Event | None = None, **fields: Any) -> list[Path]:
        """The blended stems of `path` written under `output_dir`, as the worker's `ensemble` writes them."""
        from .jobs import ensemble as ensemble_job
        checked, extra = _checked("ensemble", {"cmd": "ensemble", **self._request, "input": str(path),
                                               "output_dir": str(output_dir), **fields})
        with _Run(self, progress, cancel) as run:
            done = ensemble_job.ensemble(checked, extra, cache=_cache(self.device), models_dir=self.models_dir,
                                         emit=run.emit, progress=run.stage("separating"),
                                         cancelled=run.cancelled)
        return [Path(p) for p in done["paths"]]

    def separate(self, audio: Any, sample_rate: int, *, progress: ProgressCallback | None = None,
                 cancel: threading.Event | None = None, **fields: Any) -> dict[str, np.ndarray]:
        """The blended stems of `audio` (at `sample_rate`) as stem -> float32 [channels, samples] at the
        members' rate. The members read files, so the array goes through a float32 WAV (exact) in a
        temporary folder."""
        frames = _frames(audio)
        rate = _rate(sample_rate, "sample_rate", 44100)
        with tempfile.TemporaryDirectory(prefix=".dsu-api-") as tmp:
            source = Path(tmp) / "audio.wav"
            sf.write(source, frames, rate, subtype="FLOAT")
            written = self.separate_file(source, Path(tmp) / "out", layout="{stem}.{ext}", format="wav",
                                         bit_depth=32, progress=progress, cancel=cancel, **fields)
            return {p.stem: read_audio(p)[0].numpy() for p in written}
