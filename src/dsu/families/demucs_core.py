"""demucs' networks cut in three around what a backend can compile: `features` (the padding to the
training length, the complex STFT, the normalisations: shapes and complex numbers), the `core` (the
encoders, HTDemucs' cross-transformer, the decoders: real tensors in and out, one or two branches) and
`synthesis` (masking, the iSTFT, de-normalisation, the sum of the branches).

`forward(model, mix, core)` runs the three on demucs' own module (its submodules and state, untouched)
with the same operations in the same order as its `forward`, so the eager core is bit-identical to it.
Plain Demucs has no STFT: its features are the normalisation and the padding to a conv-friendly length
(Python ints, which a traced graph cannot compute from its input), its core the rest of its forward.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

Core = Callable[..., Any]


def kind(model: Any) -> str:
    """"htdemucs", "hdemucs" or "demucs": which of the cuts below fits `model`."""
    from demucs.hdemucs import HDemucs
    from demucs.htdemucs import HTDemucs
    if isinstance(model, HTDemucs):
        return "htdemucs"
    return "hdemucs" if isinstance(model, HDemucs) else "demucs"


def two_branches(model: Any) -> bool:
    """Whether the core takes and returns the time branch beside the spectral one."""
    return kind(model) == "htdemucs" or (kind(model) == "hdemucs" and bool(model.hybrid))


@dataclass
class _Context:
    """What synthesis needs from features: the mix's STFT and the statistics the core's inputs were
    normalised by, the lengths to cut back to."""
    z: Tensor | None
    mean: Any
    std: Any
    meant: Tensor | None
    stdt: Tensor | None
    length: int          # the samples the iSTFT and the time branch give
    keep: int | None     # the samples before the training-length padding, None when none


def features(model: Any, mix: Tensor) -> tuple[tuple[Tensor, ...], _Context]:
    """The core's inputs for a [B, C, n] mix (spectral; time when two-branched) and the context."""
    length, keep = mix.shape[-1], None
    if kind(model) == "demucs":
        return _waveform_features(model, mix)
    if kind(model) == "htdemucs" and model.use_train_segment:
        length = int(model.segment * model.samplerate)  # eval: the network always sees its training length
        if mix.shape[-1] < length:
            keep = mix.shape[-1]
            mix = F.pad(mix, (0, length - keep))
    z = model._spec(mix)
    mag = model._magnitude(z).to(mix.device)
    mean = mag.mean(dim=(1, 2, 3), keepdim=True)
    std = mag.std(dim=(1, 2, 3), keepdim=True)
    x = (mag - mean) / (1e-5 + std)
    if not two_branches(model):
        return (x,), _Context(z, mean, std, None, None, length, keep)
    meant = mix.mean(dim=(1, 2), keepdim=True)
    stdt = mix.std(dim=(1, 2), keepdim=True)
    xt = (mix - meant) / (1e-5 + stdt)
    return (x, xt), _Context(z, mean, std, meant, stdt, length, keep)


