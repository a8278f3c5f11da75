"""Pieces shared by BS-RoFormer and Mel-Band-RoFormer (Lu et al. 2023; Wang et al. 2023), laid out
so that the module paths, and so the state-dict keys, are those of MSST's implementation:
RMSNorm, rotary position embedding, gated attention, the linear (cross-covariance) attention,
axial transformers, the band split, the per-band mask estimators and the STFT glue.

Inference only: dropout modules are kept (their indices are part of the keys), the training losses are
not implemented.
"""
from __future__ import annotations

from collections.abc import Iterable
from typing import Any, cast

import torch
import torch.nn.functional as F
from einops import pack, rearrange, repeat, unpack
from einops.layers.torch import Rearrange
from torch import Tensor, nn


class RMSNorm(nn.Module):
    def __init__(self, dim: int):
        super().__init__()
        self.scale = dim ** 0.5
        self.gamma = nn.Parameter(torch.ones(dim))

    def forward(self, x: Tensor) -> Tensor:
        return F.normalize(x, dim=-1) * self.scale * self.gamma


class RotaryEmbedding(nn.Module):
    """Rotary position embedding over the second to last axis, as `rotary_embedding_torch` applies it
    with its defaults: frequencies theta^(-2i/dim) for theta = 10000, each used by an adjacent pair of
    features. `freqs` is a (frozen) parameter because checkpoints store it."""

    def __init__(self, dim: int, theta: float = 10000.0):
        super().__init__()
        freqs = 1.0 / theta ** (torch.arange(0, dim, 2)[:dim // 2].float() / dim)
        self.freqs = nn.Parameter(freqs, requires_grad=False)

    def forward(self, t: Tensor) -> Tensor:
        # Positions in the frequencies' dtype: the reference takes the input's, which rounds positions
        # above 256 in bfloat16; in float16/32/64 both are exact integers, hence equal.
        positions = torch.arange(t.shape[-2], device=t.device, dtype=self.freqs.dtype)
        angles = repeat(torch.outer(positions, self.freqs), "n f -> n (f r)", r=2)
        pairs = rearrange(t, "... (f r) -> ... f r", r=2)
        x1, x2 = pairs.unbind(dim=-1)
        rotated_half = rearrange(torch.stack((-x2, x1), dim=-1), "... f r -> ... (f r)")
        return (t * angles.cos() + rotated_half * angles.sin()).type(t.dtype)


class Attention(nn.Module):
    """Multi-head self-attention with rotary positions and a sigmoid gate per head."""

    def __init__(self, dim: int, heads: int = 8, dim_head: int = 64, dropout: float = 0.0,
                 rotary_embed: RotaryEmbedding | None = None):
        super().__init__()
        self.heads = heads
        self.dropout = dropout
        self.rotary_embed = rotary_embed
        dim_inner = heads * dim_head
        self.norm = RMSNorm(dim)
        self.to_qkv = nn.Linear(dim, dim_inner * 3, bias=False)
        self.to_gates = nn.Linear(dim, heads)
        self.to_out = nn.Sequential(nn.Linear(dim_inner, dim, bias=False), nn.Dropout(dropout))

    def forward(self, x: Tensor) -> Tensor:
        x = self.norm(x)
        q, k, v = rearrange(self.to_qkv(x), "b n (qkv h d) -> qkv b h n d", qkv=3, h=self.heads)
        if self.rotary_embed is not None:
            q, k = self.rotary_embed(q), self.rotary_embed(k)
        out = F.scaled_dot_product_attention(q, k, v, dropout_p=self.dropout if self.training else 0.0)
        out = out * rearrange(self.to_gates(x), "b n h -> b h n 1").sigmoid()
        return self.to_out(rearrange(out, "b h n d -> b n (h d)"))


class LinearAttention(nn.Module):
    """Cross-covariance attention (El-Nouby et al. 2021): attends across feature channels, so its cost
    is linear in the sequence length. L2-normalised queries and keys, a learned temperature per head."""

    def __init__(self, dim: int, heads: int = 8, dim_head: int = 32, scale: float = 8.0,
                 dropout: float = 0.0):
        super().__init__()
        self.scale = scale
        self.dropout = dropout
        dim_inner = heads * dim_head
        self.norm = RMSNorm(dim)
        self.to_qkv = nn.Sequential(nn.Linear(dim, dim_inner * 3, bias=False),
                                    Rearrange("b n (qkv h d) -> qkv b h d n", qkv=3, h=heads))
        self.temperature = nn.Parameter(torch.ones(heads, 1, 1))
        self.to_out = nn.Sequential(Rearrange("b h d n -> b n (h d)"), nn.Linear(dim_inner, dim, bias=False))

    def forward(self, x: Tensor) -> Tensor:
        q, k, v = self.to_qkv(self.norm(x))
        q, k = F.normalize(q, dim=-1), F.normalize(k, dim=-1)
        q = q * self.temperature.exp()
        out = F.scaled_dot_product_attention(q, k, v, scale=self.scale,
                                             dropout_p=self.dropout if self.training else 0.0)
        return self.to_out(out)


class FeedForward(nn.Module):
    def __init__(self, dim: int, mult: float = 4, dropout: float = 0.0):
        super().__init__()
        dim_inner = int(dim * mult)
        self.net = nn.Sequential(RMSNorm(dim), nn.Linear(dim, dim_inner), nn.GELU(), nn.Dropout(dropout),
                                 nn.Linear(dim_inner, dim), nn.Dropout(dropout))

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)


class Transformer(nn.Module):
    """Pre-norm residual blocks of (attention, feed-forward) over [batch, sequence, dim]."""

    def __init__(self, *, dim: int, depth: int, dim_head: int = 64, heads: int = 8,
                 attn_dropout: float = 0.0, ff_dropout: float = 0.0, ff_mult: float = 4,
                 norm_output: bool = True, rotary_embed: RotaryEmbedding | None = None,
                 linear_attn: bool = False):
        super().__init__()
        self.layers = nn.ModuleList()
        for _ in range(depth):
            attn: nn.Module
            if linear_attn:
                attn = LinearAttention(dim, heads=heads, dim_head=dim_head, dropout=attn_dropout)
            else:
                attn = Attention(dim, heads=heads, dim_head=dim_head, dropout=attn_dropout,
                                 rotary_embed=rotary_embed)
            self.layers.append(nn.ModuleList([attn, FeedForward(dim, mult=ff_mult, dropout=ff_dropout)]))
        self.norm = RMSNorm(dim) if norm_output else nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        for attn, ff in cast("Iterable[nn.ModuleList]", self.layers):  # built as [attn, ff] pairs above
            x = attn(x) + x
            x = ff(x) + x
        return self.norm(x)


def axial_transformers(*, dim: int, depth: int, time_transformer_depth: int, freq_transformer_depth: int,
                       linear_transformer_depth: int, norm_output: bool, dim_head: int, heads: int,
                       attn_dropout: float, ff_dropout: float) -> nn.ModuleList:
    """`depth` blocks of [optional linear transformer over all tokens,] transformer along time,
    transformer along bands. One rotary embedding per axis, shared by all blocks."""
    common: dict[str, Any] = dict(dim=dim, dim_head=dim_head, heads=heads, attn_dropout=attn_dropout,
                                  ff_dropout=ff_dropout, norm_output=norm_output)
    time_rotary, freq_rotary = RotaryEmbedding(dim_head), RotaryEmbedding(dim_head)
    blocks = nn.ModuleList()
    for _ in range(depth):
        block = []
        if linear_transformer_depth > 0:
            block.append(Transformer(depth=linear_transformer_depth, linear_attn=True, **common))
        block.append(Transformer(depth=time_transformer_depth, rotary_embed=time_rotary, **common))
        block.append(Transformer(depth=freq_transformer_depth, rotary_embed=freq_rotary, **common))
        blocks.append(nn.ModuleList(block))
    return blocks


def run_axial(blocks: nn.ModuleList, x: Tensor, skip_connection: bool) -> Tensor:
    """x: [batch, time, bands, dim]. With `skip_connection`, each block's input also receives the
    outputs of all earlier blocks."""
    earlier: list[Tensor] = []
    for block in cast("Iterable[nn.ModuleList]", blocks):  # as axial_transformers builds them
        *linear, time_transformer, freq_transformer = block
        if linear:
            x, shape = pack([x], "b * d")
            x, = unpack(linear[0](x), shape, "b * d")
        if skip_connection:
            for y in earlier:
                x = x + y
        x = rearrange(x, "b t f d -> b f t d")
        x, shape = pack([x], "* t d")
        x, = unpack(time_transformer(x), shape, "* t d")
        x = rearrange(x, "b f t d -> b t f d")
        x, shape = pack([x], "* f d")
        x, = unpack(freq_transformer(x), shape, "* f d")
        if skip_connection:
            earlier.append(x)
    return x


class BandSplit(nn.Module):
    """Cuts [..., sum(dim_inputs)] into bands and projects each (normed) band to `dim`:
    -> [..., bands, dim]."""

    def __init__(self, dim: int, dim_inputs: tuple[int, ...]):
        super().__init__()
        self.dim_inputs = dim_inputs
        self.to_features = nn.ModuleList(nn.Sequential(RMSNorm(d), nn.Linear(d, dim)) for d in dim_inputs)

    def forward(self, x: Tensor) -> Tensor:
        bands = x.split(self.dim_inputs, dim=-1)
        return torch.stack([net(band) for band, net in zip(bands, self.to_features, strict=True)], dim=-2)


def mlp(dim_in: int, dim_out: int, dim_hidden: int, hidden_layers: int) -> nn.Sequential:
    """Linear layers with tanh between them, `hidden_layers` hidden widths of `dim_hidden`."""
    dims = (dim_in, *(dim_hidden,) * hidden_layers, dim_out)
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(zip(dims[:-1], dims[1:], strict=True)):
        if i:
            layers.append(nn.Tanh())
        layers.append(nn.Linear(a, b))
    return nn.Sequential(*layers)


class MaskEstimator(nn.Module):
    """Per band, an MLP from `dim` features to a GLU-gated mask of that band's input width;
    [..., bands, dim] -> [..., sum(dim_inputs)]."""

    def __init__(self, dim: int, dim_inputs: tuple[int, ...], hidden_layers: int, mlp_expansion_factor: int = 4):
        super().__init__()
        self.to_freqs = nn.ModuleList(
            nn.Sequential(mlp(dim, d * 2, dim * mlp_expansion_factor, hidden_layers), nn.GLU(dim=-1))
            for d in dim_inputs)

    def forward(self, x: Tensor) -> Tensor:
        return torch.cat([net(band) for band, net in zip(x.unbind(dim=-2), self.to_freqs, strict=True)], dim=-1)


class STFT:
    """The models' spectrogram glue: torch.stft/istft with a periodic Hann window of `win_length`,
    centred frames, channels interleaved into the frequency axis ((f s): bin-major)."""

    def __init__(self, n_fft: int, hop_length: int, win_length: int, normalized: bool):
        self.kwargs: dict[str, Any] = dict(n_fft=n_fft, hop_length=hop_length, win_length=win_length,
                                           normalized=normalized)
        self.win_length = win_length
        self.bins = n_fft // 2 + 1
        self._windows: dict[tuple, Tensor] = {}

    def window(self, like: Tensor) -> Tensor:
        key = (like.device, like.dtype)
        if key not in self._windows:  # made once: a fresh window per chunk costs as much as a layer
            self._windows[key] = torch.hann_window(self.win_length, device=like.device, dtype=like.dtype)
        return self._windows[key]

    def __call__(self, audio: Tensor) -> Tensor:
        """[batch, channels, samples] -> complex [batch, (bins channels), frames]."""
        flat, shape = pack([audio], "* t")
        spec = torch.stft(flat, **self.kwargs, window=self.window(flat), return_complex=True)
        spec, = unpack(spec, shape, "* f t")
        return rearrange(spec, "b s f t -> b (f s) t")

    def inverse(self, spec: Tensor, channels: int, zero_dc: bool, length: int | None) -> Tensor:
        """complex [batch, stems, (bins channels), frames] -> [batch, stems, channels, samples]."""
        stems = spec.shape[1]
        spec = rearrange(spec, "b n (f s) t -> (b n s) f t", s=channels)
        if zero_dc:
            spec = spec.index_fill(1, torch.tensor(0, device=spec.device), 0.0)
        audio = torch.istft(spec, **self.kwargs, window=self.window(spec.real), length=length)
        return rearrange(audio, "(b n s) t -> b n s t", n=stems, s=channels)


def check_channels(mix: Tensor, stereo: bool) -> Tensor:
    """[batch, samples] or [batch, channels, samples] -> [batch, channels, samples], channels as the
    model was trained for."""
    if mix.dim() == 2:
        mix = mix[:, None]
    if mix.shape[1] != (2 if stereo else 1):
        raise ValueError(f"this model takes {'stereo' if stereo else 'mono'} audio, got {mix.shape[1]} channels")
    return mix


def estimate_masks(estimators: nn.ModuleList, x: Tensor) -> Tensor:
    """[batch, time, bands, dim] -> real masks [batch, stems, time, (f c)], one stem per estimator
    (f as the estimators' outputs, c the real/imaginary pair): the end of a RoFormer's core."""
    return torch.stack([estimate(x) for estimate in estimators], dim=1)


def complex_masks(masks: Tensor) -> Tensor:
    """`estimate_masks`' real masks -> complex [batch, stems, f, time]. Complex in float32 at least:
    reduced precision complex is poorly supported, and the reference promotes to the spectrogram's
    complex64."""
    masks = rearrange(masks, "b n t (f c) -> b n f t c", c=2)
    if masks.dtype in (torch.float16, torch.bfloat16):
        masks = masks.float()
    return torch.view_as_complex(masks.contiguous())
