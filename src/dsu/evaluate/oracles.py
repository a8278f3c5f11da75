"""The corpus' trivial separators (shared/corpus/measure.py) as streams beside the models: `mixture`
returns the mixture as every stem (the floor) and `irm` the ideal ratio mask (the ceiling of any real
time-frequency mask at this resolution): per channel STFT, Hann 4096 / hop 1024,
mask_i = |S_i|^2 / sum_j |S_j|^2 on the mixture's STFT, inverted."""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from ..blend.stft import SpectralStream
from ..errors import DSUError

ORACLES = ("mixture", "irm")


class Oracle:
    """The corpus' trivial separators as a stream: mixture (the mixture as every stem) and irm."""

    def __init__(self, name: str, stems: Sequence[str], channels: int, length: int, n_fft: int = 4096,
                 hop: int = 1024):
        if name not in ORACLES:
            raise DSUError("bad_value", f"unknown oracle {name!r}; choose from " + ", ".join(ORACLES))
        self.name, self.stems, self.channels, self.length = name, tuple(stems), channels, length
        self.streams: dict[str, SpectralStream] = {}
        if name == "irm":
            for i, s in enumerate(self.stems):
                stream = SpectralStream(self._mask(i), len(self.stems) + 1, channels, length, n_fft, hop)
                # scipy.signal.stft(padded=True), as measure.py calls it, adds a frame over the zeros
                # after the end when the length is not a whole number of hops
                stream.frames = -(-length // hop) + 1
                self.streams[s] = stream

    def _mask(self, index: int):
        def blend(spec: torch.Tensor) -> torch.Tensor:      # [stems + mixture, C, T, bins]
            power = spec[:-1].abs() ** 2
            return spec[-1] * (power[index] / (power.sum(0) + 1e-20))
        return blend

    def push(self, mixture: np.ndarray, references: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """The next block of the mixture and the stems [channels, n]; each stem's estimate samples now
        final (maybe none yet)."""
        if self.name == "mixture":
            return {s: np.array(mixture, np.float32) for s in self.stems}
        block = torch.from_numpy(np.stack([np.asarray(references[s], np.float32) for s in self.stems]
                                          + [np.asarray(mixture, np.float32)]))
        return {s: self.streams[s].push(block).numpy() for s in self.stems}

    def finish(self) -> dict[str, np.ndarray]:
        """The rest of each stem's estimate, once all `length` samples were pushed."""
        if self.name == "mixture":
            return {s: np.zeros((self.channels, 0), np.float32) for s in self.stems}
        return {s: self.streams[s].finish().numpy() for s in self.stems}
