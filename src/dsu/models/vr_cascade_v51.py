"""UVR's VR-architecture network v5.1: the CascadedNet of python-audio-separator's
`uvr_lib_v5/vr_network/nets_new.py` (and `layers_new.py`), with the same state-dict keys and shapes, so
users' v5.1 `.pth` files (UVR-De-Echo-*, UVR-DeNoise, UVR-BVE-4B_SN, ...) load strictly.

Like v5.0 it predicts a soft mask for a magnitude spectrogram with cascaded U-Nets, but each U-Net
(UVR's BaseNet) has a bidirectional LSTM along time over its second decoder's output, appended as one
more channel. Stages 1 and 2 run separate U-Nets on the lower and upper halves of the frequency axis
(the lower ones twice as wide, narrowed by a 1x1 convolution); stage 3 runs on the whole axis.

Capacity: `nout` (width of the widest U-Nets) and `nout_lstm` (LSTM features, both directions), from
UVR's model data (48/128, 64/128, ...; UVR forces nout=64 for its 218409-KB size class). `bins` is the
band parameters' `bins`; the LSTMs read whole frequency columns, so their sizes depend on it.

forward(magnitude [batch, 2, bins + 1, frames]) -> mask of the same shape, in [0, 1] (eval semantics;
the training-only auxiliary output is not computed, its weights are kept for strict loading).
predict_mask(x) crops `offset` frames from each side of the time axis, as UVR's inference expects.
"""
from __future__ import annotations

import torch
from einops import rearrange
from torch import Tensor, nn

from dsu.models.vr_cascade import ConvBNAct, pad_nyquist, upsample_and_join

ASPP_DILATIONS = ((4, 2), (8, 4), (12, 6))  # (frequency, time): wider context along frequency


class DownBlock(nn.Module):
    """Strided 3x3 convolution then a plain one (v5.1 takes its skips from the previous block's output)."""

    def __init__(self, c_in: int, c_out: int):
        super().__init__()
        self.conv1 = ConvBNAct(c_in, c_out, stride=2, act=nn.LeakyReLU)
        self.conv2 = ConvBNAct(c_out, c_out, act=nn.LeakyReLU)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv2(self.conv1(x))


class UpBlock(nn.Module):
    def __init__(self, c_in: int, c_out: int):
        super().__init__()
        self.conv1 = ConvBNAct(c_in, c_out)

    def forward(self, x: Tensor, skip: Tensor) -> Tensor:
        return self.conv1(upsample_and_join(x, skip))


class ASPP(nn.Module):
    """Frequency-pooled context, a 1x1 branch and three dilated 3x3 branches, fused by a 1x1 convolution
    (the dropout after it is training-only and has no weights)."""

    def __init__(self, c_in: int, c_out: int):
        super().__init__()
        self.conv1 = nn.Sequential(nn.AdaptiveAvgPool2d((1, None)), ConvBNAct(c_in, c_out, 1, 1, 0))
        self.conv2 = ConvBNAct(c_in, c_out, 1, 1, 0)
        self.conv3, self.conv4, self.conv5 = (ConvBNAct(c_in, c_out, 3, 1, d, d) for d in ASPP_DILATIONS)
        self.bottleneck = ConvBNAct(c_out * 5, c_out, 1, 1, 0)

    def forward(self, x: Tensor) -> Tensor:
        pooled = self.conv1(x)
        # the pooled row is the same for every frequency: broadcasting it equals UVR's align_corners resize
        pooled = pooled.expand(-1, -1, x.shape[2], -1)
        return self.bottleneck(torch.cat([pooled, self.conv2(x), self.conv3(x), self.conv4(x), self.conv5(x)], 1))


