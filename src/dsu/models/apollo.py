"""Apollo (Li et al. 2024, "Apollo: Band-sequence Modeling for High-Quality Audio Restoration"), with
the keys, shapes and constructor keywords of JusperLee/Apollo's `look2hear/models/apollo.py` (class
Apollo: `sr`, `win` in milliseconds, `feature_dim`, `layer`).

Every audio channel is restored on its own (channels are folded into the batch). The STFT (Hann
window of `win` ms, half-window hop) is cut into 80 bands: 79 of `win_samples // 160` bins and the
rest. Each band is normalised by its energy and embedded, with its log energy, as `feature_dim`
channels. `layer` blocks then alternate a transformer across the bands of each frame (rotary
positions over the band index) with a convolution stack along time per band. Each band's output
is a complex spectrum (real and imaginary halves, GLU-gated), inverted by the ISTFT.

Module attribute names are dictated by the checkpoints' keys (`BN`, `net.<i>.band_net.weight`, `MLP`,
...); the comments say what each is. Inference only: dropouts of the reference are identities here.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn

BANDS = 80


def band_widths(win_samples: int) -> list[int]:
    """Bins per band: 79 equal bands of win/160 bins, the last one taking what is left up to Nyquist."""
    width = win_samples // 160
    return [width] * (BANDS - 1) + [win_samples // 2 + 1 - width * (BANDS - 1)]


class RMSNorm(nn.Module):
    """Root-mean-square norm over the channel axis of [batch, channels, time]."""

    def __init__(self, channels: int, eps: float = 1e-5):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(channels))
        self.eps = eps

    def forward(self, x: Tensor) -> Tensor:
        scaled = x.float() * torch.rsqrt(x.float().pow(2).mean(1, keepdim=True) + self.eps)
        return scaled.type_as(x) * self.weight[:, None]


class BandTransformer(nn.Module):
    """Pre-norm multi-head self-attention across the bands of each frame with rotary positions (the
    band index), then a gated MLP; the reference's `Roformer` (non-causal, 8 heads)."""

    cos_freq: Tensor  # buffers, registered in __init__
    sin_freq: Tensor

    def __init__(self, channels: int, heads: int = 8, theta: float = 10000.0, positions: int = 100):
        super().__init__()
        self.heads, self.head_dim = heads, channels // heads
        cos, sin = self._rotary_tables(self.head_dim, theta, positions)
        self.register_buffer("cos_freq", cos)   # [positions, head_dim], stored in checkpoints
        self.register_buffer("sin_freq", sin)
        self.input_norm = RMSNorm(channels)
        self.weight = nn.Conv1d(channels, 3 * channels, 1, bias=False)   # q, k, v of every head
        self.output = nn.Conv1d(channels, channels, 1, bias=False)
        self.MLP = nn.Sequential(RMSNorm(channels), nn.Conv1d(channels, 8 * channels, 1, bias=False), nn.SiLU())
        self.MLP_output = nn.Conv1d(4 * channels, channels, 1, bias=False)

    @staticmethod
    def _rotary_tables(dim: int, theta: float, positions: int) -> tuple[Tensor, Tensor]:
        """cos/sin of position * theta^(-2i/dim), each frequency repeated for its pair of features."""
        freqs = 1.0 / (theta ** (torch.arange(0, dim, 2)[:dim // 2] / dim))
        angles = torch.arange(positions)[:, None] * freqs[None]

        def pairwise(t: Tensor) -> Tensor:
            return rearrange(torch.stack([t, t], -1), "p f two -> p (f two)")
        return pairwise(torch.cos(angles)), pairwise(torch.sin(angles))

    def rotate(self, x: Tensor) -> Tensor:
        """Rotary embedding of [..., bands, head_dim]: pairs (a, b) -> (a cos - b sin, b cos + a sin)."""
        n = x.shape[-2]
        a, b = rearrange(x, "... (f two) -> ... f two", two=2).unbind(-1)
        swapped = rearrange(torch.stack([-b, a], -1), "... f two -> ... (f two)")
        return x * self.cos_freq[:n] + swapped * self.sin_freq[:n]

    def forward(self, x: Tensor) -> Tensor:
        """[batch, channels, bands] -> same."""
        qkv = rearrange(self.weight(self.input_norm(x)), "b (h d) n -> b h n d", h=self.heads)
        q, k, v = qkv.split(self.head_dim, dim=-1)
        attended = F.scaled_dot_product_attention(self.rotate(q).contiguous(), self.rotate(k).contiguous(),
                                                  v.contiguous())
        x = x + self.output(rearrange(attended, "b h n d -> b (h d) n"))
        # the reference's MLP ends in SiLU and its gate goes through SiLU once more
        gate, value = self.MLP(x).chunk(2, dim=1)
        return x + self.MLP_output(F.silu(gate) * value)


class ConvBlock(nn.Module):
    """Residual depthwise convolution along time, norm, pointwise expansion, SiLU, pointwise back
    (the reference's non-causal `ConvActNorm1d`)."""

    def __init__(self, channels: int, hidden: int, kernel: int = 7):
        super().__init__()
        self.conv = nn.Sequential(nn.Conv1d(channels, channels, kernel, padding=(kernel - 1) // 2, groups=channels),
                                  RMSNorm(channels), nn.Conv1d(channels, hidden, 1), nn.SiLU(),
                                  nn.Conv1d(hidden, channels, 1))

    def forward(self, x: Tensor) -> Tensor:
        return x + self.conv(x)


class TimeConvolutions(nn.Module):
    """Three residual convolution blocks along time (the reference's `ICB`)."""

    def __init__(self, channels: int, kernel: int = 7):
        super().__init__()
        self.blocks = nn.Sequential(*(ConvBlock(channels, 4 * channels, kernel) for _ in range(3)))

    def forward(self, x: Tensor) -> Tensor:
        return self.blocks(x)


class BandSequenceBlock(nn.Module):
    """Across bands per frame, then along time per band (the reference's `BSNet`)."""

    def __init__(self, channels: int, kernel: int = 7):
        super().__init__()
        self.band_net = BandTransformer(channels)
        self.seq_net = TimeConvolutions(channels, kernel)

    def forward(self, x: Tensor) -> Tensor:
        """[batch, bands, channels, frames] -> same."""
        b, n = x.shape[:2]
        across_bands = self.band_net(rearrange(x, "b n c t -> (b t) c n"))
        along_time = rearrange(across_bands, "(b t) c n -> (b n) c t", b=b)
        return rearrange(self.seq_net(along_time), "(b n) c t -> b n c t", n=n)


class Apollo(nn.Module):
    def __init__(self, sr: int, win: float, feature_dim: int, layer: int):
        super().__init__()
        self.sr = sr
        self.win_samples = int(sr * win // 1000)
        self.hop = self.win_samples // 2
        self.feature_dim = feature_dim
        self.eps = torch.finfo(torch.float32).eps
        self.widths = band_widths(self.win_samples)
        if min(self.widths) < 1:
            raise ValueError(f"a {win} ms window at {sr} Hz has too few bins for {BANDS} bands")
        # per band: [normalised real, normalised imaginary, log energy] -> feature_dim
        self.BN = nn.ModuleList(nn.Sequential(RMSNorm(2 * w + 1), nn.Conv1d(2 * w + 1, feature_dim, 1))
                                for w in self.widths)
        self.net = nn.Sequential(*(BandSequenceBlock(feature_dim) for _ in range(layer)))
        # per band: feature_dim -> GLU-gated [real, imaginary] of its bins
        self.output = nn.ModuleList(nn.Sequential(RMSNorm(feature_dim), nn.Conv1d(feature_dim, 4 * w, 1),
                                                  nn.GLU(dim=1))
                                    for w in self.widths)

    def _window(self, like: Tensor) -> Tensor:
        return torch.hann_window(self.win_samples, device=like.device)

    def embed_bands(self, spec: Tensor) -> Tensor:
        """view_as_real of the spectrum, [batch, bins, frames, 2] -> [batch, bands, feature_dim, frames]."""
        features = []
        for band, embed in zip(spec.split(self.widths, dim=1), self.BN, strict=True):
            real, imag = band[..., 0], band[..., 1]
            # |z|^2 as re^2 + im^2 (OpenVINO has no hypot): within rounding of the complex abs squared
            energy = ((real * real + imag * imag).sum(1) + self.eps).sqrt()[:, None]
            features.append(embed(torch.cat([real / energy, imag / energy, torch.log(energy)], 1)))
        return torch.stack(features, 1)

    def core(self, spec: Tensor) -> Tensor:
        """Real tensors only, what a backend runs: view_as_real of the spectrum [batch, bins, frames, 2]
        -> the restored spectrum, same shape (each band's projection as real/imag, concatenated)."""
        features = self.net(self.embed_bands(spec))
        bands = [rearrange(project(features[:, k]), "b (ri f) t -> b f t ri", ri=2, f=width)
                 for k, (width, project) in enumerate(zip(self.widths, self.output, strict=True))]
        return torch.cat(bands, 1)

    def forward(self, audio: Tensor, core=None) -> Tensor:
        """[batch, channels, samples] -> restored [batch, channels, samples]; `core` runs `self.core`
        (a backend's runner, default the module itself)."""
        batch, samples = audio.shape[0], audio.shape[-1]
        mono = rearrange(audio, "b c s -> (b c) s")
        spec = torch.stft(mono, n_fft=self.win_samples, hop_length=self.hop, window=self._window(audio),
                          return_complex=True)
        out = (core or self.core)(torch.view_as_real(spec))
        restored = torch.istft(torch.complex(out[..., 0], out[..., 1]), n_fft=self.win_samples, hop_length=self.hop,
                               window=self._window(audio), length=samples)
        return rearrange(restored, "(b c) s -> b c s", b=batch)
