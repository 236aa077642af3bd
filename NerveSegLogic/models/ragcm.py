"""Region-aware global context modeling network (Wu et al., AAAI 2021) for nerve segmentation.

H. Wu, J. Liu, et al., "Region-aware Global Context Modeling for Automatic Nerve Segmentation from Ultrasound
Images", AAAI 2021 (https://mlanthology.org/aaai/2021/wu2021aaai-region; code: github.com/jsonliu-szu/RAGCM).

A U-shaped network on a ResNet-34 encoder (written in :mod:`.resnet`, trained from scratch: no pretrained
weights can be downloaded here) with two modules:

- RPA, region-aware pyramid aggregation (:class:`RegionPyramidAggregation`), on the top encoder layer X (C channels,
  h x w): for each bin size s in (3, 7, 11), adaptive average pooling to s x s, a 1x1 convolution + ReLU reducing
  the channels by r = 4, bilinear upsampling back to h x w; two 1x1 convolutions (query, key) of that give a
  region attention map (hw x hw, softmax over the last axis), applied to a 1x1-convolution projection of X (the
  value, C / r channels). The three attended maps are concatenated with X and fused back to C channels.
- APF, adaptive pyramid fusion (:class:`AdaptivePyramidFusion`): three decoder levels upsampled to the finest one,
  concatenated, a 1x1 convolution, an ECA channel gate, and a residual add (fused + gate(fused)).

Readings of the paper (also in the card's notes): the decoder is LinkNet-style (1x1 reduce, 3x3 transposed
convolution x2, 1x1 expand, additive skips), as in the authors' released code; the query/key convolutions are
shared by the three bins and reduce C/4 to C/32 (authors' code); after concatenation with X a 1x1 convolution +
BN + ReLU returns to C channels so the decoder sees the encoder's width. The authors' code differs from the paper's
text in places (no ReLU after the bin convolution, the attended maps added back with a learned scale instead of
concatenated, max- instead of average pooling in APF's gate); we follow the paper's text.
"""

from __future__ import annotations

from typing import List, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .blocks import ECA
from .resnet import ResNetEncoder

DEFAULT_BINS = (3, 7, 11)