def _waveform_features(model: Any, mix: Tensor) -> tuple[tuple[Tensor, ...], _Context]:
    x, length = mix, mix.shape[-1]
    mean: Any = 0
    std: Any = 1
    if model.normalize:
        mono = mix.mean(dim=1, keepdim=True)
        mean = mono.mean(dim=-1, keepdim=True)
        std = mono.std(dim=-1, keepdim=True)
        x = (x - mean) / (1e-5 + std)
    delta = model.valid_length(length) - length
    return (F.pad(x, (delta // 2, delta - delta // 2)),), _Context(None, mean, std, None, None, length, None)


def _waveform_core(model: Any, x: Tensor) -> Tensor:
    import julius
    if model.resample:
        x = julius.resample_frac(x, 1, 2)
    saved = []
    for encode in model.encoder:
        x = encode(x)
        saved.append(x)
    if model.lstm:
        x = model.lstm(x)
    for decode in model.decoder:
        x = decode(x + _centre(saved.pop(-1), x.shape[-1]))
    return julius.resample_frac(x, 2, 1) if model.resample else x


def _centre(x: Tensor, size: int) -> Tensor:
    """The middle `size` samples of `x`, the odd one dropped on the right."""
    extra = x.shape[-1] - size
    if extra < 0:
        raise ValueError(f"{x.shape[-1]} samples cannot be cut to {size}")
    return x[..., extra // 2:-(extra - extra // 2)] if extra else x


def core(model: Any, x: Tensor, xt: Any = None):
    """The U-Net between features and synthesis: spectral (and time) encoders, HTDemucs'
    cross-transformer at the bottom (HDemucs restarts the decoders from zeros there, as demucs does),
    the decoders; (x, xt) out when two-branched, else x."""
    hybrid = xt is not None
    saved, saved_t, lengths, lengths_t = [], [], [], []
    for idx, encode in enumerate(model.encoder):
        lengths.append(x.shape[-1])
        inject = None
        if hybrid and idx < len(model.tencoder):
            lengths_t.append(xt.shape[-1])
            tenc = model.tencoder[idx]
            xt = tenc(xt)
            if tenc.empty:  # its first conv only: from here the branches have one shape and merge
                inject = xt
            else:
                saved_t.append(xt)
        x = encode(x, inject)
        if idx == 0 and model.freq_emb is not None:
            bins = torch.arange(x.shape[-2], device=x.device)
            x = x + model.freq_emb_scale * model.freq_emb(bins).t()[None, :, :, None].expand_as(x)
        saved.append(x)
    if kind(model) == "htdemucs":
        x, xt = _bottom(model, x, xt)
    else:
        x = torch.zeros_like(x)
        if hybrid:
            xt = torch.zeros_like(x)
    offset = model.depth - len(model.tdecoder) if hybrid else 0
    for idx, decode in enumerate(model.decoder):
        x, pre = decode(x, saved.pop(-1), lengths.pop(-1))
        if hybrid and idx >= offset:
            tdec = model.tdecoder[idx - offset]
            length_t = lengths_t.pop(-1)
            if tdec.empty:  # the branches part: the time decoder starts from the spectral one's last input
                xt, _ = tdec(pre[:, :, 0], None, length_t)
            else:
                xt, _ = tdec(xt, saved_t.pop(-1), length_t)
    return (x, xt) if hybrid else x


def _bottom(model: Any, x: Tensor, xt: Tensor) -> tuple[Tensor, Tensor]:
    if not model.crosstransformer:
        return x, xt
    if model.bottom_channels:
        b, c, f, t = x.shape
        x = model.channel_upsampler(x.reshape(b, c, f * t)).reshape(b, -1, f, t)
        xt = model.channel_upsampler_t(xt)
    x, xt = model.crosstransformer(x, xt)
    if model.bottom_channels:
        b, c, f, t = x.shape
        x = model.channel_downsampler(x.reshape(b, c, f * t)).reshape(b, -1, f, t)
        xt = model.channel_downsampler_t(xt)
    return x, xt


def synthesis(model: Any, x: Tensor, xt: Tensor | None, ctx: _Context) -> Tensor:
    """[B, sources, C, n] from the core's outputs: the spectral estimate de-normalised and masked
    into the mix's STFT, back to samples, plus the de-normalised time branch."""
    sources = len(model.sources)
    if ctx.z is None:  # plain Demucs
        x = _centre(x * ctx.std + ctx.mean, ctx.length)
        return x.view(x.size(0), sources, model.audio_channels, x.size(-1))
    batch, bins, frames = ctx.mean.shape[0], ctx.z.shape[-2], ctx.z.shape[-1]
    x = x.view(batch, sources, -1, bins, frames) * ctx.std[:, None] + ctx.mean[:, None]
    device = x.device
    if device.type in ("mps", "xpu"):  # no complex numbers there: the STFT already is on the CPU
        x = x.cpu()
    out = model._ispec(model._mask(ctx.z, x), ctx.length).to(device)
    if xt is not None:
        assert ctx.stdt is not None and ctx.meant is not None
        out = xt.view(batch, sources, -1, ctx.length) * ctx.stdt[:, None] + ctx.meant[:, None] + out
    return out[..., :ctx.keep] if ctx.keep else out


def core_fn(model: Any) -> Core:
    """The callable a backend converts and runs for `model`: real tensors in and out."""
    if kind(model) == "demucs":
        return lambda x: _waveform_core(model, x)
    if two_branches(model):
        return lambda x, xt: core(model, x, xt)
    return lambda x: core(model, x)


def forward(model: Any, mix: Tensor, run: Core | None = None) -> Tensor:
    """What `model(mix)` computes, its core run by `run` (default: `core_fn(model)` eagerly)."""
    run = run or core_fn(model)
    inputs, ctx = features(model, mix)
    y = run(*inputs)
    x, xt = y if isinstance(y, tuple) else (y, None)
    return synthesis(model, x, xt, ctx)

