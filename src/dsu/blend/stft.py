"""A spectral blend streamed block by block with the same result as the whole-file transform.

The references transform each whole stem (`librosa.stft`, centred, zero padding, periodic Hann),
blend frame by frame and invert (`librosa.istft`: overlap-add divided by the summed squared window).
Frame t covers samples [t*hop - n_fft/2, t*hop + n_fft/2); it can be computed as soon as every member
has produced that span, and an output sample is final once every frame touching it is added. So
only n_fft samples of input and output are held per stem, whatever the length of the file."""
from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

Blend = Callable[[Tensor], Tensor]  # [members, channels, frames, bins] -> [channels, frames, bins]


class SpectralStream:
    def __init__(self, blend: Blend, members: int, channels: int, length: int, n_fft: int, hop: int):
        self.blend, self.n_fft, self.hop, self.length = blend, n_fft, hop, length
        self.half = n_fft // 2
        self.frames = 1 + length // hop                        # librosa's count with center=True
        self.window = torch.hann_window(n_fft, periodic=True, dtype=torch.float64).float()
        self.next_frame = 0
        self.received = 0                                       # input samples pushed so far
        self.inp = torch.zeros(members, channels, 0)            # input from `inp_start` on
        self.inp_start = 0
        self.out = torch.zeros(channels, 0)                     # overlap-added output from `out_start`
        self.norm = torch.zeros(0)                              # summed squared window, same span
        self.out_start = -self.half
        self.emitted = 0

    def push(self, block: Tensor) -> Tensor:
        """Add the members' next samples [members, channels, n]; the output samples now final."""
        self.inp = torch.cat([self.inp, block.float()], -1)
        self.received += block.shape[-1]
        return self._advance()

    def finish(self) -> Tensor:
        """The rest of the output, once all `length` samples were pushed."""
        assert self.received >= self.length, "finish before all samples were pushed"
        return self._advance()

    def _ready_frames(self) -> int:
        if self.received >= self.length:
            return self.frames
        # frames whose whole span has arrived
        return min(self.frames, max(0, (self.received - self.half) // self.hop + 1))

    def _advance(self) -> Tensor:
        stop = self._ready_frames()
        if stop > self.next_frame:
            self._frames(self.next_frame, stop)
            self.next_frame = stop
        final = self.length if self.next_frame >= self.frames \
            else min(self.length, self.next_frame * self.hop - self.half)
        return self._take(final)

    def _frames(self, first: int, stop: int) -> None:
        lo = first * self.hop - self.half
        hi = (stop - 1) * self.hop + self.half
        segment = self._input(lo, hi)                                           # [M, C, span]
        frames = segment.unfold(-1, self.n_fft, self.hop) * self.window         # [M, C, T, n_fft]
        spec = torch.fft.rfft(frames, dim=-1)
        mixed = self.blend(spec)                                                # [C, T, bins]
        wave = torch.fft.irfft(mixed, n=self.n_fft, dim=-1) * self.window       # [C, T, n_fft]
        count = stop - first
        span = (count - 1) * self.hop + self.n_fft
        added = F.fold(wave.transpose(1, 2), (1, span), (1, self.n_fft), stride=(1, self.hop))[:, 0, 0]
        wsum = F.fold((self.window ** 2).view(1, -1, 1).expand(1, -1, count), (1, span), (1, self.n_fft),
                      stride=(1, self.hop))[0, 0, 0]
        end = lo + span - self.out_start
        if end > self.out.shape[-1]:
            grow = end - self.out.shape[-1]
            self.out = torch.cat([self.out, self.out.new_zeros(self.out.shape[0], grow)], -1)
            self.norm = torch.cat([self.norm, self.norm.new_zeros(grow)])
        a = lo - self.out_start
        self.out[:, a:a + span] += added
        self.norm[a:a + span] += wsum
        # input before the next frame's start is not needed again
        keep_from = stop * self.hop - self.half
        if keep_from > self.inp_start:
            drop = min(keep_from - self.inp_start, self.inp.shape[-1])
            self.inp = self.inp[..., drop:]
            self.inp_start += drop

    def _input(self, lo: int, hi: int) -> Tensor:
        """Input samples [lo, hi), zeros outside [0, length) (librosa's constant centre padding)."""
        m, c = self.inp.shape[:2]
        out = self.inp.new_zeros(m, c, hi - lo)
        a, b = max(lo, self.inp_start, 0), min(hi, self.inp_start + self.inp.shape[-1], self.length)
        if b > a:
            out[..., a - lo:b - lo] = self.inp[..., a - self.inp_start:b - self.inp_start]
        return out

    def _take(self, final: int) -> Tensor:
        start = self.emitted
        if final <= start:
            return self.out.new_zeros(self.out.shape[0], 0)
        a, b = start - self.out_start, final - self.out_start
        y = self.out[:, a:b]
        w = self.norm[a:b]
        tiny = torch.finfo(w.dtype).tiny
        y = torch.where(w > tiny, y / torch.where(w > tiny, w, torch.ones_like(w)), y)
        # drop what is emitted (and the centre padding before sample 0)
        self.out = self.out[:, b:]
        self.norm = self.norm[b:]
        self.out_start = final
        self.emitted = final
        return y
