"""Noise reduction against a recorded noise profile, with no model: envelope-matched spectral
subtraction, the method of the previous DSU's `dsu-denoise`.

The noise is taken to follow the music's loudness (hiss or hum that a compander, a tape or an amp
pumps with the signal). Its spectrum is the profile's mean STFT magnitude; in each frame of the
input it is scaled by the input's level over the profile's level (the level smoothed by an
attack/release follower, held down over transients so attacks keep their noise reduction) and
subtracted, `subtraction_factor` times, from the frame's magnitude, never below FLOOR of it; the
phase is kept. Each channel follows its own level.

Two streamed passes over the input: its level per frame (a few floats per frame), then the STFT,
overlap-added and written block by block, so memory does not grow with the file's length."""
from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from .. import paths
from ..audio import FileSignal, StemWriter, output_format
from ._pipeline import Cancelled as CancelCheck
from ._pipeline import Emit, JobResult, Progress, clean_debris, result_fields, write_all
from .failures import stop_if_cancelled

N_FFT, HOP = 2048, 512
LEVEL_SECONDS = 0.05      # the window a frame's level is measured over
HOLD_SECONDS = 0.05       # how long a transient keeps the level from rising
TRANSIENT_RISE = 2.0      # a rise larger than this many standard deviations of the rises is a transient
TRANSIENT_CAP = 1.5       # during one, the level stays below this times the level before it
SCALE_LIMITS = (0.1, 10.0)
FLOOR = 0.05              # the least of a bin's magnitude kept: no bin is emptied (fewer "musical" tones)
BLOCK_FRAMES = 256
RELEASE_SECONDS = {"default": 0.1, "drums": 0.3, "slow": 0.5}  # `mode` presets: drums/slow pump less
SUFFIX = "_denoised"
METHOD = "envelope_matched"  # the model name the previous DSU's dsu-denoise answered load_model with
STEM = "denoised"


def default_output(input_path: str | Path) -> Path:
    """`<input_dir>/<base>_denoised.wav`, as the previous DSU named it."""
    path = Path(input_path)
    return path.parent / f"{path.stem}{SUFFIX}.wav"


def _frame_count(length: int) -> int:
    return 1 + length // HOP  # frames centred on every HOP-th sample, the last within the signal


def _frames(signal: FileSignal, first: int, count: int, size: int) -> np.ndarray:
    """[channels, count, size]: windows of `size` samples centred on frames first..first+count-1
    (zeros past the signal's ends)."""
    start = first * HOP - size // 2
    block = signal.read(start, start + (count - 1) * HOP + size).numpy()
    return np.lib.stride_tricks.sliding_window_view(block, size, axis=-1)[:, ::HOP][:, :count]


