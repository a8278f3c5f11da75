"""The one chunked overlap-add engine every architecture runs through.

A family says *how* a signal is cut: one or more passes (a model function plus its chunks, e.g. one
pass per Demucs shift or bag member), each chunk naming the input span fed to the model, the part of
the output kept, where it lands and with which weights. The engine does the rest the same way for all:
fetches inputs, batches chunks, accumulates weighted outputs, normalises each pass by its own summed
weights, mixes passes by their per-source weights, and hands finished samples to a sink in order.
Only the span between the flushed frontier and the furthest chunk end is held, so peak memory does
not grow with the length of the file.
"""
from __future__ import annotations

import heapq
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from .signals import ReflectPad, Scaled, Signal, Standardised, TensorSignal, iter_blocks, mono_stats

__all__ = ["Cancelled", "Chunk", "Pass", "ReflectPad", "Scaled", "Signal", "Standardised", "TensorSignal",
           "blocks", "cancel_point", "grid", "iter_blocks", "linear_fade", "mono_stats", "run", "triangle"]


class Cancelled(Exception):
    """Raised between batches when the job's cancel check answers true."""


def cancel_point(signal) -> None:
    """Raise Cancelled when the job reading `signal` (through any views) has been cancelled: for
    families' own loops before the engine runs (the source carries the job's check as `cancelled`)."""
    while hasattr(signal, "inner"):
        signal = signal.inner
    check = getattr(signal, "cancelled", None)
    if check is not None and check():
        raise Cancelled()


@dataclass(frozen=True)
class Chunk:
    start: int        # first sample of the pass's signal fed to the model
    size: int         # samples fed to the model; its output has the same length
    keep: int         # offset of the kept part inside the model output
    out_start: int    # where the kept part lands on the output timeline
    out_size: int     # kept samples
    window: Tensor    # [out_size] weights of the kept samples
    reflect_tail: bool = False  # fill input past the signal's end by mirroring the chunk (MSST) instead of zeros


@dataclass
class Pass:
    model: Callable[..., Tensor]       # [batch, channels, size] -> [batch, sources, channels, size]
    signal: Signal
    chunks: Sequence[Chunk]
    weight: Tensor | float | list[float] = 1.0  # per-source weight of this pass in the final mix
    batch_size: int = 1
    # what a sample no chunk gave weight to holds (MSST: the mix mean it de-normalises with)
    unweighted: float = 0.0
    # the model is called model(x, step) and calls step(fraction of its batch done) as it goes: progress
    # within a long batch (a VR model's whole-file chunk), and a cancel that stops it between steps
    steps: bool = False


@dataclass
class _Accumulator:
    base: int = 0                      # timeline position of buffer column 0
    total: Tensor | None = None        # [sources, channels, span] weighted sum
    weights: Tensor | None = None      # [span] summed window weights

    def add(self, out: Tensor, window: Tensor, pos: int) -> None:
        n = out.shape[-1]
        end = pos - self.base + n
        if self.total is None or self.weights is None:  # both or neither
            self.total = out.new_zeros(*out.shape[:-1], max(end, 2 * n))
            self.weights = out.new_zeros(self.total.shape[-1])
        elif end > self.total.shape[-1]:
            grow = max(end, 2 * self.total.shape[-1]) - self.total.shape[-1]
            self.total = torch.cat([self.total, self.total.new_zeros(*self.total.shape[:-1], grow)], -1)
            self.weights = torch.cat([self.weights, self.weights.new_zeros(grow)])
        a = pos - self.base
        self.total[..., a:a + n] += window * out
        self.weights[a:a + n] += window

    def take(self, stop: int, shape: tuple[int, ...]) -> tuple[Tensor, Tensor]:
        """Remove and return (total, weights) for [base, stop)."""
        n = stop - self.base
        if self.total is None or self.weights is None:  # both or neither
            total, weights = torch.zeros(*shape, n), torch.zeros(n)
        else:
            have = min(n, self.total.shape[-1])
            total = self.total[..., :have]
            weights = self.weights[:have]
            if have < n:
                total = torch.cat([total, total.new_zeros(*total.shape[:-1], n - have)], -1)
                weights = torch.cat([weights, weights.new_zeros(n - have)])
            self.total = self.total[..., have:].clone()
            self.weights = self.weights[have:].clone()
        self.base = stop
        return total, weights


def _fetch(signal: Signal, chunk: Chunk) -> Tensor:
    if not chunk.reflect_tail or chunk.start + chunk.size <= signal.length:
        return signal.read(chunk.start, chunk.start + chunk.size)
    valid = signal.read(chunk.start, signal.length)
    return torch.nn.functional.pad(valid[None], (0, chunk.size - valid.shape[-1]), mode="reflect")[0]


def _batches(p: Pass) -> list[list[int]]:
    """Consecutive chunks of equal input size, at most batch_size each."""
    out: list[list[int]] = []
    for i, c in enumerate(p.chunks):
        if out and len(out[-1]) < p.batch_size and p.chunks[out[-1][-1]].size == c.size:
            out[-1].append(i)
        else:
            out.append([i])
    return out


def run(passes: Sequence[Pass], length: int, sink: Callable[[Tensor], None],
        progress: Callable[[float], None] | None = None,
        cancelled: Callable[[], bool] | None = None) -> None:
    """Run every pass over the output timeline [0, length) and feed `sink` with finished
    [sources, channels, n] blocks in order, n summing to `length`."""
    for block in blocks(passes, length, progress, cancelled):
        sink(block)


