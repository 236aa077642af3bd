"""The plain baselines the seed papers compare against, from MONAI (2-D, sized for 256x256 grey ultrasound).

- ``unet``: monai.networks.nets.UNet, five levels 32..512, two residual units per level, batch norm, ReLU.
- ``attention-unet``: monai.networks.nets.AttentionUnet (Oktay et al. 2018 gates), five levels 32..512.
- ``unet++``: monai.networks.nets.BasicUNetPlusPlus (Zhou et al. 2018 nested skips), MONAI's default widths,
  batch norm, no deep supervision (the last, full-depth output is returned).

Each returns logits (B, num_classes, H, W) for H, W divisible by 16.
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

DEFAULT_CHANNELS = (32, 64, 128, 256, 512)
DEFAULT_UNETPP_FEATURES = (32, 32, 64, 128, 256, 32)


def build_monai_unet(num_classes: int, in_channels: int = 1, channels: Sequence[int] = DEFAULT_CHANNELS,
                     num_res_units: int = 2, norm: str = "batch", act: str = "relu") -> nn.Module:
    from monai.networks.nets import UNet

    return UNet(spatial_dims=2, in_channels=in_channels, out_channels=num_classes, channels=tuple(channels),
                strides=(2,) * (len(channels) - 1), num_res_units=num_res_units, norm=norm, act=act)


def build_monai_attention_unet(num_classes: int, in_channels: int = 1, channels: Sequence[int] = DEFAULT_CHANNELS
                               ) -> nn.Module:
    from monai.networks.nets import AttentionUnet

    return AttentionUnet(spatial_dims=2, in_channels=in_channels, out_channels=num_classes,
                         channels=tuple(channels), strides=(2,) * (len(channels) - 1))


class UNetPlusPlus(nn.Module):
    """MONAI's BasicUNetPlusPlus returning one tensor (its output is a list, one entry per supervised depth)."""

    def __init__(self, num_classes: int, in_channels: int = 1, features: Sequence[int] = DEFAULT_UNETPP_FEATURES,
                 norm: str = "batch"):
        super().__init__()
        from monai.networks.nets import BasicUNetPlusPlus

        self.net = BasicUNetPlusPlus(spatial_dims=2, in_channels=in_channels, out_channels=num_classes,
                                     features=tuple(features), deep_supervision=False, norm=norm)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)[-1]


def build_monai_unetplusplus(num_classes: int, in_channels: int = 1,
                             features: Sequence[int] = DEFAULT_UNETPP_FEATURES, norm: str = "batch") -> nn.Module:
    return UNetPlusPlus(num_classes=num_classes, in_channels=in_channels, features=features, norm=norm)
