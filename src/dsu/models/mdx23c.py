"""MDX23C (Kim et al., TFC-TDF-U-Net v3 of the Sound Demixing Challenge 2023), with the keys, shapes and
configuration of MSST's `models/mdx23c_tfc_tdf_v3.py` (class TFC_TDF_net, `model_type: mdx23c`).

The STFT (Hann window) is cut to its lowest `dim_f` bins, stacked as channels (audio channel,
real/imaginary) and folded into `num_subbands` frequency sub-bands as more channels. A U-Net of TFC-TDF
blocks (3x3 time-frequency convolutions around a bottlenecked fully connected layer along frequency)
runs over [time, frequency]; its output, multiplied by the first convolution's, is merged with the
mixture's spectrogram into every target's spectrogram (no masking), zero above `dim_f`, and inverted.

MSST builds this model from the whole config (it reads `audio` and `training` too). Family glue:
`MDX23C.from_config(config)` for an MSST config dict, which reads `model.*`, `audio.n_fft`,
`audio.hop_length`, `audio.dim_f`, `audio.num_channels` and the targets (`training.target_instrument`
when set, else `training.instruments`), and ignores everything else as MSST does.
forward(mix [batch, num_channels, samples]) -> [batch, num_targets, num_channels, samples], the stem
axis kept even for one target (as MSST). The output has the input's length; it equals MSST's when the
length is a multiple of hop_length (MSST's chunks are: `audio.chunk_size` = hop_length * (dim_t - 1)).
The U-Net needs the number of STFT frames, samples // hop_length + 1, to be a multiple of
scale[0] ** num_scales (dim_t is).
"""
from __future__ import annotations

from collections.abc import Iterable, Mapping
from functools import partial
from typing import cast

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn


def norm_layer(norm: str, channels: int) -> nn.Module:
    """MSST's `model.norm` names; anything else means no normalisation."""
    if norm == "BatchNorm":
        return nn.BatchNorm2d(channels)
    if norm == "InstanceNorm":
        return nn.InstanceNorm2d(channels, affine=True)
    if "GroupNorm" in norm:
        return nn.GroupNorm(int(norm.replace("GroupNorm", "")), channels)
    return nn.Identity()


def activation(act: str) -> nn.Module:
    """MSST's `model.act` names: gelu, relu, or elu<alpha> (e.g. elu1.0)."""
    if act == "gelu":
        return nn.GELU()
    if act == "relu":
        return nn.ReLU()
    if act.startswith("elu"):
        return nn.ELU(float(act[3:]))
    raise ValueError(f"model.act {act!r} is not one of gelu, relu, elu<alpha>")


def pre_activated(norm, act, layer: nn.Module) -> nn.Sequential:
    return nn.Sequential(norm(), act(), layer)


