"""Scale-attentional U-Net (Kim et al., median nerve in ultrasound, Ultrasonography 2022).

B. S. Kim, S. Yu, E. J. Kim, J. Yoon, S. Baek, "Scale-attentional U-Net for the segmentation of the median nerve in
ultrasound images", Ultrasonography 41(4):706-717, 2022, doi:10.14366/usg.21214.

Every convolution of a U-Net is replaced by a *scale-attentional convolution* (:class:`ScaleAttentionalConv`):

- a cascade H1 .. HN (N = 4): H1 is a 1x1 convolution of the input, H2 .. HN are 3x3 depthwise-separable
  convolutions (depthwise 3x3, then pointwise 1x1), each applied to the previous one's output, with no
  non-linearity anywhere in the cascade (and no bias, so the cascade is a linear map); each Hk sees a 2k-1 pixel
  wide neighbourhood, so F1 .. FN are the same features at growing scales;
- F1 .. FN concatenated on the channel axis (out_channels = N x out_channels / N);
- ECA channel attention over the concatenation (GAP, 1-D convolution of size k across channels, sigmoid,
  Hadamard product), i.e. attention over scales and channels at once.

Batch norm and ReLU follow each scale-attentional convolution, as they follow each convolution in a U-Net.
Upsampling is nearest-neighbour followed by a (scale-attentional) convolution. The output head is a plain 1x1
convolution.

Ambiguous in the paper: the per-level widths and whether the upsampling convolution is itself scale-attentional.
We use the standard U-Net widths 32-64-128-256-512 (five levels) and a scale-attentional upsampling convolution,
which gives 449,677 parameters for 3 classes, 8.4 % under the paper's ~491 K (within 10 %).
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from .blocks import ECA

DEFAULT_FILTERS = (32, 64, 128, 256, 512)


class DepthwiseSeparableConv(nn.Sequential):
    """3x3 depthwise convolution then 1x1 pointwise convolution; no bias, no non-linearity (a linear map)."""

    def __init__(self, channels: int, out_channels: int):
        super().__init__(
            nn.Conv2d(channels, channels, 3, padding=1, groups=channels, bias=False),
            nn.Conv2d(channels, out_channels, 1, bias=False),
        )


class ScaleCascade(nn.Module):
    """H1 (1x1) then H2..HN (3x3 depthwise-separable) in cascade; returns cat(F1..FN). Linear in its input."""

    def __init__(self, in_channels: int, out_channels: int, scales: int = 4):
        super().__init__()
        if scales < 2:
            raise ValueError(f"a scale cascade needs at least 2 scales, got {scales}")
        if out_channels % scales:
            raise ValueError(f"out_channels ({out_channels}) must be divisible by the number of scales ({scales})")
        width = out_channels // scales
        self.scales = scales
        self.first = nn.Conv2d(in_channels, width, 1, bias=False)
        self.rest = nn.ModuleList(DepthwiseSeparableConv(width, width) for _ in range(scales - 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        features = [self.first(x)]
        for step in self.rest:
            features.append(step(features[-1]))  # no activation: the cascade stays linear
        return torch.cat(features, dim=1)


class ScaleAttentionalConv(nn.Module):
    """Scale cascade followed by ECA: ``eca(cat(F1..FN))``."""

    def __init__(self, in_channels: int, out_channels: int, scales: int = 4, eca_kernel: int | None = None):
        super().__init__()
        self.cascade = ScaleCascade(in_channels, out_channels, scales)
        self.attention = ECA(out_channels, eca_kernel)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.attention(self.cascade(x))


class SAConvBNReLU(nn.Sequential):
    def __init__(self, in_channels: int, out_channels: int, scales: int = 4):
        super().__init__(ScaleAttentionalConv(in_channels, out_channels, scales), nn.BatchNorm2d(out_channels),
                         nn.ReLU(inplace=True))


class SALevel(nn.Sequential):
    """A U-Net level: two scale-attentional convolutions, each followed by batch norm and ReLU."""

    def __init__(self, in_channels: int, out_channels: int, scales: int = 4):
        super().__init__(SAConvBNReLU(in_channels, out_channels, scales),
                         SAConvBNReLU(out_channels, out_channels, scales))


class SAUNet(nn.Module):
    """``forward(x (B, in_channels, H, W)) -> logits (B, num_classes, H, W)``; H, W divisible by 2**(levels-1)."""

    def __init__(self, num_classes: int, in_channels: int = 1, filters: Sequence[int] = DEFAULT_FILTERS,
                 scales: int = 4):
        super().__init__()
        filters = [int(f) for f in filters]
        self.levels = len(filters)
        self.encoder = nn.ModuleList()
        channels = in_channels
        for width in filters:
            self.encoder.append(SALevel(channels, width, scales))
            channels = width
        self.pool = nn.MaxPool2d(2)
        self.up = nn.ModuleList()
        self.decoder = nn.ModuleList()
        for width in reversed(filters[:-1]):
            # nearest-neighbour upsampling + convolution halving the channels, as in U-Net's up-convolution
            self.up.append(nn.Sequential(nn.Upsample(scale_factor=2, mode="nearest"),
                                         SAConvBNReLU(channels, width, scales)))
            self.decoder.append(SALevel(2 * width, width, scales))
            channels = width
        self.head = nn.Conv2d(channels, num_classes, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        factor = 2 ** (self.levels - 1)
        if x.shape[-1] % factor or x.shape[-2] % factor:
            raise ValueError(f"input height and width must be divisible by {factor}, got {tuple(x.shape[-2:])}")
        skips = []
        for index, level in enumerate(self.encoder):
            x = level(x)
            if index < self.levels - 1:
                skips.append(x)
                x = self.pool(x)
        for up, level, skip in zip(self.up, self.decoder, reversed(skips)):
            x = level(torch.cat([up(x), skip], dim=1))
        return self.head(x)


def build_sa_unet(num_classes: int, in_channels: int = 1, filters: Sequence[int] = DEFAULT_FILTERS,
                  scales: int = 4) -> SAUNet:
    return SAUNet(num_classes=num_classes, in_channels=in_channels, filters=filters, scales=scales)
