"""Mel-Band-RoFormer (Wang et al. 2023, "Mel-RoFormer for Vocal Separation and Vocal Melody
Transcription"), with the keys, shapes and config keywords of MSST's
`models/bs_roformer/mel_band_roformer.py` (class MelBandRoformer).

Like BS-RoFormer, but the bands are the supports of `num_bands` mel filters, so they overlap: a bin
feeds every band whose filter covers it, and its mask is the mean of those bands' estimates. Each
transformer ends in its own RMSNorm; there is no final norm.

forward(mix [batch, channels, samples]) -> [batch, num_stems, channels, samples] when num_stems > 1,
[batch, channels, samples] when num_stems == 1 (as MSST). Unless `match_input_audio_length`, the output
has (samples // stft_hop_length) * stft_hop_length samples, as the reference's inverse STFT gives.
"""
from __future__ import annotations

import numpy as np
import torch
from einops import rearrange, repeat
from torch import Tensor, nn

from .mel import mel_filterbank
from .roformer_parts import (
    STFT,
    BandSplit,
    MaskEstimator,
    axial_transformers,
    check_channels,
    complex_masks,
    estimate_masks,
    run_axial,
)


def mel_bands(sample_rate: float, n_fft: int, num_bands: int) -> np.ndarray:
    """[num_bands, n_fft // 2 + 1] bool: which STFT bins each band takes, the positive entries of the
    mel filterbank, with the DC bin forced into the first band and the Nyquist bin into the last (the
    filters leave DC out, and the last filter's Nyquist weight is a rounding-level number that may be 0)."""
    filters = mel_filterbank(sample_rate, n_fft, num_bands)
    filters[0, 0] = 1.0
    filters[-1, -1] = 1.0
    bands = filters > 0
    if not bands.any(axis=0).all():
        raise ValueError(f"num_bands={num_bands} mel bands at sample_rate={sample_rate}, stft_n_fft={n_fft} "
                         "leave some frequency bins in no band")
    return bands


class MelBandRoformer(nn.Module):
    rows: Tensor  # buffers, registered in __init__
    bands_per_bin: Tensor

    def __init__(
        self,
        dim: int,
        *,
        depth: int,
        stereo: bool = False,
        num_stems: int = 1,
        time_transformer_depth: int = 2,
        freq_transformer_depth: int = 2,
        linear_transformer_depth: int = 0,
        num_bands: int = 60,
        dim_head: int = 64,
        heads: int = 8,
        attn_dropout: float = 0.1,
        ff_dropout: float = 0.1,
        flash_attn: bool = True,  # attention always runs through scaled_dot_product_attention
        dim_freqs_in: int = 1025,  # unused by the reference too: the bins follow from stft_n_fft
        sample_rate: int = 44100,
        stft_n_fft: int = 2048,
        stft_hop_length: int = 512,
        stft_win_length: int = 2048,
        stft_normalized: bool = False,
        zero_dc: bool = True,
        mask_estimator_depth: int = 1,
        mlp_expansion_factor: int = 4,
        use_torch_checkpoint: bool = False,  # training memory saving, no effect on inference
        skip_connection: bool = False,
        match_input_audio_length: bool = False,
        sage_attention: bool = False,  # older MSST's SageAttention kernel: same maths as SDPA
        use_pope: bool = False,
        # the training loss's settings: accepted so that configs load, unused at inference
        multi_stft_resolution_loss_weight: float = 1.0,
        multi_stft_resolutions_window_sizes: tuple[int, ...] = (4096, 2048, 1024, 512, 256),
        multi_stft_hop_size: int = 147,
        multi_stft_normalized: bool = False,
    ):
        super().__init__()
        if use_pope:
            raise ValueError("use_pope (PoPE position embeddings) is not supported; only rotary ones are")
        self.stereo = stereo
        self.audio_channels = 2 if stereo else 1
        self.num_stems = num_stems
        self.skip_connection = skip_connection
        self.zero_dc = zero_dc
        self.match_input_audio_length = match_input_audio_length
        self.stft = STFT(stft_n_fft, stft_hop_length, stft_win_length, stft_normalized)

        # The layout is worked out in numpy so that building on the meta device works too.
        bands = mel_bands(sample_rate, stft_n_fft, num_bands)
        # Rows of the (f s) spectrogram each band reads, bands one after the other.
        bins = np.nonzero(bands)[1]
        rows = (bins[:, None] * self.audio_channels + np.arange(self.audio_channels)).reshape(-1)
        self.register_buffer("rows", torch.from_numpy(rows), persistent=False)
        self.register_buffer("bands_per_bin", torch.from_numpy(bands.sum(axis=0)), persistent=False)

        self.layers = axial_transformers(
            dim=dim, depth=depth, time_transformer_depth=time_transformer_depth,
            freq_transformer_depth=freq_transformer_depth, linear_transformer_depth=linear_transformer_depth,
            norm_output=True, dim_head=dim_head, heads=heads, attn_dropout=attn_dropout, ff_dropout=ff_dropout)

        band_widths = tuple(2 * int(n) * self.audio_channels for n in bands.sum(axis=1))
        self.band_split = BandSplit(dim, band_widths)
        self.mask_estimators = nn.ModuleList(
            MaskEstimator(dim, band_widths, hidden_layers=mask_estimator_depth,
                          mlp_expansion_factor=mlp_expansion_factor)
            for _ in range(num_stems))

    def forward(self, mix: Tensor, core=None) -> Tensor:
        """`core`: what runs `self.core` (a backend's compiled copy of it); None: this module."""
        mix = check_channels(mix, self.stereo)
        spec = self.stft(mix)  # [b, (f s), t] complex

        x = rearrange(torch.view_as_real(spec[:, self.rows]), "b f t c -> b t (f c)")
        masks = complex_masks((core or self.core)(x)).to(spec.dtype)
        # Sum each row's estimates over the bands that cover it, then average.
        summed = masks.new_zeros(*masks.shape[:2], spec.shape[1], masks.shape[-1])
        summed.index_add_(2, self.rows, masks)
        count = repeat(self.bands_per_bin, "f -> (f s) 1", s=self.audio_channels)
        masks = summed / count.clamp(min=1e-8)

        length = mix.shape[-1] if self.match_input_audio_length else None
        out = self.stft.inverse(spec[:, None] * masks, self.audio_channels, self.zero_dc, length)
        return out[:, 0] if self.num_stems == 1 else out

    core_time_axes = (1,)  # the core works at any frame count: a backend may trace it on a few (dsu.backends)

    def core(self, x: Tensor) -> Tensor:
        """The network between the spectrogram and its inverse, real tensors only: the band rows'
        [batch, frames, (rows real/imag)] -> masks [batch, stems, frames, (rows real/imag)]."""
        x = run_axial(self.layers, self.band_split(x), self.skip_connection)
        return estimate_masks(self.mask_estimators, x)