class TFCTDFBlock(nn.Module):
    """Time-frequency convolution, residual fully connected layers along frequency, convolution; plus a
    1x1 shortcut around it all."""

    def __init__(self, dim_in: int, dim: int, freqs: int, bottleneck: int, norm, act):
        super().__init__()
        self.tfc1 = pre_activated(partial(norm, dim_in), act, nn.Conv2d(dim_in, dim, 3, 1, 1, bias=False))
        self.tdf = nn.Sequential(
            norm(dim), act(), nn.Linear(freqs, freqs // bottleneck, bias=False),
            norm(dim), act(), nn.Linear(freqs // bottleneck, freqs, bias=False))
        self.tfc2 = pre_activated(partial(norm, dim), act, nn.Conv2d(dim, dim, 3, 1, 1, bias=False))
        self.shortcut = nn.Conv2d(dim_in, dim, 1, 1, 0, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        shortcut = self.shortcut(x)
        x = self.tfc1(x)
        x = x + self.tdf(x)
        return self.tfc2(x) + shortcut


class TFCTDF(nn.Module):
    def __init__(self, dim_in: int, dim: int, depth: int, freqs: int, bottleneck: int, norm, act):
        super().__init__()
        self.blocks = nn.ModuleList(TFCTDFBlock(dim_in if i == 0 else dim, dim, freqs, bottleneck, norm, act)
                                    for i in range(depth))

    def forward(self, x: Tensor) -> Tensor:
        for block in self.blocks:
            x = block(x)
        return x


class EncoderBlock(nn.Module):
    def __init__(self, tfc_tdf: TFCTDF, downscale: Rescale):
        super().__init__()
        self.tfc_tdf, self.downscale = tfc_tdf, downscale


class DecoderBlock(nn.Module):
    def __init__(self, upscale: Rescale, tfc_tdf: TFCTDF):
        super().__init__()
        self.upscale, self.tfc_tdf = upscale, tfc_tdf


class Rescale(nn.Module):
    """Norm, activation, then a (transposed) convolution whose kernel is its stride; the keys of MSST's
    Downscale/Upscale (`conv.0`, `conv.2`)."""

    def __init__(self, conv: nn.Module, dim_in: int, norm, act):
        super().__init__()
        self.conv = pre_activated(partial(norm, dim_in), act, conv)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(x)


class MDX23C(nn.Module):
    window: Tensor  # a buffer, registered in __init__

    def __init__(
        self,
        *,
        n_fft: int,
        hop_length: int,
        dim_f: int,
        num_targets: int,
        audio_channels: int = 2,
        num_subbands: int,
        num_scales: int,
        scale: tuple[int, int],
        num_blocks_per_scale: int,
        num_channels: int,
        growth: int,
        bottleneck_factor: int,
        norm: str,
        act: str,
    ):
        super().__init__()
        scale = cast("tuple[int, int]", tuple(scale))  # configs give a list
        if dim_f > n_fft // 2 + 1 or dim_f % num_subbands:
            raise ValueError(f"audio.dim_f={dim_f} must be at most n_fft // 2 + 1 = {n_fft // 2 + 1} and a "
                             f"multiple of model.num_subbands={num_subbands}")
        self.n_fft, self.hop_length, self.dim_f = n_fft, hop_length, dim_f
        self.frames_multiple = scale[0] ** num_scales
        self.num_targets, self.audio_channels, self.num_subbands = num_targets, audio_channels, num_subbands
        self.register_buffer("window", torch.hann_window(n_fft, periodic=True), persistent=False)

        norm_of = partial(norm_layer, norm)
        act_of = partial(activation, act)
        dim_spec = num_subbands * audio_channels * 2
        dim, freqs = num_channels, dim_f // num_subbands

        self.first_conv = nn.Conv2d(dim_spec, dim, 1, 1, 0, bias=False)
        self.encoder_blocks = nn.ModuleList()
        for _ in range(num_scales):
            self.encoder_blocks.append(EncoderBlock(
                TFCTDF(dim, dim, num_blocks_per_scale, freqs, bottleneck_factor, norm_of, act_of),
                Rescale(nn.Conv2d(dim, dim + growth, scale, scale, bias=False), dim, norm_of, act_of)))
            dim, freqs = dim + growth, freqs // scale[1]
        self.bottleneck_block = TFCTDF(dim, dim, num_blocks_per_scale, freqs, bottleneck_factor, norm_of, act_of)
        self.decoder_blocks = nn.ModuleList()
        for _ in range(num_scales):
            upscale = Rescale(nn.ConvTranspose2d(dim, dim - growth, scale, scale, bias=False), dim, norm_of, act_of)
            dim, freqs = dim - growth, freqs * scale[1]
            self.decoder_blocks.append(DecoderBlock(
                upscale, TFCTDF(2 * dim, dim, num_blocks_per_scale, freqs, bottleneck_factor, norm_of, act_of)))
        self.final_conv = nn.Sequential(
            nn.Conv2d(dim + dim_spec, dim, 1, 1, 0, bias=False),
            act_of(),
            nn.Conv2d(dim, num_targets * dim_spec, 1, 1, 0, bias=False))

    @classmethod
    def from_config(cls, config: Mapping) -> MDX23C:
        """The model an MSST config dict (`audio`, `model`, `training` sections) describes."""
        audio, model, training = config["audio"], config["model"], config["training"]
        targets = [training["target_instrument"]] if training.get("target_instrument") else training["instruments"]
        return cls(
            n_fft=audio["n_fft"], hop_length=audio["hop_length"], dim_f=audio["dim_f"],
            audio_channels=audio.get("num_channels", 2), num_targets=len(targets),
            **{key: model[key] for key in ("num_subbands", "num_scales", "scale", "num_blocks_per_scale",
                                           "num_channels", "growth", "bottleneck_factor", "norm", "act")})

    def forward(self, mix: Tensor, core=None) -> Tensor:
        """`core`: what runs `self.core` (a backend's compiled copy of it); None: this module."""
        length = mix.shape[-1]
        if (length // self.hop_length + 1) % self.frames_multiple:
            raise ValueError(f"MDX23C needs samples // hop_length + 1 to be a multiple of {self.frames_multiple} "
                             f"(e.g. hop_length * (dim_t - 1) samples), got {length} samples")
        spec = torch.stft(rearrange(mix, "b c t -> (b c) t"), self.n_fft, self.hop_length, window=self.window,
                          center=True, return_complex=True)[:, :self.dim_f]
        x = (core or self.core)(rearrange(torch.view_as_real(spec), "(b c) (k f) t ri -> b (c ri k) t f",
                                          c=self.audio_channels, k=self.num_subbands))
        x = rearrange(x, "b (s c ri k) t f -> (b s c) (k f) t ri", s=self.num_targets, c=self.audio_channels,
                      ri=2, k=self.num_subbands)
        x = F.pad(x.float(), (0, 0, 0, 0, 0, self.n_fft // 2 + 1 - self.dim_f))  # zero above dim_f
        out = torch.istft(torch.view_as_complex(x.contiguous()), self.n_fft, self.hop_length, window=self.window,
                          center=True, length=length)
        return rearrange(out, "(b s c) t -> b s c t", s=self.num_targets, c=self.audio_channels)

    def core(self, mix_spec: Tensor) -> Tensor:
        """The network between the spectrogram and its inverse: [batch, (channels real/imag subbands),
        frames, bins] -> [batch, (targets channels real/imag subbands), frames, bins]."""
        x = first = self.first_conv(mix_spec)
        skips = []
        for block in cast("Iterable[EncoderBlock]", self.encoder_blocks):
            x = block.tfc_tdf(x)
            skips.append(x)
            x = block.downscale(x)
        x = self.bottleneck_block(x)
        for up_block in cast("Iterable[DecoderBlock]", self.decoder_blocks):
            x = up_block.tfc_tdf(torch.cat([up_block.upscale(x), skips.pop()], dim=1))
        return self.final_conv(torch.cat([mix_spec, x * first], dim=1))  # the product reduces artifacts
