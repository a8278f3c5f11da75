"""The blending rules of the tools users compare ensembles against, as pure functions over tensors.

Waveform rules take the members' samples stacked as [members, channels, n]; spectral rules take their
STFT frames stacked as [members, channels, frames, bins] (complex). Every rule is local (a sample, or
one bin of one frame), which is what lets `dsu.blend.stft` run them block by block.

Definitions, from MSST's `ensemble.py` (`average_waveforms`) and python-audio-separator's `Ensembler`:
- weights count only in the averages (avg_wave, avg_fft); the other rules ignore them;
- min/max pick the member with the smallest/largest magnitude, the first one on a tie (numpy's argmin);
- median of an even count is the mean of the two middle values (numpy's median);
- median_fft differs between the two: MSST takes numpy's median of the complex values, which orders
  them by real part then imaginary part; python-audio-separator takes the medians of the real and the
  imaginary parts separately (`reference` picks which);
- uvr_max_spec / uvr_min_spec are UVR's `ensembling`: members folded in order, a later member
  replacing the running pick when its magnitude is >= (max) or <= (min) it, so ties go to the later one;
- ensemble_wav is python-audio-separator's `spec_utils.ensemble_wav` as its ensembler calls it, on
  [channels, n] arrays: `np.array_split` then cuts the channel axis, so each output channel is the
  member's channel with the lowest mean magnitude over the whole file (see `quietest`).
"""
from __future__ import annotations

import torch
from torch import Tensor

WAVE = ("avg_wave", "median_wave", "min_wave", "max_wave")
SPECTRAL = ("avg_fft", "median_fft", "min_fft", "max_fft", "uvr_max_spec", "uvr_min_spec")
WHOLE_FILE = ("ensemble_wav",)
ALGORITHMS = WAVE + SPECTRAL + WHOLE_FILE
WEIGHTED = ("avg_wave", "avg_fft")
REFERENCES = ("msst", "audio_separator")

# the STFT every spectral rule is defined on: librosa.stft(n_fft=2048, hop_length=1024), hann, centred
N_FFT, HOP = 2048, 1024


def median(x: Tensor) -> Tensor:
    """numpy's median over dim 0: the middle value, or the mean of the two middle ones."""
    ordered = x.sort(dim=0).values
    m = ordered.shape[0]
    if m % 2:
        return ordered[m // 2]
    return (ordered[m // 2 - 1] + ordered[m // 2]) / 2


def complex_median(x: Tensor) -> Tensor:
    """numpy's median of complex values over dim 0: ordered by real part, ties by imaginary part."""
    by_imag = x.imag.sort(dim=0, stable=True).indices
    x = x.gather(0, by_imag)
    by_real = x.real.sort(dim=0, stable=True).indices
    ordered = x.gather(0, by_real)
    m = ordered.shape[0]
    if m % 2:
        return ordered[m // 2]
    return (ordered[m // 2 - 1] + ordered[m // 2]) / 2


def pick(x: Tensor, largest: bool) -> Tensor:
    """The value of largest (or smallest) magnitude over dim 0, the first member on a tie."""
    mag = x.abs()
    idx = (mag.argmax(0) if largest else mag.argmin(0)).unsqueeze(0)
    return x.gather(0, idx).squeeze(0)


def uvr_fold(x: Tensor, largest: bool) -> Tensor:
    """UVR's `ensembling`: members folded in order, ties going to the later member."""
    out = x[0]
    for other in x[1:]:
        better = other.abs() >= out.abs() if largest else other.abs() <= out.abs()
        out = torch.where(better, other, out)
    return out


def weighted_mean(x: Tensor, weights: Tensor) -> Tensor:
    w = weights.to(x.real.dtype if x.is_complex() else x.dtype)
    return (x * w.view(-1, *([1] * (x.dim() - 1)))).sum(0) / w.sum()


def blend(algorithm: str, x: Tensor, weights: Tensor | None = None, reference: str = "msst") -> Tensor:
    """One block of a local rule: `x` is [members, ...] samples (WAVE) or STFT frames (SPECTRAL)."""
    if x.shape[0] == 1:
        return x[0]
    if algorithm in WEIGHTED:
        return weighted_mean(x, torch.ones(x.shape[0]) if weights is None else weights)
    if algorithm == "median_wave":
        return median(x)
    if algorithm == "median_fft":
        if reference == "audio_separator":
            return torch.complex(median(x.real), median(x.imag))
        return complex_median(x)
    if algorithm in ("min_wave", "min_fft"):
        return pick(x, largest=False)
    if algorithm in ("max_wave", "max_fft"):
        return pick(x, largest=True)
    if algorithm in ("uvr_max_spec", "uvr_min_spec"):
        return uvr_fold(x, largest=algorithm == "uvr_max_spec")
    raise ValueError(f"{algorithm} is not a local rule")


def quietest(mean_magnitude: Tensor) -> Tensor:
    """ensemble_wav: per channel, the member whose channel has the lowest mean magnitude
    ([members, channels] -> [channels] member indices; the first on a tie)."""
    return mean_magnitude.argmin(0)
