"""Members' blocks in, blended blocks out, one stem at a time, holding only what is not yet blended.

`StemBlend.push` takes every contributing member's next samples of one stem at once ([members,
channels, n]) and returns the output samples now final: at once for the waveform rules, n_fft/2
behind for the spectral ones (`stft.SpectralStream`). ensemble_wav needs each member's loudness over
the whole file before its first sample can be chosen, so its members are spooled to temporary files
and copied from when complete (`Spool`); memory stays flat, disk holds one copy per member.

Every block out is checked to be finite before it is handed on: members whose samples are finite can
still overflow float32 in a spectral rule (samples near 3e38), and a member can make NaN."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import soundfile as sf
import torch
from torch import Tensor

from .. import paths, tempfiles
from ..audio import write_faults
from ..errors import DSUError
from . import algorithms
from .stft import SpectralStream


class StemBlend:
    def __init__(self, algorithm: str, members: int, channels: int, length: int, weights: Tensor | None,
                 reference: str, spool_dir: Path | None = None, stem: str = "ensemble"):
        self.algorithm, self.weights, self.reference = algorithm, weights, reference
        self.stem, self.position = stem, 0
        self.spectral = None
        self.spool = None
        if algorithm in algorithms.SPECTRAL and members > 1:
            self.spectral = SpectralStream(self._blend_frames, members, channels, length,
                                           algorithms.N_FFT, algorithms.HOP)
        elif algorithm in algorithms.WHOLE_FILE and members > 1:
            self.spool = Spool(spool_dir or Path("."), members, channels, length)

    def _blend_frames(self, spec: Tensor) -> Tensor:
        # [M, C, T, bins]: every rule is per bin, so the layout only has to agree between members
        return algorithms.blend(self.algorithm, spec, self.weights, self.reference)

    def push(self, block: Tensor) -> Tensor:
        if self.spectral is not None:
            return self._finite(self.spectral.push(block))
        if self.spool is not None:
            self.spool.push(block)
            return block.new_zeros(block.shape[1], 0)
        return self._finite(algorithms.blend(self.algorithm, block.float(), self.weights, self.reference))

    def finish(self):
        """The remaining output, an iterator of blocks."""
        if self.spectral is not None:
            return iter([self._finite(self.spectral.finish())])
        if self.spool is not None:
            return (self._finite(out) for out in self.spool.blocks())
        return iter([])

    def _finite(self, out: Tensor) -> Tensor:
        bad = ~torch.isfinite(out)
        if bad.any():
            first = self.position + int(bad.any(0).nonzero()[0])
            raise DSUError("unsupported_audio", f"the blend of `{self.stem}` is NaN or infinite from sample {first} "
                                                f"on: its members' samples are too large to blend in 32-bit float "
                                                f"(or a member made NaN); nothing was written")
        self.position += out.shape[-1]
        return out

    def close(self) -> None:
        if self.spool is not None:
            self.spool.close()


class Spool:
    """Each member's samples of one stem in a temporary float file, plus its summed magnitude per
    channel; `blocks` then yields, per channel, the quietest member's samples."""

    def __init__(self, folder: Path, members: int, channels: int, length: int, block: int = 1 << 16):
        folder.mkdir(parents=True, exist_ok=True)
        # named as every DSU temporary, so a clean elsewhere never takes a live job's spool for debris
        self.paths = [tempfiles.temp_name(folder / f"dsu-ensemble-{i}.spool") for i in range(members)]
        self.files: list[sf.SoundFile] = []
        try:
            for p in self.paths:
                with write_faults(p):
                    self.files.append(sf.SoundFile(paths.native(p), "w", samplerate=44100, channels=channels,
                                                   format="WAV", subtype="FLOAT"))
        except BaseException:
            self.close()
            raise
        self.magnitude = torch.zeros(members, channels, dtype=torch.float64)
        self.block = block

    def push(self, block: Tensor) -> None:
        self.magnitude += block.double().abs().sum(-1)
        for p, f, member in zip(self.paths, self.files, block, strict=True):
            with write_faults(p):
                f.write(np.ascontiguousarray(member.float().numpy().T))

    def blocks(self):
        for p, f in zip(self.paths, self.files, strict=True):
            with write_faults(p):
                f.close()
        chosen = algorithms.quietest(self.magnitude)
        readers = [sf.SoundFile(paths.native(p)) for p in self.paths]
        try:
            while True:
                parts = [r.read(self.block, dtype="float32", always_2d=True) for r in readers]
                if not len(parts[0]):
                    break
                stacked = np.stack(parts)                       # [members, n, channels]
                out = stacked[chosen.numpy(), :, np.arange(stacked.shape[-1])]  # [channels, n]
                yield torch.from_numpy(np.ascontiguousarray(out))
        finally:
            for r in readers:
                r.close()

    def close(self) -> None:
        for f in self.files:
            try:
                f.close()
            except Exception:
                pass
        for p in self.paths:
            try:
                p.unlink(missing_ok=True)
            except OSError:
                pass  # its folder was removed or turned read-only


def blend_arrays(algorithm: str, members: Tensor, weights=None, reference: str = "msst",
                 block: int = 4096, spool_dir: Path | None = None) -> Tensor:
    """A whole stem blended through the streaming path in blocks of `block` samples ([members,
    channels, n] -> [channels, n]); what file ensembles and the tests use."""
    m, c, n = members.shape
    w = None if weights is None else torch.as_tensor(weights, dtype=torch.float32)
    blend = StemBlend(algorithm, m, c, n, w, reference, spool_dir)
    try:
        out = [blend.push(members[..., i:i + block]) for i in range(0, n, block)]
        out.extend(blend.finish())
        return torch.cat(out, -1)
    finally:
        blend.close()
