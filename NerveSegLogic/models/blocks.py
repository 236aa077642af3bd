"""Building blocks shared by several architectures (torch-only module).

- :class:`DoubleConv`: two 3x3 convolutions, each followed by ReLU (optionally batch norm), the U-Net level.
- :class:`ECA`: efficient channel attention (Wang et al., CVPR 2020): global average pooling, a 1-D convolution of
  size k across channels (no dimensionality reduction), sigmoid, channel-wise product with the input.
"""

from __future__ import annotations

import math

import torch
from torch import nn


class DoubleConv(nn.Sequential):
    """conv3x3 -> [BN] -> ReLU -> conv3x3 -> [BN] -> ReLU, 'same' padding (spatial size kept)."""

    def __init__(self, in_channels: int, out_channels: int, batch_norm: bool = False):
        layers = []
        for index in range(2):
            layers.append(nn.Conv2d(in_channels if index == 0 else out_channels, out_channels, 3, padding=1,
                                    bias=not batch_norm))
            if batch_norm:
                layers.append(nn.BatchNorm2d(out_channels))
            layers.append(nn.ReLU(inplace=True))
        super().__init__(*layers)


def eca_kernel_size(channels: int, gamma: float = 2.0, b: float = 1.0) -> int:
    """ECA's adaptive kernel size: the odd number nearest to log2(C)/gamma + b/gamma (at least 1)."""
    t = int(abs(math.log2(channels) / gamma + b / gamma))
    return max(1, t if t % 2 else t + 1)


class ECA(nn.Module):
    """Efficient channel attention: ``x * sigmoid(conv1d_k(GAP(x)))``.

    ``kernel_size`` None picks ECA's adaptive k from the channel count. The 1-D convolution has no bias and is
    shared across channel positions, so a channel's weight depends only on its k neighbours' pooled values.
    """

    def __init__(self, channels: int, kernel_size: int | None = None):
        super().__init__()
        self.kernel_size = int(kernel_size or eca_kernel_size(channels))
        if self.kernel_size % 2 == 0:
            raise ValueError(f"ECA kernel size must be odd so channels stay aligned, got {self.kernel_size}")
        self.conv = nn.Conv1d(1, 1, self.kernel_size, padding=self.kernel_size // 2, bias=False)

    def gate(self, x: torch.Tensor) -> torch.Tensor:
        """Channel weights in (0, 1), shape (B, C, 1, 1)."""
        pooled = x.mean(dim=(2, 3))                      # (B, C)
        weights = self.conv(pooled.unsqueeze(1))         # (B, 1, C): the 1-D conv runs across channels
        return torch.sigmoid(weights).transpose(1, 2).unsqueeze(-1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.gate(x)
