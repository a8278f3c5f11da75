"""UVR's multi-band spectrogram for VR-architecture models, driven by a band-parameter set
(`dsu/data/uvr/bands/<name>.json`, DSU's schema, see `tools/uvr_tables.py`).

The mix is loaded at the top band's rate, each lower band is resampled from the band above it, every
band gets its own STFT, and the crops of all bands are stacked into one spectrogram of `bins + 1`
rows the network masks. Going back, each band is cut out again, faded at its edges, inverted and
resampled up into the next band, as UVR's `spec_utils` (python-audio-separator) does. Two network
generations read the stereo differently: the first transforms the waves (`stereo`), the v5.1 one
each band's spectrogram (`channels`), and they fade band edges differently (stepped gains vs. masks).

Resampling: `polyphase` is scipy's `resample_poly` (a Kaiser-windowed FIR, beta 5, 10 zero crossings
per side), rebuilt here so the lower bands match sample for sample; libsamplerate's sinc_* go through
libsamplerate itself (the `samplerate` package, as librosa calls it), resampy's kaiser_* through resampy
itself, soxr's through soxr: each band set's resampler is the library its reference calls."""
from __future__ import annotations

import json
from dataclasses import dataclass
from functools import cache
from importlib import resources
from typing import cast

import numpy as np
import samplerate
import soxr
import torch
import torch.nn.functional as F
from torch import Tensor

from ..errors import DSUError

# python-audio-separator rebuilds the full-rate signal with librosa's 'sinc_fastest' on Linux
SYNTHESIS_RESAMPLER = "sinc_fastest"
LIBSAMPLERATE = ("sinc_best", "sinc_medium", "sinc_fastest", "linear", "zero_order_hold")
RESAMPY = ("kaiser_best", "kaiser_fast")  # librosa hands these to resampy (UVR's 4band_v2/v3, 1band_sr32000...)
SOXR = {"soxr_vhq": "VHQ", "soxr_hq": "HQ", "soxr_mq": "MQ", "soxr_lq": "LQ", "soxr_qq": "QQ"}


@dataclass(frozen=True)
class Band:
    samplerate: int
    hop: int
    n_fft: int
    crop: tuple[int, int]                 # the STFT rows this band gives the stacked spectrogram
    resampler: str                        # how this band is made from the band above
    lowpass: tuple[int, int] | None = None
    highpass: tuple[int, int] | None = None
    channels: str | None = None           # v5.1 networks: the band's stereo transform

    @property
    def rows(self) -> int:
        return self.crop[1] - self.crop[0]


@dataclass(frozen=True)
class BandParams:
    name: str
    samplerate: int
    bins: int
    pre_filter: tuple[int, int] | None
    stereo: str | None                    # first-generation networks: the waves' stereo transform
    bands: tuple[Band, ...]               # lowest first, as UVR numbers them

    @property
    def top(self) -> Band:
        return self.bands[-1]

    @property
    def pre_filter_span(self) -> tuple[int, int]:
        """UVR's pre_filter_start/stop, -1 for none (the mirroring arithmetic uses them even then)."""
        return self.pre_filter or (-1, -1)


def shipped() -> list[str]:
    folder = resources.files("dsu").joinpath("data", "uvr", "bands")
    return sorted(p.name[:-5] for p in folder.iterdir() if p.name.endswith(".json"))


@cache
def load(name: str) -> BandParams:
    if name not in shipped():
        raise DSUError("bad_value", f"unknown VR band parameters {name!r} (`vr_model_param`); DSU ships: "
                                    f"{', '.join(shipped())}")
    raw = json.loads(resources.files("dsu").joinpath("data", "uvr", "bands", f"{name}.json").read_text("utf-8"))

    def fade(span):  # UVR marks "no fade" with a start of -1
        return (int(span[0]), int(span[1])) if span and span[0] is not None and span[0] > 0 else None
    bands = tuple(Band(b["samplerate"], b["hop"], b["n_fft"], tuple(b["crop"]), b["resampler"],
                       fade(b.get("lowpass")), fade(b.get("highpass")), b.get("channels")) for b in raw["bands"])
    return BandParams(name, raw["samplerate"], raw["bins"],
                      tuple(raw["pre_filter"]) if raw.get("pre_filter") else None, raw.get("stereo"), bands)


