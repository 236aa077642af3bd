"""ResNet-34 (He et al., CVPR 2016) as a feature encoder, written in plain torch.

torchvision's models are not used (its compiled ops do not load here), and no pretrained weights can be fetched,
so the encoder starts from random initialisation (Kaiming normal for convolutions, as the paper prescribes).
"""

from __future__ import annotations

from typing import List, Sequence

import torch
from torch import nn

RESNET34_BLOCKS = (3, 4, 6, 3)
RESNET34_WIDTHS = (64, 128, 256, 512)


class BasicBlock(nn.Module):
    """Two 3x3 conv + BN, ReLU between and after the identity (or 1x1-projected) shortcut sum."""

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.relu = nn.ReLU(inplace=True)
        self.shortcut = None
        if stride != 1 or in_channels != out_channels:
            self.shortcut = nn.Sequential(nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=False),
                                          nn.BatchNorm2d(out_channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.shortcut is None else self.shortcut(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + identity)


class ResNetEncoder(nn.Module):
    """Stem (7x7/2 conv, BN, ReLU, 3x3/2 max pool) and four stages of basic blocks.

    ``forward(x)`` returns the four stage outputs at strides 4, 8, 16 and 32 with ``widths`` channels.
    """

    def __init__(self, in_channels: int = 3, blocks: Sequence[int] = RESNET34_BLOCKS,
                 widths: Sequence[int] = RESNET34_WIDTHS):
        super().__init__()
        self.widths = tuple(int(w) for w in widths)
        self.stem = nn.Sequential(
            nn.Conv2d(in_channels, self.widths[0], 7, stride=2, padding=3, bias=False),
            nn.BatchNorm2d(self.widths[0]),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(3, stride=2, padding=1),
        )
        self.stages = nn.ModuleList()
        channels = self.widths[0]
        for index, (count, width) in enumerate(zip(blocks, self.widths)):
            stride = 1 if index == 0 else 2
            layers = [BasicBlock(channels, width, stride)] + [BasicBlock(width, width) for _ in range(count - 1)]
            self.stages.append(nn.Sequential(*layers))
            channels = width
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: torch.Tensor) -> List[torch.Tensor]:
        x = self.stem(x)
        features = []
        for stage in self.stages:
            x = stage(x)
            features.append(x)
        return features
