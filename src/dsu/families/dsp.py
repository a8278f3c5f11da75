"""The embedded default: a separator made of signal processing alone, so a fresh install with no
downloaded weights still does real work through the same engine and protocol.

Masks on the STFT, all soft and summing to one so the stems add back up to the mix:
percussive vs harmonic from median filtering across frequency vs time (HPSS); the harmonic part
below ~250 Hz is bass; the rest is split by how centred each bin is (vocals sit in the middle,
accompaniment is spread) and by the voice band."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from .. import backends
from ..engine import Pass, grid, triangle
from .base import Family, LoadedModel, make_ref, option_names, read_options

SAMPLERATE = 44100
N_FFT, HOP = 4096, 1024


def median_filter(x: Tensor, size: int, dim: int) -> Tensor:
    """Running median of odd `size` along `dim`, edges padded by reflection."""
    x = x.movedim(dim, -1)
    pad = size // 2
    padded = F.pad(x.reshape(-1, 1, x.shape[-1]), (pad, pad), mode="reflect").reshape(*x.shape[:-1], -1)
    return padded.unfold(-1, size, 1).median(-1).values.movedim(-1, dim)


def _soft(a: Tensor, b: Tensor, power: float = 2.0) -> Tensor:
    """Wiener-like share of `a` against `b`."""
    a, b = a ** power, b ** power
    return a / (a + b + 1e-12)


class DSPModel(LoadedModel):
    family = "dsp"
    name = "dsp"
    samplerate = SAMPLERATE
    audio_channels = 2
    stems = ["drums", "bass", "other", "vocals"]
    options = option_names("dsp")

    def __init__(self, device: torch.device = torch.device("cpu")):
        self.device = device
        self.window = torch.hann_window(N_FFT, device=device)
        freqs = torch.fft.rfftfreq(N_FFT, 1 / SAMPLERATE).to(device)
        # smooth band edges: bass below ~250 Hz, voice between ~180 Hz and ~8 kHz
        self.low = torch.sigmoid((250 - freqs) / 25)[:, None]
        self.voice_band = (torch.sigmoid((freqs - 180) / 30) * torch.sigmoid((8000 - freqs) / 1000))[:, None]

    def separate_chunk(self, x: Tensor) -> Tensor:
        """[batch, 2, n] -> [batch, 4, 2, n]"""
        b, c, n = x.shape
        x = x.to(self.device)
        spec = torch.stft(x.reshape(b * c, n), N_FFT, HOP, window=self.window, return_complex=True)
        spec = spec.reshape(b, c, *spec.shape[-2:])                 # [b, c, freq, frames]
        mag = spec.abs()
        mono = mag.mean(1)                                           # [b, freq, frames]
        # kernels of 31 (0.7 s across time, 330 Hz across frequency) scored best on the corpus
        harmonic = median_filter(mono, 31, dim=-1)
        percussive = median_filter(mono, 31, dim=-2)
        drums = _soft(percussive, harmonic)
        tonal = 1 - drums
        bass = tonal * self.low
        rest = tonal - bass
        left, right = spec[:, 0], spec[:, -1]
        # 1 where left and right agree in level and phase, 0 where one side dominates or they cancel
        side = (left - right).abs()
        centre = _soft((left + right).abs(), side, power=2.0)
        vocals = rest * self.voice_band * centre
        other = rest - vocals
        masks = torch.stack([drums, bass, other, vocals], 1)        # [b, 4, freq, frames]
        stems = masks[:, :, None] * spec[:, None]                    # [b, 4, c, freq, frames]
        out = torch.istft(stems.reshape(-1, *spec.shape[-2:]), N_FFT, HOP, window=self.window, length=n)
        return out.reshape(b, len(self.stems), c, n)

    def memory_estimate(self, length: int, **options):
        """One chunk's spectrogram, masks and four stems' spectrograms (about 180 floats per sample),
        and the overlap-add of two chunks."""
        from .. import memory
        segment = read_options("dsp", options)["segment"]
        size = min(int(float(segment) * SAMPLERATE), max(length, 4 * N_FFT))
        return memory.Estimate(memory.span_bytes(4, 2, size), size * 180 * memory.FLOAT, f"segment={segment} s")

    def passes(self, signal, runtime: backends.Runtime = backends.EXACT, **options) -> list[Pass]:
        size = int(float(read_options("dsp", options)["segment"]) * SAMPLERATE)
        if size < 4 * N_FFT:
            from ..errors import DSUError
            raise DSUError("bad_value", f"segment must be at least {4 * N_FFT / SAMPLERATE:.2f} seconds")
        size = min(size, max(signal.length, 4 * N_FFT))
        step = max(1, size * 3 // 4)
        return [Pass(model=self.separate_chunk, signal=signal, chunks=grid(signal.length, size, step, triangle(size)))]

    def nbytes(self) -> int:
        return 0


def _resolve(request: dict, models_dir):
    if request.get("model") == "dsp" and not request.get("model_path"):
        return make_ref("dsp", "dsp", ())
    return None


FAMILY = Family(
    name="dsp", layout="flat", default_bit_depth=32, model_types=("dsp",),
    loader=lambda ref, device: DSPModel(device),
    resolver=_resolve,
    lister=lambda models_dir: [{"name": "dsp", "family": "dsp", "stems": DSPModel.stems,
                                "description": "built-in signal-processing separator (no weights)"}],
)