# ---- resampling ------------------------------------------------------------------------------------

RESAMPLE_BLOCK = 1 << 16  # outputs per convolution in resample_poly


@cache
def _kaiser_lowpass(up: int, down: int) -> np.ndarray:
    """scipy.signal.resample_poly's filter: firwin(20 * max + 1, 1 / max, ('kaiser', 5.0)) * up."""
    rate = max(up, down)
    taps = np.arange(20 * rate + 1) - 10 * rate
    h = np.sinc(taps / rate) * np.kaiser(len(taps), 5.0)
    return h / h.sum() * up


def resample_poly(x: Tensor, up: int, down: int) -> Tensor:
    """[channels, n] by up/down with resample_poly's centred FIR: y[j] = sum_i x[i] h[half + j*down - i*up].

    Outputs sharing a filter phase are one strided convolution each."""
    g = np.gcd(up, down)
    up, down = up // g, down // g
    h = _kaiser_lowpass(up, down)
    half = (len(h) - 1) // 2
    n_in = x.shape[-1]
    n_out = -(-n_in * up // down)
    taps = -(-len(h) // up)
    padded = np.zeros(taps * up)
    padded[:len(h)] = h
    phases = torch.from_numpy(padded.reshape(taps, up).T.copy()).flip(-1)  # [phase, tap], oldest sample first
    pad = taps + down + 2  # zeros either side: the filter reaches half // up samples past the ends
    xp = F.pad(x.double()[:, None], (pad, pad))
    out = torch.zeros(x.shape[0], n_out, dtype=torch.float64)
    for j0 in range(min(up, n_out)):  # outputs j0, j0 + up, ... read inputs down apart with one phase
        t = j0 * down + half
        count = len(range(j0, n_out, up))
        start = t // up - (taps - 1) + pad
        kernel = phases[t % up].view(1, 1, -1)
        phase_out = out[:, j0::up]
        # in blocks: a strided convolution unfolds its input (taps x outputs), gigabytes for a song
        for first in range(0, count, RESAMPLE_BLOCK):
            n = min(RESAMPLE_BLOCK, count - first)
            lo = start + first * down
            span = xp[..., lo:lo + (n - 1) * down + taps]
            phase_out[:, first:first + n] = F.conv1d(span, kernel, stride=down)[:, 0, :n]
    return out.to(x.dtype)


def resample(x: Tensor, src: int, dst: int, kind: str) -> Tensor:
    """librosa.resample(x, orig_sr=src, target_sr=dst, res_type=kind): ceil(n * dst / src) samples."""
    if src == dst:
        return x
    if kind == "polyphase":
        return resample_poly(x, dst, src)
    n_out = -(-x.shape[-1] * dst // src)
    if kind in LIBSAMPLERATE:
        wave = x.detach().numpy()
        y = np.stack([samplerate.resample(channel, dst / src, converter_type=kind) for channel in wave])
    elif kind in RESAMPY:
        import resampy  # numba compiles its kernel on first use: only for the band sets that ask for it
        y = resampy.resample(x.detach().numpy(), src, dst, filter=kind, axis=-1)  # in the signal's own precision
    else:
        y = soxr.resample(x.detach().double().numpy().T, src, dst, quality=SOXR.get(kind, "HQ")).T
    resampled = torch.from_numpy(np.ascontiguousarray(y)).to(x.dtype)
    return F.pad(resampled, (0, max(0, n_out - resampled.shape[-1])))[:, :n_out]


# ---- STFT ------------------------------------------------------------------------------------------

def stft(wave: Tensor, n_fft: int, hop: int) -> Tensor:
    """librosa.stft defaults (periodic Hann, centred, zero padded) of [channels, n]: [channels, n_fft/2+1, frames]."""
    window = torch.hann_window(n_fft, dtype=torch.float64)
    spec = torch.stft(wave.double(), n_fft, hop, window=window, center=True, pad_mode="constant", return_complex=True)
    return spec.to(torch.complex64)


def istft(spec: Tensor, hop: int) -> Tensor:
    """librosa.istft without `length`: (frames - 1) * hop samples."""
    n_fft = 2 * (spec.shape[-2] - 1)
    if spec.shape[-1] < 2:
        return torch.zeros(spec.shape[0], 0, dtype=torch.float64)
    window = torch.hann_window(n_fft, dtype=torch.float64)
    return torch.istft(spec.to(torch.complex128), n_fft, hop, window=window, center=True)


# ---- stereo ----------------------------------------------------------------------------------------

def stereo_in(wave: Tensor, mode: str | None) -> Tensor:
    """The first generation's wave transform before the STFT (UVR applies only these three)."""
    left, right = wave[0], wave[1]
    if mode == "reverse":
        return wave.flip(-1)
    if mode == "mid_side":
        return torch.stack([(left + right) / 2, left - right])
    if mode == "mid_side_b2":
        return torch.stack([right + left * 0.5, left - right * 0.5])
    return wave


def stereo_out(wave: Tensor, mode: str | None) -> Tensor:
    a, b = wave[0], wave[1]
    if mode == "reverse":
        return wave.flip(-1)
    if mode == "mid_side":
        return torch.stack([a + b / 2, a - b / 2])
    if mode == "mid_side_b2":
        return torch.stack([b / 1.25 + 0.4 * a, a / 1.25 - 0.4 * b])
    return wave


def channels_in(spec: Tensor, mode: str | None) -> Tensor:
    """The v5.1 generation's per-band transform, applied to the band's spectrogram."""
    left, right = spec[0], spec[1]
    if mode == "mid_side_c":
        return torch.stack([left + right * 0.25, right - left * 0.25])
    if mode == "mid_side":
        return torch.stack([(left + right) / 2, left - right])
    if mode == "stereo_n":
        return torch.stack([(left + right * 0.25) / 0.9375, (right + left * 0.25) / 0.9375])
    return spec


def channels_out(wave: Tensor, mode: str | None) -> Tensor:
    a, b = wave[0], wave[1]
    if mode == "mid_side_c":
        return torch.stack([a / 1.0625 - b / 4.25, b / 1.0625 + a / 4.25])
    if mode == "mid_side":
        return torch.stack([a + b / 2, a - b / 2])
    if mode == "stereo_n":
        return torch.stack([a - b * 0.25, b - a * 0.25])
    return wave


# ---- band-edge fades -------------------------------------------------------------------------------

def lowpass_gains(rows: int, start: int, stop: int, v51: bool) -> Tensor:
    """Gains per row fading out from `start` to `stop`: a linear mask (v5.1) or UVR's stepped
    fft_lp_filter, whose first faded row already loses one step."""
    g = torch.ones(rows, dtype=torch.float64)
    if v51:
        g[start - 1:stop] = torch.linspace(1, 0, stop - start + 1, dtype=torch.float64)
    else:
        steps = torch.arange(1, max(stop - start, 0) + 1, dtype=torch.float64)
        g[start:stop] = 1 - steps / (stop - start)
    g[stop:] = 0
    return g


def highpass_gains(rows: int, start: int, stop: int, v51: bool) -> Tensor:
    """Gains fading in from row `stop` (zero at and below it) up to `start`."""
    g = torch.ones(rows, dtype=torch.float64)
    if v51:
        # UVR's mask puts its ramp one row higher than the stepped filter: its 1 lands on start + 1
        g[stop + 1:start + 2] = torch.linspace(0, 1, start - stop + 1, dtype=torch.float64)
        g[:stop + 1] = 0
    else:
        steps = torch.arange(1, max(start - stop, 0) + 1, dtype=torch.float64)
        g[stop + 1:start + 1] = (1 - steps / (start - stop)).flip(0)
        g[:stop + 1] = 0
    return g


def _apply(spec: Tensor, gains: Tensor) -> Tensor:
    return spec * gains.to(spec.real.dtype)[:, None]


def pre_filter_gains(params: BandParams, rows: int, v51: bool) -> Tensor | None:
    """What the stacked spectrogram is multiplied by before the network sees it (UVR's pre-filter)."""
    if params.pre_filter is None:
        return None
    start, stop = params.pre_filter
    if v51 or len(params.bands) == 1:
        return lowpass_gains(rows, start, stop, v51)
    # multi-band, first generation: a steepening dB slope between start and stop, the rest left alone
    g = torch.ones(rows, dtype=torch.float64)
    previous = 1.0
    for row in range(start + 1, stop):
        previous = 10 ** (-(row - start) * (3.5 - previous) / 20)
        g[row] = previous
    return g


# ---- mix -> stacked spectrogram -> mix --------------------------------------------------------------

@dataclass
class Analysis:
    spec: Tensor                 # [2, bins + 1, frames] complex64, what the network masks
    top_spec: Tensor             # the top band's own spectrogram, for high-end mirroring


def analyse(wave: Tensor, params: BandParams, v51: bool) -> Analysis:
    """[2, n] at the top band's rate -> the stacked multi-band spectrogram."""
    specs = cast("list[Tensor]", [None] * len(params.bands))  # the loop fills every band's slot
    band_wave = wave.float()
    for k in reversed(range(len(params.bands))):
        band = params.bands[k]
        if k < len(params.bands) - 1:
            band_wave = resample(band_wave, params.bands[k + 1].samplerate, band.samplerate, band.resampler)
        if v51:
            specs[k] = channels_in(stft(band_wave, band.n_fft, band.hop), band.channels)
        else:
            specs[k] = stft(stereo_in(band_wave, params.stereo), band.n_fft, band.hop)
    frames = min(s.shape[-1] for s in specs)
    stacked = torch.cat([s[:, b.crop[0]:b.crop[1], :frames] for s, b in zip(specs, params.bands, strict=True)], 1)
    if stacked.shape[1] > params.bins:
        raise DSUError("bad_value", f"band parameters {params.name}: the band crops add up to more than "
                                    f"{params.bins} bins")
    stacked = F.pad(stacked, (0, 0, 0, params.bins + 1 - stacked.shape[1]))
    gains = pre_filter_gains(params, params.bins + 1, v51)
    if gains is not None:
        stacked = _apply(stacked, gains).to(torch.complex64)
    return Analysis(stacked, specs[-1])


def high_end_rows(params: BandParams) -> int:
    """How many top rows of the top band high-end processing restores from the input."""
    start, stop = params.pre_filter_span
    return params.top.n_fft // 2 - params.top.crop[1] + stop - start


def mirror_high_end(spec: Tensor, top_spec: Tensor, params: BandParams) -> Tensor:
    """UVR's 'mirroring': the input's top rows, each capped by the magnitude of the stem's rows
    mirrored about pre_filter_start - 10 (the input's phase kept)."""
    rows = high_end_rows(params)
    top = params.top.n_fft // 2
    original = top_spec[:, top - rows:top, :spec.shape[-1]]
    pivot = params.pre_filter_span[0] - 10
    lo, hi = pivot - rows, pivot
    # UVR slices with these bounds as they are, negative ones counting from the end
    reflected = spec.abs()[:, lo:hi].flip(1)
    if reflected.shape[1] != rows:
        raise DSUError("bad_value", f"high_end_process does not work with band parameters {params.name} "
                                    "(UVR's mirroring reads outside the spectrogram): turn it off")
    mirrored = torch.polar(reflected.float(), original.angle().float())
    return torch.where(original.abs() <= mirrored.abs(), original, mirrored)


def synthesise(spec: Tensor, params: BandParams, v51: bool, high_end: Tensor | None = None) -> Tensor:
    """Stacked spectrogram -> [2, (frames - 1) * top hop] float64 at the top band's rate."""
    wave: Tensor | None = None
    row = 0
    last = len(params.bands) - 1
    for k, band in enumerate(params.bands):
        part = torch.zeros(2, band.n_fft // 2 + 1, spec.shape[-1], dtype=torch.complex128)
        part[:, band.crop[0]:band.crop[1]] = spec[:, row:row + band.rows]
        row += band.rows
        if k == last:
            if high_end is not None:
                top = band.n_fft // 2
                part[:, top - high_end.shape[1]:top] = high_end
            if band.highpass:
                part = _apply(part, highpass_gains(part.shape[1], band.highpass[0], band.highpass[1] - 1, v51))
        else:
            if k > 0 and band.highpass:
                part = _apply(part, highpass_gains(part.shape[1], band.highpass[0], band.highpass[1] - 1, v51))
            if band.lowpass:
                part = _apply(part, lowpass_gains(part.shape[1], band.lowpass[0], band.lowpass[1], v51))
        band_wave = istft(part, band.hop)
        band_wave = channels_out(band_wave, band.channels) if v51 else stereo_out(band_wave, params.stereo)
        wave = band_wave if wave is None else _add(wave, band_wave)
        if k < last:
            wave = resample(wave, band.samplerate, params.bands[k + 1].samplerate, SYNTHESIS_RESAMPLER)
    assert wave is not None  # every band set has at least one band
    return wave


def _add(a: Tensor, b: Tensor) -> Tensor:
    n = b.shape[-1]
    return F.pad(a, (0, max(0, n - a.shape[-1])))[:, :n] + b


# ---- masks -----------------------------------------------------------------------------------------

NON_ACCOMPANIMENT = ("Vocals", "Other", "Bass", "Drums", "Guitar", "Piano", "Synthesizer", "Strings",
                     "Woodwinds", "Brass", "Wind Inst")


def adjust_aggression(mask: Tensor, aggression: int, primary_stem: str, split_row: int) -> Tensor:
    """UVR's adjust_aggr: the mask raised to 1 + a/3 below `split_row` (the first band's top) and to
    1 + a above, a = 2 * aggression / 100, or 1 - that when the primary stem is not an accompaniment."""
    a = 2 * (aggression / 100)
    if a == 0:
        return mask
    if primary_stem in NON_ACCOMPANIMENT:
        a = 1 - a
    return torch.cat([mask[:, :split_row] ** (1 + a / 3), mask[:, split_row:] ** (1 + a)], 1)


def merge_artifacts(mask: Tensor, threshold: float, min_range: int = 64, fade: int = 32) -> Tensor:
    """UVR's post-process: runs of more than `min_range` frames in which every row of the mask
    exceeds `threshold` are pushed towards 1, with `fade`-frame ramps at their ends."""
    loud = torch.nonzero(mask.amin(dim=(0, 1)) > threshold).flatten().tolist()
    if not loud:
        return mask  # UVR's version fails on this and leaves the mask as it was
    runs, first = [], loud[0]
    for prev, cur in zip(loud, loud[1:], strict=False):
        if cur != prev + 1:
            runs.append((first, prev))
            first = cur
    runs.append((first, loud[-1]))
    frames = mask.shape[-1]
    weight = np.zeros(frames)
    ramp = np.linspace(0, 1, fade)
    previous_end = None
    try:
        for s, e in runs:
            if e - s <= min_range:
                continue
            if previous_end is not None and s - previous_end < fade:
                s = previous_end - fade * 2
            if s != 0:
                weight[s:s + fade] = ramp
            else:
                s -= fade
            if e != frames:  # `e` is the run's last frame but is used as an end, as in UVR
                weight[e - fade:e] = ramp[::-1]
            else:
                e += fade
            weight[s + fade:e - fade] = 1
            previous_end = e
    except ValueError:  # a ramp that does not fit: UVR gives up on the whole post-process
        return mask
    w = torch.from_numpy(weight).to(mask.dtype)
    return mask + w * (1 - mask)