class FrameLSTM(nn.Module):
    """Squeezes the channels to one, runs a bidirectional LSTM over frames with each frame's frequency
    column as features, and maps back to one channel of `rows` frequencies (UVR's LSTMModule)."""

    def __init__(self, c_in: int, rows: int, features: int):
        super().__init__()
        self.conv = ConvBNAct(c_in, 1, 1, 1, 0)
        self.lstm = nn.LSTM(input_size=rows, hidden_size=features // 2, bidirectional=True)
        self.dense = nn.Sequential(nn.Linear(features, rows), nn.BatchNorm1d(rows), nn.ReLU())

    def forward(self, x: Tensor) -> Tensor:
        frames = x.shape[3]
        sequence, _ = self.lstm(rearrange(self.conv(x), "n 1 f t -> t n f"))
        columns = self.dense(rearrange(sequence, "t n c -> (t n) c"))
        return rearrange(columns, "(t n) f -> n 1 f t", t=frames)


class LSTMUNet(nn.Module):
    """UVR's BaseNet: a U-Net with widths w, 2w, 4w, 6w, 8w, an ASPP bottom, and the FrameLSTM's channel
    joined to the second decoder's output."""

    def __init__(self, c_in: int, width: int, lstm_rows: int, lstm_features: int):
        super().__init__()
        w = width
        self.enc1 = ConvBNAct(c_in, w)
        self.enc2 = DownBlock(w, 2 * w)
        self.enc3 = DownBlock(2 * w, 4 * w)
        self.enc4 = DownBlock(4 * w, 6 * w)
        self.enc5 = DownBlock(6 * w, 8 * w)
        self.aspp = ASPP(8 * w, 8 * w)
        self.dec4 = UpBlock(14 * w, 6 * w)
        self.dec3 = UpBlock(10 * w, 4 * w)
        self.dec2 = UpBlock(6 * w, 2 * w)
        self.lstm_dec2 = FrameLSTM(2 * w, lstm_rows, lstm_features)
        self.dec1 = UpBlock(3 * w + 1, w)

    def forward(self, x: Tensor) -> Tensor:
        e1 = self.enc1(x)
        e2 = self.enc2(e1)
        e3 = self.enc3(e2)
        e4 = self.enc4(e3)
        h = self.aspp(self.enc5(e4))
        h = self.dec2(self.dec3(self.dec4(h, e4), e3), e2)
        return self.dec1(torch.cat([h, self.lstm_dec2(h)], dim=1), e1)


class CascadedNetV51(nn.Module):
    """UVR's v5.1 VR network."""

    offset = 64  # frames UVR's inference crops from each side of a window's mask

    def __init__(self, bins: int, nout: int = 32, nout_lstm: int = 128):
        super().__init__()
        self.bins = bins
        rows = bins // 2  # frequency rows under the full-band LSTM (after one halving)
        self.stg1_low_band_net = nn.Sequential(
            LSTMUNet(2, nout // 2, rows // 2, nout_lstm), ConvBNAct(nout // 2, nout // 4, 1, 1, 0))
        self.stg1_high_band_net = LSTMUNet(2, nout // 4, rows // 2, nout_lstm // 2)
        self.stg2_low_band_net = nn.Sequential(
            LSTMUNet(nout // 4 + 2, nout, rows // 2, nout_lstm), ConvBNAct(nout, nout // 2, 1, 1, 0))
        self.stg2_high_band_net = LSTMUNet(nout // 4 + 2, nout // 2, rows // 2, nout_lstm // 2)
        self.stg3_full_band_net = LSTMUNet(3 * nout // 4 + 2, nout, rows, nout_lstm)
        self.out = nn.Conv2d(nout, 2, 1, bias=False)
        self.aux_out = nn.Conv2d(3 * nout // 4, 2, 1, bias=False)  # training-time supervision head

    def forward(self, x: Tensor) -> Tensor:
        mag = x[:, :, :self.bins]
        half = mag.shape[2] // 2
        low, high = mag[:, :, :half], mag[:, :, half:]
        low1, high1 = self.stg1_low_band_net(low), self.stg1_high_band_net(high)
        low2 = self.stg2_low_band_net(torch.cat([low, low1], dim=1))
        high2 = self.stg2_high_band_net(torch.cat([high, high1], dim=1))
        stage1, stage2 = torch.cat([low1, high1], dim=2), torch.cat([low2, high2], dim=2)
        mask = torch.sigmoid(self.out(self.stg3_full_band_net(torch.cat([mag, stage1, stage2], dim=1))))
        return pad_nyquist(mask, self.bins + 1)

    def predict_mask(self, x: Tensor) -> Tensor:
        return self.forward(x)[..., self.offset:-self.offset]