def adaptive_pool_matrix(size_in: int, size_out: int, device=None, dtype=None) -> torch.Tensor:
    """(size_out, size_in) averaging matrix with torch's adaptive pooling bins: [floor(i n/s), ceil((i+1) n/s))."""
    matrix = torch.zeros(size_out, size_in, device=device, dtype=dtype)
    for index in range(size_out):
        start = (index * size_in) // size_out
        end = -((-(index + 1) * size_in) // size_out)
        matrix[index, start:end] = 1.0 / (end - start)
    return matrix


def adaptive_avg_pool(x: torch.Tensor, size: int) -> torch.Tensor:
    """Adaptive average pooling to size x size as two matrix products (exports to ONNX for any input size;
    ONNX's own adaptive pooling needs the output to divide the input)."""
    height, width = int(x.shape[-2]), int(x.shape[-1])
    rows = adaptive_pool_matrix(height, size, x.device, x.dtype)
    cols = adaptive_pool_matrix(width, size, x.device, x.dtype)
    return rows @ x @ cols.transpose(0, 1)


class RegionPyramidAggregation(nn.Module):
    """RPA: ``forward(X (B, C, h, w)) -> (B, C, h, w)``; see the module docstring."""

    def __init__(self, channels: int, bins: Sequence[int] = DEFAULT_BINS, reduction: int = 4,
                 attention_reduction: int = 8):
        super().__init__()
        if channels % reduction or (channels // reduction) % attention_reduction:
            raise ValueError(f"channels {channels} must be divisible by reduction {reduction} x {attention_reduction}")
        self.bins = tuple(int(b) for b in bins)
        self.reduced = channels // reduction
        self.bin_convs = nn.ModuleList(nn.Sequential(nn.Conv2d(channels, self.reduced, 1), nn.ReLU(inplace=True))
                                       for _ in self.bins)
        self.query = nn.Conv2d(self.reduced, self.reduced // attention_reduction, 1)
        self.key = nn.Conv2d(self.reduced, self.reduced // attention_reduction, 1)
        self.value = nn.Conv2d(channels, self.reduced, 1)
        self.fuse = nn.Sequential(nn.Conv2d(channels + len(self.bins) * self.reduced, channels, 1, bias=False),
                                  nn.BatchNorm2d(channels), nn.ReLU(inplace=True))

    def region_features(self, x: torch.Tensor) -> List[torch.Tensor]:
        """Per bin: pooled to s x s, reduced (1x1 conv + ReLU), upsampled back to h x w: (B, C/r, h, w)."""
        size = (int(x.shape[-2]), int(x.shape[-1]))
        return [F.interpolate(conv(adaptive_avg_pool(x, s)), size=size, mode="bilinear", align_corners=False)
                for s, conv in zip(self.bins, self.bin_convs)]

    def attention_maps(self, x: torch.Tensor) -> List[torch.Tensor]:
        """Per bin: region attention (B, hw, hw); row i is a softmax over the positions j that pixel i attends."""
        maps = []
        for region in self.region_features(x):
            query = self.query(region).flatten(2)                    # (B, c', hw)
            key = self.key(region).flatten(2)                        # (B, c', hw)
            maps.append(torch.softmax(torch.bmm(query.transpose(1, 2), key), dim=-1))
        return maps

    def aggregate(self, x: torch.Tensor) -> torch.Tensor:
        """cat(X, A_3 V, A_7 V, A_11 V) before fusion: (B, C + 3 C/r, h, w)."""
        batch, _, height, width = x.shape
        value = self.value(x).flatten(2)                             # (B, C/r, hw)
        attended = [torch.bmm(value, attention.transpose(1, 2)).reshape(batch, self.reduced, height, width)
                    for attention in self.attention_maps(x)]
        return torch.cat([x] + attended, dim=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fuse(self.aggregate(x))


class UpConv(nn.Sequential):
    """Nearest upsampling by ``scale`` then 3x3 conv + BN + ReLU."""

    def __init__(self, in_channels: int, out_channels: int, scale: int):
        super().__init__(nn.Upsample(scale_factor=scale, mode="nearest"),
                         nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=False),
                         nn.BatchNorm2d(out_channels), nn.ReLU(inplace=True))


class AdaptivePyramidFusion(nn.Module):
    """APF: ``forward(fine, middle, coarse)`` with middle at 1/2 and coarse at 1/4 of fine's resolution.

    middle and coarse are upsampled (x2, x4) to ``out_channels``, concatenated with fine, fused by a 1x1
    convolution; an ECA gate reweighs the fused channels and is added back: ``fused + eca(fused)``.
    """

    def __init__(self, fine_channels: int, middle_channels: int, coarse_channels: int, out_channels: int,
                 eca_kernel: int | None = 3):
        super().__init__()
        if fine_channels != out_channels:
            raise ValueError("APF keeps the finest level's channel count: fine_channels must equal out_channels")
        self.up_middle = UpConv(middle_channels, out_channels, 2)
        self.up_coarse = UpConv(coarse_channels, out_channels, 4)
        self.fuse = nn.Conv2d(3 * out_channels, out_channels, 1)
        self.gate = ECA(out_channels, eca_kernel)

    def fused(self, fine: torch.Tensor, middle: torch.Tensor, coarse: torch.Tensor) -> torch.Tensor:
        return self.fuse(torch.cat([fine, self.up_middle(middle), self.up_coarse(coarse)], dim=1))

    def forward(self, fine: torch.Tensor, middle: torch.Tensor, coarse: torch.Tensor) -> torch.Tensor:
        fused = self.fused(fine, middle, coarse)
        return fused + self.gate(fused)


class LinkDecoderBlock(nn.Sequential):
    """1x1 conv to C/4, 3x3 transposed conv x2, 1x1 conv to ``out_channels``; each with BN + ReLU."""

    def __init__(self, in_channels: int, out_channels: int):
        mid = in_channels // 4
        super().__init__(
            nn.Conv2d(in_channels, mid, 1, bias=False), nn.BatchNorm2d(mid), nn.ReLU(inplace=True),
            nn.ConvTranspose2d(mid, mid, 3, stride=2, padding=1, output_padding=1, bias=False),
            nn.BatchNorm2d(mid), nn.ReLU(inplace=True),
            nn.Conv2d(mid, out_channels, 1, bias=False), nn.BatchNorm2d(out_channels), nn.ReLU(inplace=True),
        )


class RAGCM(nn.Module):
    """``forward(x (B, in_channels, H, W)) -> logits (B, num_classes, H, W)``; H, W divisible by 32."""

    def __init__(self, num_classes: int, in_channels: int = 1, bins: Sequence[int] = DEFAULT_BINS,
                 reduction: int = 4, head_channels: int = 32):
        super().__init__()
        self.encoder = ResNetEncoder(in_channels)
        w1, w2, w3, w4 = self.encoder.widths
        self.rpa = RegionPyramidAggregation(w4, bins, reduction)
        self.decoder4 = LinkDecoderBlock(w4, w3)
        self.decoder3 = LinkDecoderBlock(w3, w2)
        self.decoder2 = LinkDecoderBlock(w2, w1)
        self.decoder1 = LinkDecoderBlock(w1, w1)
        self.final_up = nn.Sequential(nn.ConvTranspose2d(w1, head_channels, 4, stride=2, padding=1),
                                      nn.ReLU(inplace=True),
                                      nn.Conv2d(head_channels, head_channels, 3, padding=1), nn.ReLU(inplace=True))
        self.apf = AdaptivePyramidFusion(head_channels, w1, w1, head_channels)
        self.head = nn.Conv2d(head_channels, num_classes, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-1] % 32 or x.shape[-2] % 32:
            raise ValueError(f"input height and width must be divisible by 32, got {tuple(x.shape[-2:])}")
        e1, e2, e3, e4 = self.encoder(x)                 # strides 4, 8, 16, 32
        e4 = self.rpa(e4)
        d4 = self.decoder4(e4) + e3                      # stride 16
        d3 = self.decoder3(d4) + e2                      # stride 8
        d2 = self.decoder2(d3) + e1                      # stride 4
        d1 = self.decoder1(d2)                           # stride 2
        full = self.final_up(d1)                         # stride 1
        return self.head(self.apf(full, d1, d2))


def build_ragcm(num_classes: int, in_channels: int = 1, bins: Sequence[int] = DEFAULT_BINS, reduction: int = 4,
                head_channels: int = 32) -> RAGCM:
    return RAGCM(num_classes=num_classes, in_channels=in_channels, bins=bins, reduction=reduction,
                 head_channels=head_channels)
