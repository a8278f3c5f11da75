"""Signals the engine reads: a tensor in memory, and views over another signal (mirror padding,
standardising, a constant gain), plus streamed statistics families need before they cut a signal.
A view has `inner` and `inner_position(pos)`, so the engine can tell the one underlying source what
no pass will read again."""
from __future__ import annotations

from collections.abc import Iterator
from typing import Protocol

import numpy as np
import torch
from torch import Tensor

BLOCK = 1 << 18  # samples per read of a whole-signal scan (iter_blocks)


class Signal(Protocol):
    channels: int
    length: int

    def read(self, start: int, stop: int) -> Tensor:
        """Samples [start, stop) as float32 [channels, stop - start]; zeros outside [0, length)."""

    def forget(self, before: int) -> None:
        """Samples before `before` will not be read again (lets a streaming source drop them)."""


class TensorSignal:
    """A signal held in memory."""

    def __init__(self, audio: Tensor):
        self.audio = audio
        self.channels, self.length = audio.shape

    def read(self, start: int, stop: int) -> Tensor:
        if start >= 0 and stop <= self.length:
            return self.audio[:, start:stop]
        out = self.audio.new_zeros(self.channels, stop - start)
        lo, hi = max(start, 0), min(stop, self.length)
        if lo < hi:
            out[:, lo - start:hi - start] = self.audio[:, lo:hi]
        return out

    def forget(self, before: int) -> None:
        pass


class ReflectPad:
    """`inner` mirrored `pad` samples out at both ends, like numpy/torch 'reflect' padding.

    Coordinates are those of the padded signal: sample 0 is inner sample -pad."""

    def __init__(self, inner: Signal, pad: int):
        if pad >= inner.length:
            raise ValueError(f"reflect padding {pad} needs a signal longer than {pad} samples")
        self.inner, self.pad = inner, pad
        self.channels, self.length = inner.channels, inner.length + 2 * pad

    def read(self, start: int, stop: int) -> Tensor:
        n = self.inner.length
        if start >= self.pad and stop <= self.pad + n:  # no mirrored part: most chunks of a long file
            return self.inner.read(start - self.pad, stop - self.pad)
        pos = torch.arange(start, stop)
        j = (pos - self.pad).abs()                       # mirror about inner sample 0
        j = torch.where(j > n - 1, 2 * (n - 1) - j, j)   # and about inner sample n-1
        inside = (pos >= 0) & (pos < self.length)
        if not inside.any():
            return torch.zeros(self.channels, stop - start)
        lo, hi = int(j[inside].min()), int(j[inside].max()) + 1
        out = self.inner.read(lo, hi)[:, j.clamp(lo, hi - 1) - lo]
        return out * inside.to(out.dtype)

    def inner_position(self, pos: int) -> int:
        """The first inner sample a read from `pos` on may touch (the mirrored tail reaches back to
        n - 1 - pad)."""
        return max(0, min(pos - self.pad, self.inner.length - 1 - self.pad))

    def forget(self, before: int) -> None:
        self.inner.forget(self.inner_position(before))


class Standardised:
    """`inner` as (x - mean) / std, zeros outside the signal: models trained on normalised mixes
    (Demucs, MSST's `inference.normalize`) normalise first, then pad."""

    def __init__(self, inner: Signal, mean: float, std: float):
        self.inner, self.mean, self.std = inner, mean, std
        self.channels, self.length = inner.channels, inner.length

    def read(self, start: int, stop: int) -> Tensor:
        x = (self.inner.read(start, stop) - self.mean) / self.std
        if start < 0 or stop > self.length:
            pos = torch.arange(start, stop)
            x = x * ((pos >= 0) & (pos < self.length)).to(x.dtype)
        return x

    def inner_position(self, pos: int) -> int:
        return pos

    def forget(self, before: int) -> None:
        self.inner.forget(before)


class Scaled:
    """`inner` times a constant gain: the mix as the reference normalises it before demixing."""

    def __init__(self, inner: Signal, gain: float):
        self.inner, self.gain = inner, np.float32(gain)  # numpy scales a float32 mix by a float32 gain
        self.channels, self.length = inner.channels, inner.length

    def read(self, start: int, stop: int) -> Tensor:
        return self.inner.read(start, stop) * float(self.gain)

    def inner_position(self, pos: int) -> int:
        return pos

    def forget(self, before: int) -> None:
        self.inner.forget(before)


def iter_blocks(signal, size: int = BLOCK) -> Iterator[Tensor]:
    """The whole signal in order, block by block, without disturbing `signal` itself."""
    reader = signal.fresh() if hasattr(signal, "fresh") else signal
    for pos in range(0, signal.length, size):
        yield reader.read(pos, min(pos + size, signal.length))
        reader.forget(pos + size)


def mono_stats(signal, ddof: int = 0) -> tuple[float, float]:
    """Mean and standard deviation (divided by n - ddof) of the signal averaged to mono, in float64,
    streamed block by block (blocks merged with Chan's formula, as exact as one pass over all)."""
    n, mean, m2 = 0, 0.0, 0.0
    for block in iter_blocks(signal):
        mono = block.double().mean(0)
        k, block_mean = mono.numel(), float(mono.mean())
        block_m2 = float(((mono - block_mean) ** 2).sum())
        delta = block_mean - mean
        total = n + k
        mean += delta * k / total
        m2 += block_m2 + delta * delta * n * k / total
        n = total
    return mean, (m2 / (n - ddof)) ** 0.5 if n > ddof else 0.0
