"""SCNet (Tong et al. 2024, "SCNet: Sparse Compression Network for Music Source Separation"), with the
keys, shapes and config keywords of MSST's `models/scnet/scnet.py` (class SCNet, `model_type: scnet`;
not `scnet_unofficial`, `scnet_tran` or `scnet_masked`, which are other architectures).

The complex STFT (rectangular window, as the reference) is stacked as channels (audio channel,
real/imaginary). Each encoder block splits the frequency axis into a low, mid and high band, downsamples
each with its own strided convolution (sparse compression), runs a residual 1-D convolution stack along
time per band and a global 2-D convolution. A dual-path LSTM network alternates along frequency and time,
every second layer in the time-Fourier domain. The decoder fuses the skips and upsamples band by band;
its last layer emits the stems' complex spectrograms directly (no masking), which are inverted.

Family glue: `SCNet(**config["model"])` for an MSST config dict; forward(mix [batch, audio_channels,
samples]) -> [batch, len(sources), audio_channels, samples], the stem axis kept even for one source (as
MSST's SCNet). Any input length works (padded internally, output cropped to the input's length).
`inference.normalize` (the mix scaled by its mono mean/std before, the stems scaled back after) is
MSST demix's job, not the model's.
"""
from __future__ import annotations

import math
from collections.abc import Iterable
from typing import cast

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn


def band_edges(bins: int, ratios: tuple[float, float, float]) -> list[tuple[int, int]]:
    """The low/mid/high frequency ranges of `bins` rows; the ratios' float sums as the reference rounds them."""
    low, mid = math.ceil(bins * ratios[0]), math.ceil(bins * (ratios[0] + ratios[1]))
    return [(0, low), (low, mid), (mid, bins)]


