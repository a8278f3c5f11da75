"""BS-RoFormer (Lu et al. 2023, "Music Source Separation with Band-Split RoPE Transformer"), with the
keys, shapes and config keywords of MSST's `models/bs_roformer/bs_roformer.py` (class BSRoformer).

The complex STFT is cut into fixed bands of `freqs_per_bands` bins (stereo channels interleaved per bin,
real/imaginary per value), each band becomes one token; axial transformers alternate along time and
along bands; one mask estimator per stem predicts a complex mask for every bin, applied to the mixture's
spectrogram and inverted.

forward(mix [batch, channels, samples]) -> [batch, num_stems, channels, samples], for any num_stems
(MSST's current BSRoformer keeps the stem axis even for one stem; MelBandRoformer drops it).
"""
from __future__ import annotations

import torch
from einops import rearrange
from torch import Tensor, nn

from .roformer_parts import (
    STFT,
    BandSplit,
    MaskEstimator,
    RMSNorm,
    axial_transformers,
    check_channels,
    complex_masks,
    estimate_masks,
    run_axial,
)

DEFAULT_FREQS_PER_BANDS = ((2,) * 24 + (4,) * 12 + (12,) * 8 + (24,) * 8 + (48,) * 8 + (128, 129))


class BSRoformer(nn.Module):
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
        freqs_per_bands: tuple[int, ...] = DEFAULT_FREQS_PER_BANDS,
        dim_head: int = 64,
        heads: int = 8,
        attn_dropout: float = 0.0,
        ff_dropout: float = 0.0,
        flash_attn: bool = True,  # attention always runs through scaled_dot_product_attention
        dim_freqs_in: int = 1025,  # unused by the reference too: the bins follow from stft_n_fft
        stft_n_fft: int = 2048,
        stft_hop_length: int = 512,
        stft_win_length: int = 2048,
        stft_normalized: bool = False,
        zero_dc: bool = True,
        mask_estimator_depth: int = 2,
        mlp_expansion_factor: int = 4,
        use_torch_checkpoint: bool = False,  # training memory saving, no effect on inference
        skip_connection: bool = False,
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
        self.stft = STFT(stft_n_fft, stft_hop_length, stft_win_length, stft_normalized)
        freqs_per_bands = tuple(freqs_per_bands)
        if len(freqs_per_bands) < 2 or sum(freqs_per_bands) != self.stft.bins:
            raise ValueError(f"freqs_per_bands must split the {self.stft.bins} STFT bins of stft_n_fft="
                             f"{stft_n_fft} into at least two bands, but sums to {sum(freqs_per_bands)}")

        self.layers = axial_transformers(
            dim=dim, depth=depth, time_transformer_depth=time_transformer_depth,
            freq_transformer_depth=freq_transformer_depth, linear_transformer_depth=linear_transformer_depth,
            norm_output=False, dim_head=dim_head, heads=heads, attn_dropout=attn_dropout, ff_dropout=ff_dropout)
        self.final_norm = RMSNorm(dim)

        band_widths = tuple(2 * f * self.audio_channels for f in freqs_per_bands)
        self.band_split = BandSplit(dim, band_widths)
        self.mask_estimators = nn.ModuleList(
            MaskEstimator(dim, band_widths, hidden_layers=mask_estimator_depth - 1,
                          mlp_expansion_factor=mlp_expansion_factor)
            for _ in range(num_stems))

    def forward(self, mix: Tensor, core=None) -> Tensor:
        """`core`: what runs `self.core` (a backend's compiled copy of it); None: this module."""
        mix = check_channels(mix, self.stereo)
        spec = self.stft(mix)  # [b, (f s), t] complex
        masks = (core or self.core)(rearrange(torch.view_as_real(spec), "b f t c -> b t (f c)"))
        return self.stft.inverse(spec[:, None] * complex_masks(masks), self.audio_channels, self.zero_dc,
                                 mix.shape[-1])

    core_time_axes = (1,)  # the core works at any frame count: a backend may trace it on a few (dsu.backends)

    def core(self, x: Tensor) -> Tensor:
        """The network between the spectrogram and its inverse, real tensors only:
        [batch, frames, (bins channels real/imag)] -> masks [batch, stems, frames, (bins channels real/imag)]."""
        x = run_axial(self.layers, self.band_split(x), self.skip_connection)
        return estimate_masks(self.mask_estimators, self.final_norm(x))
