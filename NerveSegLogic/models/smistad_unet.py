"""Smistad et al.'s U-Net for nerve-block ultrasound (axillary and femoral blocks; FAST, Clarius, ~31 ms/frame).

E. Smistad, K. F. Johansen, D. H. Iversen, I. Reinertsen, "Highlighting nerves and blood vessels for
ultrasound-guided axillary nerve block procedures using neural networks", J. Med. Imaging 5(4), 2018; and
E. Smistad, et al., "Real-time segmentation of blood vessels, nerves and bone in ultrasound-guided regional
anesthesia using deep learning", IEEE IUS 2021.

What the papers give: six resolution levels; per level two 3x3 convolutions with ReLU; 2x2 max pooling down;
2x2 repeat (nearest-neighbour) upsampling up, concatenated with the encoder features of the same level; a
softmax over the classes; about 2 M parameters at 256x256. The per-level filter counts are not listed in the text
we could consult; we read them as the usual U-Net doubling from 8 (8, 16, ..., 256), which is the doubling schedule
that lands at ~2 M parameters (1.97 M for 3 classes). The model returns logits; softmax is applied by the caller
(and inside the exported ONNX graph).

Initialisation: He (Kaiming) normal weights for the ReLU convolutions and zero biases. The network has no batch
normalisation, so the initial weights alone decide whether the image reaches the output: with PyTorch's default
convolution initialisation the signal shrinks ~20x in the first level alone and the biases take over, so a fresh
model's logits vary by less than 1e-3 over the image, and Dice-loss training on usgra-seg sat at "background
everywhere" for 47 epochs (Glorot/Keras-style initialisation with zero biases: the same in 10 epochs). With He
initialisation the activations keep their scale through the 22 convolutions and the same recipe learns (the card's
notes and benchmarks/release/seed_smistad.md give what it reached).
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from .blocks import DoubleConv

DEFAULT_FILTERS = (8, 16, 32, 64, 128, 256)


class SmistadUNet(nn.Module):
    """6-level U-Net: ``forward(x (B, in_channels, H, W)) -> logits (B, num_classes, H, W)``.

    H and W must be divisible by 2**(levels-1) (32 for six levels); 256x256 is the paper's input.
    """

    def __init__(self, num_classes: int, in_channels: int = 1, filters: Sequence[int] = DEFAULT_FILTERS):
        super().__init__()
        filters = [int(f) for f in filters]
        if len(filters) < 2:
            raise ValueError(f"a U-Net needs at least two levels, got filters {filters}")
        self.levels = len(filters)
        self.encoder = nn.ModuleList()
        channels = in_channels
        for width in filters:
            self.encoder.append(DoubleConv(channels, width))
            channels = width
        self.pool = nn.MaxPool2d(2)
        self.upsample = nn.Upsample(scale_factor=2, mode="nearest")  # 2x2 repeat: each value copied to a 2x2 block
        self.decoder = nn.ModuleList()
        for width in reversed(filters[:-1]):
            self.decoder.append(DoubleConv(channels + width, width))
            channels = width
        self.head = nn.Conv2d(channels, num_classes, 1)
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, nonlinearity="relu")
                nn.init.zeros_(module.bias)

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
        for level, skip in zip(self.decoder, reversed(skips)):
            x = level(torch.cat([self.upsample(x), skip], dim=1))
        return self.head(x)


def build_smistad_unet(num_classes: int, in_channels: int = 1, filters: Sequence[int] = DEFAULT_FILTERS
                       ) -> SmistadUNet:
    return SmistadUNet(num_classes=num_classes, in_channels=in_channels, filters=filters)
