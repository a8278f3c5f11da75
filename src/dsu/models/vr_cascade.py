"""UVR's VR-architecture network up to v5.0: the CascadedASPPNet of python-audio-separator's
`uvr_lib_v5/vr_network/nets.py` (and `layers.py`), with the same state-dict keys and shapes, so users'
`.pth` files (1_HP-UVR, 2_HP-UVR, 7_HP2-UVR, UVR-DeEcho-DeReverb, ...) load strictly.

The network predicts a soft mask for a magnitude spectrogram. Three cascaded U-Nets, each with an
atrous spatial pyramid (ASPP) at its bottom: stage 1 runs one U-Net on the lower and one on the upper
half of the frequency axis; stage 2 runs on the input plus stage 1's features; stage 3 on all of them.
The Nyquist row is never seen: its mask repeats the row below, as UVR's does.

UVR tells capacities apart by file size in KB; the three layouts differ in width (`channels`), in the
number of extra dilated ASPP branches and in U-Net depth:

| size class (KB)        | channels | extra ASPP branches | depth |
|------------------------|----------|---------------------|-------|
| 31191                  | 16       | 0                   | 4     |
| 33966                  | 16       | 2                   | 4     |
| 129605                 | 16       | 1                   | 5     |
| 123821, 123812         | 32       | 0                   | 4     |
| 537238, 537227         | 64       | 2                   | 4     |

forward(magnitude [batch, 2, bins + 1, frames]) -> mask of the same shape, in [0, 1] (eval semantics;
the training-only auxiliary outputs are not computed, their weights are kept for strict loading).
predict_mask(x) crops `offset` frames from each side of the time axis, as UVR's inference expects.
Frequency and time sizes are halved `depth` times and must stay even at every level.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

SIZE_CLASSES = {  # UVR's size class (KB) -> (channels, extra ASPP branches, depth)
    31191: (16, 0, 4), 33966: (16, 2, 4), 129605: (16, 1, 5),
    123821: (32, 0, 4), 123812: (32, 0, 4), 537238: (64, 2, 4), 537227: (64, 2, 4),
}
ASPP_DILATIONS = (4, 8, 16)


class ConvBNAct(nn.Module):
    """Convolution without bias (batch norm has one), batch norm, activation; `conv` holds all three so
    the keys read `conv.0.weight`, `conv.1.running_mean`, ... as in UVR's files."""

    def __init__(self, c_in: int, c_out: int, kernel=3, stride=1, padding=1, dilation=1, act=nn.ReLU):
        super().__init__()
        self.conv = nn.Sequential(
            nn.Conv2d(c_in, c_out, kernel, stride, padding, dilation, bias=False), nn.BatchNorm2d(c_out), act())

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(x)