def blocks(passes: Sequence[Pass], length: int, progress: Callable[[float], None] | None = None,
           cancelled: Callable[[], bool] | None = None) -> Iterator[Tensor]:
    """`run` as a generator: the finished blocks in order, computed only as they are asked for, so
    several models can be stepped side by side (an ensemble) with none running ahead."""
    batches = [_batches(p) for p in passes]
    total_chunks = sum(len(p.chunks) for p in passes) or 1
    weights = [torch.as_tensor(p.weight, dtype=torch.float32) for p in passes]
    weight_sum = sum(weights)
    accs = [_Accumulator() for _ in passes]
    shape: tuple[int, ...] | None = None
    flushed = 0
    done = 0
    # a heap of (out_start of the next batch, pass index, batch index)
    heap = [(p.chunks[b[0]].out_start, i, 0) for i, (p, bs) in enumerate(zip(passes, batches, strict=True))
            for b in bs[:1]]
    heapq.heapify(heap)
    upcoming: list[int | None] = [min(c.start for c in p.chunks) if p.chunks else None for p in passes]

    def flush(stop: int) -> Tensor | None:
        nonlocal flushed
        stop = min(stop, length)
        if stop <= flushed or shape is None:
            return None
        mixed: Tensor | None = None
        for p, acc, w in zip(passes, accs, weights, strict=True):
            total, wsum = acc.take(stop, shape)
            part = torch.where(wsum > 0, total / wsum, p.unweighted) * _per_source(w, total)
            mixed = part if mixed is None else mixed + part
        flushed = stop
        assert mixed is not None and isinstance(weight_sum, Tensor)  # shape is set: there are passes
        return mixed / _per_source(weight_sum, mixed)

    while heap:
        if cancelled is not None and cancelled():
            raise Cancelled()
        _, i, b = heapq.heappop(heap)
        p = passes[i]
        idx = batches[i][b]
        chunks = [p.chunks[j] for j in idx]
        x = torch.stack([_fetch(p.signal, c) for c in chunks])
        with torch.inference_mode():
            y = p.model(x, _stepper(done, len(chunks), total_chunks, progress, cancelled)) if p.steps else p.model(x)
        y = y.detach().to("cpu", torch.float32)
        if shape is None:
            shape = tuple(y.shape[1:-1])
        for c, out in zip(chunks, y, strict=True):
            lo = max(c.out_start, flushed)
            hi = min(c.out_start + c.out_size, length)
            if hi > lo:
                k = c.keep + lo - c.out_start
                accs[i].add(out[..., k:k + hi - lo], c.window[lo - c.out_start:hi - c.out_start], lo)
        if b + 1 < len(batches[i]):
            heapq.heappush(heap, (p.chunks[batches[i][b + 1][0]].out_start, i, b + 1))
            upcoming[i] = min(p.chunks[j].start for j in batches[i][b + 1])
        else:
            upcoming[i] = None
        _forget_read(passes, upcoming)
        block = flush(heap[0][0] if heap else length)
        for _ in chunks:  # one report per processed chunk, whatever the batch size
            done += 1
            if progress is not None:
                progress(done / total_chunks)
        if block is not None:
            yield block
    if shape is None:
        raise ValueError("nothing to run: the plan has no chunks")
    block = flush(length)
    if block is not None:
        yield block


def _stepper(done: int, count: int, total: int, progress, cancelled) -> Callable[[float], None]:
    def step(fraction: float) -> None:
        if cancelled is not None and cancelled():
            raise Cancelled()
        if progress is not None:
            progress((done + min(max(fraction, 0.0), 1.0) * count) / total)
    return step


def _forget_read(passes: Sequence[Pass], upcoming: list[int | None]) -> None:
    """Let each source drop what none of the passes reading it, through whatever views, will read again."""
    roots: dict[int, tuple[Signal, list[int]]] = {}
    for p, pos in zip(passes, upcoming, strict=True):
        if pos is None:  # this pass is finished
            continue
        signal: Any = p.signal  # a Signal or a view of one (ReflectPad, Standardised)
        while hasattr(signal, "inner"):  # a view: translate to its inner signal's coordinates
            pos = signal.inner_position(pos)
            signal = signal.inner
        roots.setdefault(id(signal), (signal, []))[1].append(pos)
    for signal, positions in roots.values():
        signal.forget(min(positions))


def _per_source(w: Tensor, like: Tensor) -> Tensor:
    """A scalar, or a [sources] weight broadcast over [sources, channels, n]."""
    return w if w.dim() == 0 else w.to(like.dtype).view(-1, *([1] * (like.dim() - 1)))


# ---- windowings of the reference implementations -------------------------------------------------

def triangle(size: int, power: float = 1.0) -> Tensor:
    """Demucs' apply_model weight: a triangle peaking at the centre, max 1, raised to `power`."""
    half = size // 2
    w = torch.cat([torch.arange(1, half + 1), torch.arange(size - half, 0, -1)]).float()
    return (w / w.max()) ** power


def linear_fade(size: int, fade: int, fade_in: bool = True, fade_out: bool = True) -> Tensor:
    """Ones with linear ramps of `fade` samples (MSST demix, Apollo crossfade)."""
    w = torch.ones(size)
    if fade > 0:
        if fade_in:
            w[:fade] = torch.linspace(0, 1, fade)
        if fade_out:
            w[-fade:] = torch.linspace(1, 0, fade)
    return w


def grid(length: int, size: int, step: int, window: Tensor | None = None, offset: int = 0) -> list[Chunk]:
    """Chunks of `size` every `step` samples over [offset, offset + length), output kept whole,
    the last one cut to what is left (its input still `size` long)."""
    w = torch.ones(size) if window is None else window
    chunks = []
    for s in range(0, max(length, 1), step):
        n = min(size, length - s)
        chunks.append(Chunk(start=s + offset, size=size, keep=0, out_start=s + offset, out_size=n, window=w[:n]))
    return chunks