def _blocks(signal: FileSignal, size: int, cancelled, progress, span: tuple[float, float]):
    """(first frame, frames [channels, n, size]) over the whole signal, forgetting what is done."""
    total = _frame_count(signal.length)
    for first in range(0, total, BLOCK_FRAMES):
        stop_if_cancelled(cancelled)
        count = min(BLOCK_FRAMES, total - first)
        yield first, _frames(signal, first, count, size)
        signal.forget((first + count) * HOP - size // 2)
        if progress is not None:
            progress(span[0] + (span[1] - span[0]) * (first + count) / total)


def _levels(signal: FileSignal, cancelled=None, progress=None, span=(0.0, 0.0)) -> np.ndarray:
    """[channels, frames]: each frame's RMS over LEVEL_SECONDS."""
    size = max(1, round(LEVEL_SECONDS * signal.samplerate))
    return np.concatenate([np.sqrt(np.mean(np.square(frames, dtype=np.float64), axis=-1))
                           for _, frames in _blocks(signal, size, cancelled, progress, span)], axis=1)


def _window() -> np.ndarray:
    return (0.5 - 0.5 * np.cos(2 * np.pi * np.arange(N_FFT) / N_FFT)).astype(np.float32)  # periodic Hann


def noise_profile(signal: FileSignal) -> tuple[np.ndarray, float]:
    """(the noise's mean STFT magnitude per bin, its mean frame level), of a mono signal."""
    window, total, levels = _window(), np.zeros(N_FFT // 2 + 1), []
    for _, block in _blocks(signal, N_FFT, None, None, (0, 0)):
        total += np.abs(np.fft.rfft(block[0] * window, axis=-1)).sum(axis=0)
        levels.append(np.sqrt(np.mean(np.square(block[0], dtype=np.float64), axis=-1)))
    frame_levels = np.concatenate(levels)
    return total / len(frame_levels), float(frame_levels.mean())


def follow(levels: np.ndarray, rate: float, attack: float, release: float) -> np.ndarray:
    """`levels` [channels, frames] through an attack/release follower (one-pole, time constants in
    seconds at `rate` frames a second), held down over transients."""
    rise, fall = (np.exp(-1.0 / max(t * rate, 1e-9)) for t in (attack, release))
    hold = max(1, round(HOLD_SECONDS * rate))
    out = np.empty_like(levels)
    for c, raw in enumerate(levels):
        steps = np.diff(raw, prepend=raw[:1])
        onsets = steps > TRANSIENT_RISE * steps.std()
        held = np.convolve(onsets, np.ones(hold), mode="full")[:len(raw)] > 0  # each onset and `hold` after
        level, cap = float(raw[0]), None
        for i, x in enumerate(raw):
            keep = rise if x > level else fall
            before = level
            level = keep * level + (1 - keep) * float(x)
            if held[i]:
                cap = TRANSIENT_CAP * before if cap is None else cap
                out[c, i] = min(level, cap)
            else:
                cap = None
                out[c, i] = level
    return out


def _subtract(frames: np.ndarray, noise: np.ndarray, scale: np.ndarray, factor: float,
              window: np.ndarray) -> np.ndarray:
    """Windowed, denoised frames [channels, n, N_FFT] ready to overlap-add."""
    spectrum = np.fft.rfft(frames * window, axis=-1)
    magnitude = np.abs(spectrum)
    estimate = factor * noise[None, None, :] * scale[:, :, None]
    gain = np.maximum(1.0 - np.divide(estimate, magnitude, out=np.ones_like(magnitude), where=magnitude > 0), FLOOR)
    return np.fft.irfft(spectrum * gain, n=N_FFT, axis=-1).astype(np.float32) * window


def denoise_file(input_path: str | Path, noise_path: str | Path, output_path: str | Path | None = None, *,
                 subtraction_factor: float = 0.9, attack_time: float = 0.01, release_time: float | None = None,
                 mode: str = "default", bit_depth: int = 16, progress: Progress | None = None,
                 cancelled: Callable[[], bool] | None = None) -> JobResult:
    started = time.perf_counter()
    input_path = paths.check_input(input_path)
    noise_path = paths.check_input(noise_path, "noise_profile")
    output_path = paths.check_output_file(output_path or default_output(input_path))
    output_path = output_path.parent / paths.safe_component(output_path.name)
    paths.check_not_input(output_path, {input_path: "the `input`", noise_path: "the `noise_profile`"})
    fmt = output_format(output_path, None)
    release = RELEASE_SECONDS[mode] if release_time is None else release_time
    signal = FileSignal(input_path, checked=True)
    noise_signal = FileSignal(noise_path, signal.samplerate, channels=1, checked=True)
    try:
        noise, noise_level = noise_profile(noise_signal)
        clean_debris([output_path.parent])
        levels = follow(_levels(signal.fresh(), cancelled, progress, (0.0, 0.2)), signal.samplerate / HOP,
                        attack_time, release)
        scale = np.clip(levels / max(noise_level, 1e-10), *SCALE_LIMITS)
        writer = StemWriter({STEM: output_path}, signal.samplerate, signal.channels, fmt, bit_depth)
        write_all(writer, lambda: _overlap_add(signal, noise, scale, subtraction_factor, writer, cancelled, progress),
                  lower="nothing: the denoiser holds only a few blocks")
    finally:
        signal.close()
        noise_signal.close()
    warnings = [*signal.warnings, *noise_signal.warnings]
    if noise_level <= 0:
        warnings.append(f"the noise profile {noise_path.name} is silent: nothing was subtracted")
    return JobResult(output_dir=str(output_path.parent.resolve()), files=[output_path.name],
                     paths=[str(output_path.resolve())], stems=[STEM], elapsed=time.perf_counter() - started,
                     samplerate=signal.samplerate, extra={"warnings": warnings} if warnings else {})


def _overlap_add(signal: FileSignal, noise: np.ndarray, scale: np.ndarray, factor: float, writer: StemWriter,
                 cancelled, progress) -> None:
    """The STFT pass: each block of frames denoised, overlap-added, and every sample no later frame
    touches written out."""
    window = _window()
    total, length = _frame_count(signal.length), signal.length
    base, written = -(N_FFT // 2), 0  # timeline position of acc[:, 0]; samples written so far
    acc = np.zeros((signal.channels, 0), np.float32)
    norm = np.zeros(0, np.float32)
    for first, frames in _blocks(signal, N_FFT, cancelled, progress, (0.2, 1.0)):
        count = frames.shape[1]
        out = _subtract(frames, noise, scale[:, first:first + count], factor, window)
        end = (first + count - 1) * HOP + N_FFT - N_FFT // 2 - base
        if end > acc.shape[1]:
            acc = np.pad(acc, ((0, 0), (0, end - acc.shape[1])))
            norm = np.pad(norm, (0, end - norm.shape[0]))
        for j in range(count):
            at = (first + j) * HOP - N_FFT // 2 - base
            acc[:, at:at + N_FFT] += out[:, j]
            norm[at:at + N_FFT] += window * window
        done_to = length if first + count == total else (first + count) * HOP - N_FFT // 2  # final samples
        stop = done_to - base
        lo = written - base
        if stop > lo:
            block = acc[:, lo:stop] / np.maximum(norm[lo:stop], 1e-8)
            writer.write({STEM: torch.from_numpy(np.ascontiguousarray(block))})
            written = done_to
        acc, norm, base = acc[:, stop:], norm[stop:], base + stop


def run(fields: dict, *, emit: Emit, progress: Progress | None = None,
            cancelled: CancelCheck | None = None) -> dict:
    started = time.perf_counter()
    emit("denoising", input=fields["input"])
    result = denoise_file(fields["input"], fields["noise_profile"], fields.get("output"),
                          subtraction_factor=fields["subtraction_factor"], attack_time=fields["attack_time"],
                          release_time=fields.get("release_time"), mode=fields["mode"],
                          bit_depth=fields["bit_depth"], progress=progress, cancelled=cancelled)
    return result_fields(result, started)


def describe() -> dict:
    """The denoiser as `load_model` describes a model: it needs no file and is always loaded."""
    return {"model": METHOD, "family": "denoise", "stems": [STEM], "cached": True}