class ConvolutionModule(nn.Module):
    """Residual 1-D convolution layers along time: GLU pointwise, depthwise, swish, pointwise back."""

    def __init__(self, channels: int, depth: int, compress: float, kernel: int):
        super().__init__()
        if kernel % 2 != 1:
            raise ValueError(f"conv_kernel must be odd, got {kernel}")
        hidden = int(channels / compress)
        self.layers = nn.ModuleList(
            nn.Sequential(
                nn.GroupNorm(1, channels),
                nn.Conv1d(channels, 2 * hidden, kernel, padding=kernel // 2),
                nn.GLU(dim=1),
                nn.Conv1d(hidden, hidden, kernel, padding=kernel // 2, groups=hidden),
                nn.GroupNorm(1, hidden),
                nn.SiLU(),
                nn.Conv1d(hidden, channels, 1),
            )
            for _ in range(abs(depth)))

    def forward(self, x: Tensor) -> Tensor:
        for layer in self.layers:
            x = x + layer(x)
        return x


class SparseDown(nn.Module):
    """Each frequency band downsampled by its own (kernel, 1) / (stride, 1) convolution."""

    def __init__(self, dim_in: int, dim_out: int, ratios, strides, kernels):
        super().__init__()
        self.ratios, self.strides, self.kernels = tuple(ratios), tuple(strides), tuple(kernels)
        self.convs = nn.ModuleList(nn.Conv2d(dim_in, dim_out, (k, 1), (s, 1))
                                   for s, k in zip(strides, kernels, strict=False))

    def forward(self, x: Tensor) -> tuple[list[Tensor], list[int]]:
        bands, sizes = [], []
        for conv, stride, kernel, (lo, hi) in zip(self.convs, self.strides, self.kernels,
                                                  band_edges(x.shape[2], self.ratios), strict=False):
            size = hi - lo
            # stride 1 keeps the size ("same" convolution); otherwise round the size up to the stride
            pad = kernel - 1 if stride == 1 else -size % stride
            bands.append(conv(F.pad(x[:, :, lo:hi], (0, 0, pad // 2, pad - pad // 2))))
            sizes.append(size)
        return bands, sizes


class SparseUp(nn.Module):
    """Each compressed band upsampled by its own transposed convolution, centre-cropped to its size."""

    def __init__(self, dim_in: int, dim_out: int, strides, kernels):
        super().__init__()
        self.convtrs = nn.ModuleList(nn.ConvTranspose2d(dim_in, dim_out, (k, 1), (s, 1))
                                     for s, k in zip(strides, kernels, strict=False))

    def forward(self, x: Tensor, compressed: list[int], sizes: list[int]) -> Tensor:
        bands = []
        for convtr, part, size in zip(self.convtrs, x.split(compressed, dim=2), sizes, strict=False):
            band = convtr(part)
            trim = abs(size - band.shape[2]) // 2
            bands.append(band[:, :, trim:trim + size])
        return torch.cat(bands, dim=2)


class Fusion(nn.Module):
    """Adds the encoder skip, then a gated 3x3 convolution."""

    def __init__(self, dim: int):
        super().__init__()
        self.conv = nn.Conv2d(2 * dim, 2 * dim, 3, padding=1)

    def forward(self, x: Tensor, skip: Tensor) -> Tensor:
        x = x + skip
        return F.glu(self.conv(torch.cat([x, x], dim=1)), dim=1)


class EncoderBlock(nn.Module):
    def __init__(self, dim_in: int, dim_out: int, band: dict, conv_depths, compress: float, conv_kernel: int):
        super().__init__()
        self.SDlayer = SparseDown(dim_in, dim_out, **band)
        self.conv_modules = nn.ModuleList(ConvolutionModule(dim_out, depth, compress, conv_kernel)
                                          for depth in conv_depths)
        self.globalconv = nn.Conv2d(dim_out, dim_out, 3, padding=1)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor, list[int], list[int]]:
        bands, sizes = self.SDlayer(x)
        bands = [F.gelu(rearrange(conv(rearrange(band, "b c f t -> (b f) c t")), "(b f) c t -> b c f t",
                                  b=band.shape[0]))
                 for conv, band in zip(self.conv_modules, bands, strict=False)]
        skip = torch.cat(bands, dim=2)
        return self.globalconv(skip), skip, [band.shape[2] for band in bands], sizes


class DualPathRNN(nn.Module):
    """A bidirectional LSTM along frequency, then one along time, each pre-normed and residual."""

    def __init__(self, dim: int, expand: int):
        super().__init__()
        hidden = dim * expand
        self.lstm_layers = nn.ModuleList(nn.LSTM(dim, hidden, batch_first=True, bidirectional=True)
                                         for _ in range(2))
        self.linear_layers = nn.ModuleList(nn.Linear(2 * hidden, dim) for _ in range(2))
        self.norm_layers = nn.ModuleList(nn.GroupNorm(1, dim) for _ in range(2))

    def forward(self, x: Tensor) -> Tensor:
        batch = x.shape[0]
        layers = zip(self.norm_layers, self.lstm_layers, self.linear_layers, strict=True)
        for axis, (norm, lstm, linear) in enumerate(layers):
            seq, other = ("f", "t") if axis == 0 else ("t", "f")
            y = rearrange(norm(x), f"b c f t -> (b {other}) {seq} c")
            y = linear(lstm(y)[0])
            x = x + rearrange(y, f"(b {other}) {seq} c -> b c f t", b=batch)
        return x


class SeparationNet(nn.Module):
    """Dual-path layers, alternately on the features and on their real FFT along time (doubled channels)."""

    def __init__(self, channels: int, expand: int, num_layers: int):
        super().__init__()
        self.dp_modules = nn.ModuleList(DualPathRNN(channels * (2 if i % 2 else 1), expand)
                                        for i in range(num_layers))

    def forward(self, x: Tensor) -> Tensor:
        for i, layer in enumerate(self.dp_modules):
            x = layer(x).float()  # the FFTs run in float32 even under autocast
            if i % 2 == 0:
                spectrum = torch.fft.rfft(x, dim=3, norm="ortho")
                x = torch.cat([spectrum.real, spectrum.imag], dim=1)
            else:
                real, imag = x.chunk(2, dim=1)
                x = torch.fft.irfft(torch.complex(real, imag), dim=3, norm="ortho")
        return x


class SCNet(nn.Module):
    window: Tensor  # a buffer, registered in __init__

    def __init__(
        self,
        sources: tuple[str, ...] = ("drums", "bass", "other", "vocals"),
        audio_channels: int = 2,
        dims: tuple[int, ...] = (4, 32, 64, 128),
        nfft: int = 4096,
        hop_size: int = 1024,
        win_size: int = 4096,
        normalized: bool = True,
        band_SR: tuple[float, float, float] = (0.175, 0.392, 0.433),
        band_stride: tuple[int, int, int] = (1, 4, 16),
        band_kernel: tuple[int, int, int] = (3, 4, 16),
        conv_depths: tuple[int, int, int] = (3, 2, 1),
        compress: float = 4,
        conv_kernel: int = 3,
        num_dplayer: int = 6,
        expand: int = 1,
    ):
        super().__init__()
        dims = tuple(dims)
        if dims[0] != 2 * audio_channels:
            raise ValueError(f"dims[0] must be 2 * audio_channels = {2 * audio_channels} (real and imaginary "
                             f"part of each channel), got {dims[0]}")
        if not len(band_SR) == len(band_stride) == len(band_kernel) == len(conv_depths) == 3:
            raise ValueError("band_SR, band_stride, band_kernel and conv_depths need one value per band "
                             "(low, mid, high)")
        self.sources = list(sources)
        self.audio_channels = audio_channels
        self.hop_size = hop_size
        self.nfft, self.win_size, self.normalized = nfft, win_size, normalized
        self.register_buffer("window", torch.ones(win_size), persistent=False)  # the reference's default

        band = dict(ratios=band_SR, strides=band_stride, kernels=band_kernel)
        self.encoder = nn.ModuleList(EncoderBlock(d_in, d_out, band, conv_depths, compress, conv_kernel)
                                     for d_in, d_out in zip(dims, dims[1:], strict=False))
        # deepest first; the shallowest one emits every source's spectrogram channels
        self.decoder = nn.ModuleList(
            nn.ModuleList([Fusion(d_out), SparseUp(d_out, d_in if i else d_in * len(self.sources),
                                                    band_stride, band_kernel)])
            for i, (d_in, d_out) in reversed(list(enumerate(zip(dims, dims[1:], strict=False)))))
        self.separation_net = SeparationNet(dims[-1], expand, num_dplayer)

    def stft(self, x: Tensor) -> Tensor:
        return torch.stft(x, self.nfft, self.hop_size, self.win_size, self.window, center=True,
                          normalized=self.normalized, return_complex=True)

    def istft(self, x: Tensor) -> Tensor:
        return torch.istft(x, self.nfft, self.hop_size, self.win_size, self.window, center=True,
                           normalized=self.normalized)

    def forward(self, mix: Tensor, core=None) -> Tensor:
        """`core`: what runs `self.core` (a backend's compiled copy of it); None: this module."""
        length = mix.shape[-1]
        # an even number of STFT frames, for the separation network's real FFT along time
        pad = self.hop_size - length % self.hop_size
        if (length + pad) // self.hop_size % 2 == 0:
            pad += self.hop_size
        spec = self.stft(rearrange(F.pad(mix, (0, pad)), "b c t -> (b c) t"))
        x = (core or self.core)(rearrange(torch.view_as_real(spec), "(b c) f t ri -> b (c ri) f t",
                                          c=self.audio_channels))
        x = rearrange(x, "b (s c ri) f t -> (b s c) f t ri", s=len(self.sources), ri=2)
        out = self.istft(torch.view_as_complex(x.float().contiguous()))
        return rearrange(out[:, :length], "(b s c) t -> b s c t", s=len(self.sources), c=self.audio_channels)

    def core(self, x: Tensor) -> Tensor:
        """The network between the spectrogram and its inverse: [batch, (channels real/imag), bins,
        frames] -> [batch, (sources channels real/imag), bins, frames]."""
        skips = []
        for block in self.encoder:
            x, skip, compressed, sizes = block(x)
            skips.append((skip, compressed, sizes))
        x = self.separation_net(x)
        decoder = cast("Iterable[nn.ModuleList]", self.decoder)  # [Fusion, SparseUp] pairs, one per encoder block
        for (fusion, up), (skip, compressed, sizes) in zip(decoder, reversed(skips), strict=True):
            x = up(fusion(x, skip), compressed, sizes)
        return x