class SeparableConvBNAct(nn.Module):
    """Dilated depthwise 3x3 then pointwise 1x1 convolution, batch norm, ReLU."""

    def __init__(self, channels: int, c_out: int, dilation: int):
        super().__init__()
        self.conv = nn.Sequential(
            nn.Conv2d(channels, channels, 3, 1, dilation, dilation, groups=channels, bias=False),
            nn.Conv2d(channels, c_out, 1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU())

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(x)


def crop_time_to(skip: Tensor, like: Tensor) -> Tensor:
    """The centre of `skip` along time with `like`'s number of frames (UVR's crop_center)."""
    extra = skip.shape[3] - like.shape[3]
    if extra < 0:
        raise ValueError(f"a skip connection has {skip.shape[3]} frames, fewer than the {like.shape[3]} "
                         "upsampled ones: the frame count must stay even at every U-Net level")
    return skip[..., extra // 2: extra // 2 + like.shape[3]]


def upsample_and_join(x: Tensor, skip: Tensor | None) -> Tensor:
    """Double both axes (bilinear, corners aligned, as UVR) and append the encoder's skip as channels."""
    x = F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=True)
    return x if skip is None else torch.cat([x, crop_time_to(skip, x)], dim=1)


def pad_nyquist(mask: Tensor, rows: int) -> Tensor:
    """Repeat the last predicted frequency row up to `rows` (the network never sees the Nyquist bin)."""
    return F.pad(mask, (0, 0, 0, rows - mask.shape[2]), mode="replicate")


class DownBlock(nn.Module):
    """Two 3x3 convolutions, the second strided; the first one's output is the U-Net skip."""

    def __init__(self, c_in: int, c_out: int):
        super().__init__()
        self.conv1 = ConvBNAct(c_in, c_out, act=nn.LeakyReLU)
        self.conv2 = ConvBNAct(c_out, c_out, stride=2, act=nn.LeakyReLU)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        skip = self.conv1(x)
        return self.conv2(skip), skip


class UpBlock(nn.Module):
    def __init__(self, c_in: int, c_out: int):
        super().__init__()
        self.conv = ConvBNAct(c_in, c_out)

    def forward(self, x: Tensor, skip: Tensor) -> Tensor:
        return self.conv(upsample_and_join(x, skip))


class ASPP(nn.Module):
    """Global (frequency-pooled) context, a 1x1 branch and dilated separable branches, fused by a 1x1
    convolution. The 6- and 7-branch layouts add branches with the largest dilation; UVR builds them
    from one module object, so in the 7-branch layout `conv6` and `conv7` share their weights (both
    keys are in the files, and loading leaves conv7's values in the shared tensors)."""

    def __init__(self, c_in: int, c_out: int, extra_branches: int):
        super().__init__()
        self.conv1 = nn.Sequential(nn.AdaptiveAvgPool2d((1, None)), ConvBNAct(c_in, c_in, 1, 1, 0))
        self.conv2 = ConvBNAct(c_in, c_in, 1, 1, 0)
        self.conv3, self.conv4, self.conv5 = (SeparableConvBNAct(c_in, c_in, d) for d in ASPP_DILATIONS)
        if extra_branches:
            self.conv6 = SeparableConvBNAct(c_in, c_in, ASPP_DILATIONS[-1])
        if extra_branches == 2:
            self.conv7 = self.conv6
        self.extra_branches = extra_branches
        # index 0 as in UVR's Sequential(conv, Dropout2d); the dropout has no weights and is off in eval
        self.bottleneck = nn.Sequential(ConvBNAct(c_in * (5 + extra_branches), c_out, 1, 1, 0))

    def forward(self, x: Tensor) -> Tensor:
        # the pooled row is the same for every frequency: broadcasting it equals UVR's align_corners resize
        features = [self.conv1(x).expand_as(x), self.conv2(x), self.conv3(x), self.conv4(x), self.conv5(x)]
        if self.extra_branches:
            features += [self.conv6(x)] * self.extra_branches  # shared weights: compute once
        return self.bottleneck(torch.cat(features, dim=1))


class ASPPUNet(nn.Module):
    """U-Net (UVR's BaseASPPNet): `depth` strided encoders doubling the width, an ASPP bottom doubling it
    again, decoders back to `channels`."""

    def __init__(self, c_in: int, channels: int, extra_aspp_branches: int, depth: int):
        super().__init__()
        self.depth = depth
        widths = [c_in] + [channels * 2 ** level for level in range(depth + 1)]
        for level in range(1, depth + 1):
            self.add_module(f"enc{level}", DownBlock(widths[level - 1], widths[level]))
        self.aspp = ASPP(widths[depth], widths[depth + 1], extra_aspp_branches)
        for level in range(depth, 0, -1):
            self.add_module(f"dec{level}", UpBlock(widths[level + 1] + widths[level], widths[level]))

    def forward(self, x: Tensor) -> Tensor:
        skips = []
        for level in range(1, self.depth + 1):
            x, skip = getattr(self, f"enc{level}")(x)
            skips.append(skip)
        x = self.aspp(x)
        for level in range(self.depth, 0, -1):
            x = getattr(self, f"dec{level}")(x, skips[level - 1])
        return x


class CascadedASPPNet(nn.Module):
    """UVR's v5.0 VR network. `bins` is the band parameters' `bins` (n_fft // 2 of the network)."""

    offset = 128  # frames UVR's inference crops from each side of a window's mask

    def __init__(self, bins: int, channels: int = 16, extra_aspp_branches: int = 0, depth: int = 4):
        super().__init__()
        c, unet = channels, lambda c_in, width: ASPPUNet(c_in, width, extra_aspp_branches, depth)
        self.bins, self.depth = bins, depth
        self.stg1_low_band_net = unet(2, c)
        self.stg1_high_band_net = unet(2, c)
        self.stg2_bridge = ConvBNAct(c + 2, c // 2, 1, 1, 0)
        self.stg2_full_band_net = unet(c // 2, c)
        self.stg3_bridge = ConvBNAct(2 * c + 2, c, 1, 1, 0)
        self.stg3_full_band_net = unet(c, 2 * c)
        self.out = nn.Conv2d(2 * c, 2, 1, bias=False)
        # training-time deep supervision heads: unused at inference, present in every file
        self.aux1_out = nn.Conv2d(c, 2, 1, bias=False)
        self.aux2_out = nn.Conv2d(c, 2, 1, bias=False)

    @classmethod
    def for_size_class(cls, size_kb: int, bins: int) -> CascadedASPPNet:
        channels, extra, depth = SIZE_CLASSES[size_kb]
        return cls(bins, channels, extra, depth)

    def forward(self, x: Tensor) -> Tensor:
        mag = x[:, :, :self.bins]
        half = mag.shape[2] // 2
        stage1 = torch.cat([self.stg1_low_band_net(mag[:, :, :half]),
                            self.stg1_high_band_net(mag[:, :, half:])], dim=2)
        stage2 = self.stg2_full_band_net(self.stg2_bridge(torch.cat([mag, stage1], dim=1)))
        stage3 = self.stg3_full_band_net(self.stg3_bridge(torch.cat([mag, stage1, stage2], dim=1)))
        return pad_nyquist(torch.sigmoid(self.out(stage3)), self.bins + 1)

    def predict_mask(self, x: Tensor) -> Tensor:
        return self.forward(x)[..., self.offset:-self.offset]
