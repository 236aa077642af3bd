"""BPMSegNet (Ding et al.): Mask R-CNN-style multi-instance segmentation of brachial plexus ultrasound.

Y. Ding, Q. Yang, G. Wu, J. Zhang, Z. Qin, "Multiple Instance Segmentation in Brachial Plexus Ultrasound Image
Using BPMSegNet", arXiv:2012.12012, 2020.

A real two-stage instance segmenter, written in plain torch (torchvision's compiled ops do not load here; NMS and
RoIAlign are in :mod:`.detection`):

- backbone: VGG-19 with every layer's channels halved (32, 64, 128, 256, 256), batch norm after each convolution;
  C2..C5 are the outputs of blocks 3, 4, 5 and the pooled block 5 (strides 4, 8, 16, 32);
- FPN (256 channels) whose top-down path upsamples with 2x2 stride-2 transposed convolutions, plus the skip
  concatenation (SC): P5's top-down map goes straight to P3 through a 4x4 stride-4 transposed convolution, is
  concatenated with P3's top-down map and reduced by a 1x1 convolution (:class:`BPMFeaturePyramid`);
- SLCF on P2 (:class:`SpatialLocalContrast`, the paper's Eq. 2, ``(f *_r k)(p) - (f * k)(p)``): four branches
  with r = 2, 4, 8, 16, each ONE 3x3 kernel k applied twice with the same weights, at dilation r and at dilation 1,
  and the difference taken (a centre-surround contrast at four scales: on a constant map it is exactly 0 away from
  the borders); each branch gives 128 channels, concatenated to 512. The result replaces P2 (no residual add);
- SAG (:class:`SelfAttentionGate`): global average and global max pooling through one shared two-layer dense
  network, summed, sigmoid, multiplied on the channels. On P2 it sits after SLCF and gates its 512 channels
  (512 -> 64 -> 512); on P3..P5 one gate per level, 256 -> 16 -> 256;
- our assumption, not stated in what we could read of the paper (its abstract, and Eq. 2 and the SLCF/SAG widths
  as quoted in issue #12): the RPN and RoIAlign heads share one channel count over P2..P6, so the gated
  512-channel P2 is brought back to 256 channels by a 1x1 convolution (``BPMFeaturePyramid.slcf_bridge``, the
  smallest bridge);
- RPN on P2..P6 (anchors 32..512 px, ratios 0.5, 1, 2), RoIAlign 7x7 box head (two 1024-wide dense layers, class
  and class-specific box outputs), RoIAlign 14x14 FCN mask head (four 3x3 convolutions, 2x2 transposed
  convolution, per-class 28x28 masks), per-class NMS.

Parameters: 28,099,121 for the card's 2 classes + background, 28,109,885 for the paper's 4 + background (6.0 %
under the paper's ~29.9 M; 27,910,145 / 27,920,909 before SLCF got its shared kernels, its 512 channels and
the bridge).

``model(images, targets)`` in train mode returns the five losses; ``model(images)`` in eval mode returns one dict
per image: boxes (N, 4) xyxy px, labels (N,) int64 (1..), scores (N,), masks (N, H, W) float 0..1.
"""

from __future__ import annotations

import math
from typing import Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from .detection import (anchors_for_level, batched_nms, box_coder, box_iou, clip_boxes, keep_large_boxes,
                        match_boxes, multilevel_roi_align, paste_masks, roi_align, sample_balanced)

VGG19_HALF = ((32, 2), (64, 2), (128, 4), (256, 4), (256, 4))   # (channels, convolutions) per block
PYRAMID_STRIDES = (4, 8, 16, 32)
RPN_STRIDES = (4, 8, 16, 32, 64)


# -------------------------------------------------------------------------------------------------------- backbone
class VGGBackbone(nn.Module):
    """VGG-19 convolutional part (channels halved by default); returns C2, C3, C4, C5 at strides 4, 8, 16, 32."""

    def __init__(self, in_channels: int = 1, config: Sequence[Tuple[int, int]] = VGG19_HALF, norm: str = "batch"):
        super().__init__()
        if norm not in ("batch", "none"):
            raise ValueError(f"norm must be 'batch' or 'none', got {norm!r}")
        self.blocks = nn.ModuleList()
        channels = in_channels
        for width, count in config:
            layers = []
            for _ in range(count):
                layers.append(nn.Conv2d(channels, width, 3, padding=1, bias=norm == "none"))
                if norm == "batch":
                    layers.append(nn.BatchNorm2d(width))
                layers.append(nn.ReLU(inplace=True))
                channels = width
            self.blocks.append(nn.Sequential(*layers))
        self.pool = nn.MaxPool2d(2)
        self.out_channels = tuple(width for width, _ in config[2:]) + (config[-1][0],)

    def forward(self, x: torch.Tensor) -> List[torch.Tensor]:
        outputs = []
        for index, block in enumerate(self.blocks):
            if index:
                x = self.pool(x)
            x = block(x)
            outputs.append(x)
        return [outputs[2], outputs[3], outputs[4], self.pool(outputs[4])]


# ---------------------------------------------------------------------------------------------------- the modules
class SpatialLocalContrast(nn.Module):
    """SLCF, the paper's Eq. 2: ``cat_r(conv(x, k_r, dilation=r) - conv(x, k_r, dilation=1))`` for r in (2, 4, 8, 16).

    Each branch owns ONE 3x3 kernel ``k_r`` (``self.kernels[i]``, shape (branch_channels, in_channels, 3, 3)) used for
    both convolutions. Sharing it is what makes the branch a contrast: where the input is locally constant the two
    applications see the same values and cancel, so only differences between the centre and a ring at distance r
    survive. (Two independent kernels would not cancel; a bias would cancel, so there is none.) Padding equals the
    dilation, so the output keeps the input's size; within r pixels of a border the zero padding breaks the
    cancellation. Output channels: ``len(dilations) * branch_channels`` (4 x 128 = 512 from the paper's 256).
    """

    def __init__(self, in_channels: int, branch_channels: Optional[int] = None,
                 dilations: Sequence[int] = (2, 4, 8, 16)):
        super().__init__()
        if in_channels < 1:
            raise ValueError(f"SpatialLocalContrast: in_channels must be positive, got {in_channels}")
        branch_channels = in_channels // 2 if branch_channels is None else int(branch_channels)
        if branch_channels < 1:
            raise ValueError(f"SpatialLocalContrast: branch_channels must be positive, got {branch_channels}")
        self.dilations = tuple(int(d) for d in dilations)
        if not self.dilations or min(self.dilations) < 1:
            raise ValueError(f"SpatialLocalContrast: dilations must be positive integers, got {tuple(dilations)}")
        self.in_channels, self.branch_channels = in_channels, branch_channels
        self.out_channels = branch_channels * len(self.dilations)
        self.kernels = nn.ParameterList(nn.Parameter(torch.empty(branch_channels, in_channels, 3, 3))
                                        for _ in self.dilations)
        for kernel in self.kernels:  # the same initialisation nn.Conv2d gives its weight
            nn.init.kaiming_uniform_(kernel, a=math.sqrt(5))

    def branch(self, x: torch.Tensor, index: int) -> torch.Tensor:
        """Branch ``index``: the one kernel at dilation r minus the same kernel at dilation 1."""
        kernel, r = self.kernels[index], self.dilations[index]
        return F.conv2d(x, kernel, padding=r, dilation=r) - F.conv2d(x, kernel, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim != 4 or x.shape[1] != self.in_channels:
            raise ValueError(f"SpatialLocalContrast expects (B, {self.in_channels}, H, W), got {tuple(x.shape)}")
        return torch.cat([self.branch(x, index) for index in range(len(self.dilations))], dim=1)


class SelfAttentionGate(nn.Module):
    """SAG: ``x * sigmoid(mlp(GAP(x)) + mlp(GMP(x)))`` with one shared mlp (C -> C/r -> C).

    256 -> 16 -> 256 on P3..P5 (r = 16); 512 -> 64 -> 512 on P2 after SLCF (r = 8, the widths in issue #12's
    reading of the paper).
    """

    def __init__(self, channels: int, reduction: int = 16):
        super().__init__()
        hidden = max(1, channels // reduction)
        self.mlp = nn.Sequential(nn.Linear(channels, hidden), nn.ReLU(inplace=True), nn.Linear(hidden, channels))

    def gate(self, x: torch.Tensor) -> torch.Tensor:
        """Channel weights in (0, 1), shape (B, C, 1, 1)."""
        average = self.mlp(x.mean(dim=(2, 3)))
        maximum = self.mlp(x.amax(dim=(2, 3)))
        return torch.sigmoid(average + maximum)[:, :, None, None]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.gate(x)


class BPMFeaturePyramid(nn.Module):
    """FPN with 2x2 transposed-convolution upsampling and the P5 -> P3 skip concatenation; SLCF on P2, SAG on all.

    ``forward([C2, C3, C4, C5]) -> [P2, P3, P4, P5, P6]`` (P6: stride-2 max pool of P5, for the RPN only), every
    level with ``channels`` channels. P2's path: 3x3 output conv -> SLCF (``2 * channels`` = 512 channels, replacing
    P2) -> SAG on those channels (reduction ``slcf_sag_reduction`` = 8: 512 -> 64 -> 512 at the paper's 256
    channels) -> ``slcf_bridge``, a 1x1 conv back to ``channels``. The bridge is our assumption (the shared RPN and
    RoI heads need one channel count; we could not read how the paper joins them), the smallest layer that does it.
    """

    def __init__(self, in_channels: Sequence[int], channels: int = 256, slcf: bool = True, sag: bool = True,
                 skip_concat: bool = True, sag_reduction: int = 16, slcf_sag_reduction: int = 8):
        super().__init__()
        self.lateral = nn.ModuleList(nn.Conv2d(c, channels, 1) for c in in_channels)
        # up[i] brings level i+1's top-down map to level i (stride 2)
        self.up = nn.ModuleList(nn.ConvTranspose2d(channels, channels, 2, stride=2) for _ in in_channels[:-1])
        self.skip_concat = skip_concat
        if skip_concat:
            self.skip_up = nn.ConvTranspose2d(channels, channels, 4, stride=4)       # P5 -> P3, k = s = 4
            self.skip_reduce = nn.Conv2d(2 * channels, channels, 1)
        self.output = nn.ModuleList(nn.Conv2d(channels, channels, 3, padding=1) for _ in in_channels)
        self.slcf = SpatialLocalContrast(channels, channels // 2) if slcf else None
        p2_channels = self.slcf.out_channels if slcf else channels
        self.slcf_bridge = nn.Conv2d(p2_channels, channels, 1) if slcf else None
        if sag:
            p2_gate = (SelfAttentionGate(p2_channels, slcf_sag_reduction) if slcf
                       else SelfAttentionGate(channels, sag_reduction))
            self.sag = nn.ModuleList([p2_gate] + [SelfAttentionGate(channels, sag_reduction) for _ in in_channels[1:]])
        else:
            self.sag = None

    def top_down(self, features: Sequence[torch.Tensor]) -> List[torch.Tensor]:
        """The merged maps before the 3x3 output convolutions: [M2, M3, M4, M5]."""
        merged = [None] * len(features)
        merged[-1] = self.lateral[-1](features[-1])
        for level in range(len(features) - 2, -1, -1):
            current = self.lateral[level](features[level]) + self.up[level](merged[level + 1])
            if self.skip_concat and level == 1:  # P3 gets P5 straight through a stride-4 transposed convolution
                current = self.skip_reduce(torch.cat([current, self.skip_up(merged[-1])], dim=1))
            merged[level] = current
        return merged

    def forward(self, features: Sequence[torch.Tensor]) -> List[torch.Tensor]:
        pyramid = [conv(m) for conv, m in zip(self.output, self.top_down(features))]
        if self.slcf is not None:
            pyramid[0] = self.slcf(pyramid[0])            # replaces P2 (512 channels), no residual add
        if self.sag is not None:                          # P2's gate sits after SLCF, on its 512 channels
            pyramid = [gate(p) for gate, p in zip(self.sag, pyramid)]
        if self.slcf_bridge is not None:
            pyramid[0] = self.slcf_bridge(pyramid[0])     # back to the heads' channel count (our assumption)
        pyramid.append(F.max_pool2d(pyramid[-1], kernel_size=1, stride=2))
        return pyramid


# ------------------------------------------------------------------------------------------------------------ RPN
class RegionProposalNetwork(nn.Module):
    """Shared 3x3 conv head over P2..P6, anchors of one size per level and three aspect ratios."""

    def __init__(self, channels: int = 256, anchor_sizes: Sequence[float] = (32, 64, 128, 256, 512),
                 aspect_ratios: Sequence[float] = (0.5, 1.0, 2.0), strides: Sequence[int] = RPN_STRIDES,
                 pre_nms_top_n: Tuple[int, int] = (2000, 1000), post_nms_top_n: Tuple[int, int] = (2000, 1000),
                 nms_threshold: float = 0.7, fg_iou: float = 0.7, bg_iou: float = 0.3, batch_size: int = 256,
                 positive_fraction: float = 0.5, min_size: float = 1e-3):
        super().__init__()
        self.anchor_sizes, self.aspect_ratios, self.strides = tuple(anchor_sizes), tuple(aspect_ratios), tuple(strides)
        anchors = len(self.aspect_ratios)
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)
        self.objectness = nn.Conv2d(channels, anchors, 1)
        self.deltas = nn.Conv2d(channels, 4 * anchors, 1)
        for layer in (self.conv, self.objectness, self.deltas):
            nn.init.normal_(layer.weight, std=0.01)
            nn.init.zeros_(layer.bias)
        self.pre_nms_top_n, self.post_nms_top_n = tuple(pre_nms_top_n), tuple(post_nms_top_n)
        self.nms_threshold, self.fg_iou, self.bg_iou = nms_threshold, fg_iou, bg_iou
        self.batch_size, self.positive_fraction, self.min_size = batch_size, positive_fraction, min_size
        self.coder = box_coder((1.0, 1.0, 1.0, 1.0))

    def anchors(self, pyramid: Sequence[torch.Tensor]) -> List[torch.Tensor]:
        return [anchors_for_level(size, self.aspect_ratios, stride, p.shape[-2], p.shape[-1], p.device)
                for size, stride, p in zip(self.anchor_sizes, self.strides, pyramid)]

    def forward(self, pyramid: Sequence[torch.Tensor], image_size: Tuple[int, int],
                targets: Optional[List[Dict[str, torch.Tensor]]] = None
                ) -> Tuple[List[torch.Tensor], Dict[str, torch.Tensor]]:
        batch = pyramid[0].shape[0]
        objectness, deltas = [], []
        for p in pyramid:
            hidden = F.relu(self.conv(p))
            # (B, A, H, W) -> (B, H*W*A) in the anchors' (y, x, ratio) order
            objectness.append(self.objectness(hidden).permute(0, 2, 3, 1).reshape(batch, -1))
            deltas.append(self.deltas(hidden).permute(0, 2, 3, 1).reshape(batch, -1, 4))
        anchors = self.anchors(pyramid)
        level_sizes = [a.shape[0] for a in anchors]
        all_anchors = torch.cat(anchors)
        all_objectness, all_deltas = torch.cat(objectness, 1), torch.cat(deltas, 1)

        mode = 0 if self.training else 1
        proposals = []
        with torch.no_grad():
            decoded = self.coder.decode_single(all_deltas.detach().reshape(-1, 4),
                                               all_anchors.repeat(batch, 1)).reshape(batch, -1, 4)
            for image in range(batch):
                proposals.append(self._select(decoded[image], all_objectness[image].detach(), level_sizes,
                                              image_size, mode))
        losses = {}
        if self.training:
            if targets is None:
                raise ValueError("targets are required in train mode")
            losses = self._losses(all_anchors, all_objectness, all_deltas, targets)
        return proposals, losses

    def _select(self, boxes: torch.Tensor, scores: torch.Tensor, level_sizes: Sequence[int],
                image_size: Tuple[int, int], mode: int) -> torch.Tensor:
        picked_boxes, picked_scores, picked_levels = [], [], []
        start = 0
        for level, size in enumerate(level_sizes):
            level_scores = scores[start:start + size]
            top = torch.topk(level_scores, min(self.pre_nms_top_n[mode], size)).indices
            picked_boxes.append(boxes[start:start + size][top])
            picked_scores.append(level_scores[top])
            picked_levels.append(torch.full((top.numel(),), level, dtype=torch.int64, device=boxes.device))
            start += size
        boxes = clip_boxes(torch.cat(picked_boxes), *image_size)
        scores, levels = torch.cat(picked_scores), torch.cat(picked_levels)
        keep = keep_large_boxes(boxes, self.min_size)
        boxes, scores, levels = boxes[keep], scores[keep], levels[keep]
        keep = batched_nms(boxes, scores, levels, self.nms_threshold)[:self.post_nms_top_n[mode]]
        return boxes[keep]

    def _losses(self, anchors, objectness, deltas, targets) -> Dict[str, torch.Tensor]:
        sampled_logits, sampled_labels, box_losses, count = [], [], [], 0
        for image, target in enumerate(targets):
            gt = target["boxes"].to(anchors)
            matches = match_boxes(box_iou(gt, anchors), self.fg_iou, self.bg_iou, allow_low_quality=True)
            labels = torch.where(matches >= 0, 1, torch.where(matches == -1, 0, -1))
            positive, negative = sample_balanced(labels, self.batch_size, self.positive_fraction)
            sampled = torch.cat([positive, negative])
            sampled_logits.append(objectness[image, sampled])
            sampled_labels.append(labels[sampled].to(objectness.dtype))
            count += sampled.numel()
            if positive.numel():
                wanted = self.coder.encode_single(gt[matches[positive]], anchors[positive])
                box_losses.append(F.smooth_l1_loss(deltas[image, positive], wanted, beta=1 / 9, reduction="sum"))
        count = max(count, 1)
        loss_objectness = F.binary_cross_entropy_with_logits(torch.cat(sampled_logits), torch.cat(sampled_labels),
                                                             reduction="sum") / count
        loss_box = (torch.stack(box_losses).sum() if box_losses else deltas.sum() * 0.0) / count
        return {"loss_rpn_objectness": loss_objectness, "loss_rpn_box": loss_box}


# ------------------------------------------------------------------------------------------------------ RoI heads
class BoxHead(nn.Module):
    """RoIAlign 7x7 -> dense 1024 -> dense 1024 -> class scores (K) and class-specific box deltas (4K)."""

    def __init__(self, channels: int, num_classes: int, resolution: int = 7, hidden: int = 1024):
        super().__init__()
        self.fc1 = nn.Linear(channels * resolution * resolution, hidden)
        self.fc2 = nn.Linear(hidden, hidden)
        self.classes = nn.Linear(hidden, num_classes)
        self.deltas = nn.Linear(hidden, 4 * num_classes)
        nn.init.normal_(self.classes.weight, std=0.01)
        nn.init.normal_(self.deltas.weight, std=0.001)
        for layer in (self.classes, self.deltas):
            nn.init.zeros_(layer.bias)

    def forward(self, pooled: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        hidden = F.relu(self.fc2(F.relu(self.fc1(pooled.flatten(1)))))
        return self.classes(hidden), self.deltas(hidden)


class MaskHead(nn.Module):
    """FCN mask head: four 3x3 conv + ReLU, 2x2 stride-2 transposed conv + ReLU, 1x1 conv to one mask per class."""

    def __init__(self, channels: int, num_classes: int, width: int = 256):
        super().__init__()
        layers = []
        for index in range(4):
            layers += [nn.Conv2d(channels if index == 0 else width, width, 3, padding=1), nn.ReLU(inplace=True)]
        self.convs = nn.Sequential(*layers)
        self.upsample = nn.ConvTranspose2d(width, width, 2, stride=2)
        self.logits = nn.Conv2d(width, num_classes, 1)
        for module in self.modules():
            if isinstance(module, (nn.Conv2d, nn.ConvTranspose2d)):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
                nn.init.zeros_(module.bias)

    def forward(self, pooled: torch.Tensor) -> torch.Tensor:
        return self.logits(F.relu(self.upsample(self.convs(pooled))))


class RoIHeads(nn.Module):
    """Second stage: proposal sampling, box/class head, mask head, post-processing with per-class NMS."""

    def __init__(self, channels: int, num_classes: int, strides: Sequence[int] = PYRAMID_STRIDES,
                 batch_size: int = 512, positive_fraction: float = 0.25, fg_iou: float = 0.5,
                 score_threshold: float = 0.05, nms_threshold: float = 0.5, detections_per_image: int = 100,
                 box_resolution: int = 7, mask_resolution: int = 14, sampling_ratio: int = 2):
        super().__init__()
        self.num_classes, self.strides = num_classes, tuple(strides)
        self.box_head = BoxHead(channels, num_classes, box_resolution)
        self.mask_head = MaskHead(channels, num_classes)
        self.batch_size, self.positive_fraction, self.fg_iou = batch_size, positive_fraction, fg_iou
        self.score_threshold, self.nms_threshold = score_threshold, nms_threshold
        self.detections_per_image = detections_per_image
        self.box_resolution, self.mask_resolution, self.sampling_ratio = box_resolution, mask_resolution, sampling_ratio
        self.coder = box_coder((10.0, 10.0, 5.0, 5.0))

    @staticmethod
    def _rois(boxes_per_image: Sequence[torch.Tensor]) -> torch.Tensor:
        return torch.cat([torch.cat([torch.full((b.shape[0], 1), float(i), device=b.device, dtype=b.dtype), b], 1)
                          for i, b in enumerate(boxes_per_image)])

    def _pool(self, pyramid, boxes_per_image, resolution) -> torch.Tensor:
        return multilevel_roi_align(pyramid, self.strides, self._rois(boxes_per_image), (resolution, resolution),
                                    self.sampling_ratio)

    def forward(self, pyramid: Sequence[torch.Tensor], proposals: List[torch.Tensor], image_size: Tuple[int, int],
                targets: Optional[List[Dict[str, torch.Tensor]]] = None):
        pyramid = list(pyramid[:len(self.strides)])
        if self.training:
            return self._losses(pyramid, proposals, targets)
        return self._detect(pyramid, proposals, image_size)

    # training
    def _losses(self, pyramid, proposals, targets) -> Dict[str, torch.Tensor]:
        sampled_boxes, labels, regression, matched_gt = [], [], [], []
        for boxes, target in zip(proposals, targets):
            gt = target["boxes"].to(boxes)
            boxes = torch.cat([boxes, gt])  # the ground truth is always a candidate
            matches = match_boxes(box_iou(gt, boxes), self.fg_iou, self.fg_iou, allow_low_quality=False)
            box_labels = torch.where(matches >= 0, target["labels"].to(torch.int64)[matches.clamp(min=0)],
                                     torch.zeros_like(matches)) if gt.shape[0] else torch.zeros_like(matches)
            positive, negative = sample_balanced(box_labels, self.batch_size, self.positive_fraction)
            chosen = torch.cat([positive, negative])
            sampled_boxes.append(boxes[chosen])
            labels.append(box_labels[chosen])
            matched = matches[chosen].clamp(min=0)
            matched_gt.append(matched)
            regression.append(self.coder.encode_single(gt[matched], boxes[chosen]) if gt.shape[0]
                              else torch.zeros(chosen.numel(), 4, device=boxes.device))
        labels_all = torch.cat(labels)
        class_logits, deltas = self.box_head(self._pool(pyramid, sampled_boxes, self.box_resolution))
        loss_class = F.cross_entropy(class_logits, labels_all)
        foreground = torch.nonzero(labels_all > 0).flatten()
        deltas = deltas.reshape(deltas.shape[0], -1, 4)
        if foreground.numel():
            loss_box = F.smooth_l1_loss(deltas[foreground, labels_all[foreground]],
                                        torch.cat(regression)[foreground], beta=1 / 9,
                                        reduction="sum") / max(labels_all.numel(), 1)
        else:
            loss_box = deltas.sum() * 0.0
        return {"loss_class": loss_class, "loss_box": loss_box,
                "loss_mask": self._mask_loss(pyramid, sampled_boxes, labels, matched_gt, targets)}

    def _mask_loss(self, pyramid, sampled_boxes, labels, matched_gt, targets) -> torch.Tensor:
        fg_boxes, fg_labels, mask_targets = [], [], []
        size = 2 * self.mask_resolution
        for boxes, box_labels, matched, target in zip(sampled_boxes, labels, matched_gt, targets):
            foreground = torch.nonzero(box_labels > 0).flatten()
            fg_boxes.append(boxes[foreground])
            fg_labels.append(box_labels[foreground])
            if foreground.numel():
                masks = target["masks"].to(boxes.dtype)[:, None]                       # (G, 1, H, W)
                rois = torch.cat([matched[foreground, None].to(boxes.dtype), boxes[foreground]], dim=1)
                # RoIAlign of the ground truth mask in the proposal box gives the 28x28 target
                sampled = roi_align(masks, rois, (size, size), 1.0, sampling_ratio=2, aligned=True)
                mask_targets.append((sampled[:, 0] >= 0.5).to(boxes.dtype))
        if sum(b.shape[0] for b in fg_boxes) == 0:
            # no foreground: a zero that still depends on the mask head, so every parameter gets a gradient
            return sum(p.sum() for p in self.mask_head.parameters()) * 0.0
        logits = self.mask_head(self._pool(pyramid, fg_boxes, self.mask_resolution))
        chosen = logits[torch.arange(logits.shape[0], device=logits.device), torch.cat(fg_labels)]
        return F.binary_cross_entropy_with_logits(chosen, torch.cat(mask_targets))

    # inference
    def _detect(self, pyramid, proposals, image_size) -> List[Dict[str, torch.Tensor]]:
        height, width = image_size
        class_logits, deltas = self.box_head(self._pool(pyramid, proposals, self.box_resolution))
        scores = torch.softmax(class_logits, dim=-1)
        counts = [p.shape[0] for p in proposals]
        results = []
        for boxes, image_scores, image_deltas in zip(proposals, scores.split(counts), deltas.split(counts)):
            k = self.num_classes
            decoded = self.coder.decode_single(image_deltas.reshape(-1, 4),
                                               boxes[:, None, :].expand(-1, k, -1).reshape(-1, 4))
            decoded = clip_boxes(decoded, height, width).reshape(-1, k, 4)[:, 1:].reshape(-1, 4)
            flat_scores = image_scores[:, 1:].reshape(-1)
            labels = torch.arange(1, k, device=boxes.device).repeat(boxes.shape[0])
            keep = torch.nonzero(flat_scores > self.score_threshold).flatten()
            decoded, flat_scores, labels = decoded[keep], flat_scores[keep], labels[keep]
            keep = keep_large_boxes(decoded, 1e-2)
            decoded, flat_scores, labels = decoded[keep], flat_scores[keep], labels[keep]
            keep = batched_nms(decoded, flat_scores, labels, self.nms_threshold)[:self.detections_per_image]
            results.append({"boxes": decoded[keep], "labels": labels[keep], "scores": flat_scores[keep]})
        detected = [r["boxes"] for r in results]
        if sum(b.shape[0] for b in detected):
            logits = self.mask_head(self._pool(pyramid, detected, self.mask_resolution))
            probabilities = torch.sigmoid(logits)
        else:
            probabilities = pyramid[0].new_zeros(0, self.num_classes, 2 * self.mask_resolution,
                                                 2 * self.mask_resolution)
        start = 0
        for result in results:
            n = result["boxes"].shape[0]
            chosen = probabilities[start:start + n][torch.arange(n, device=probabilities.device), result["labels"]]
            result["masks"] = paste_masks(chosen, result["boxes"], height, width)
            start += n
        return results


# -------------------------------------------------------------------------------------------------------- network
class BPMSegNet(nn.Module):
    """The whole network; see the module docstring for the train and eval contracts.

    ``num_classes`` counts the background (4 tissue classes -> 5). Images are (B, C, H, W) float, H and W
    divisible by 32 (the paper resizes to 640x640).
    """

    task = "instance"

    def __init__(self, num_classes: int, in_channels: int = 1, fpn_channels: int = 256, slcf: bool = True,
                 sag: bool = True, skip_concat: bool = True, norm: str = "batch",
                 anchor_sizes: Sequence[float] = (32, 64, 128, 256, 512),
                 aspect_ratios: Sequence[float] = (0.5, 1.0, 2.0),
                 rpn_pre_nms_top_n: Sequence[int] = (2000, 1000), rpn_post_nms_top_n: Sequence[int] = (2000, 1000),
                 rpn_batch_size: int = 256, box_batch_size: int = 512, score_threshold: float = 0.05,
                 detections_per_image: int = 100):
        super().__init__()
        if num_classes < 2:
            raise ValueError(f"num_classes counts the background and must be at least 2, got {num_classes}")
        self.num_classes = num_classes
        self.backbone = VGGBackbone(in_channels, norm=norm)
        self.fpn = BPMFeaturePyramid(self.backbone.out_channels, fpn_channels, slcf=slcf, sag=sag,
                                     skip_concat=skip_concat)
        self.rpn = RegionProposalNetwork(fpn_channels, anchor_sizes, aspect_ratios,
                                         pre_nms_top_n=tuple(rpn_pre_nms_top_n),
                                         post_nms_top_n=tuple(rpn_post_nms_top_n), batch_size=rpn_batch_size)
        self.roi_heads = RoIHeads(fpn_channels, num_classes, batch_size=box_batch_size,
                                  score_threshold=score_threshold, detections_per_image=detections_per_image)
        for module in self.backbone.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, images, targets: Optional[List[Dict[str, torch.Tensor]]] = None):
        if isinstance(images, (list, tuple)):
            images = torch.stack(list(images))
        if images.ndim != 4:
            raise ValueError(f"images must be (B, C, H, W), got shape {tuple(images.shape)}")
        height, width = int(images.shape[-2]), int(images.shape[-1])
        if height % 32 or width % 32:
            raise ValueError(f"image height and width must be divisible by 32, got {height}x{width}")
        if self.training:
            if targets is None or len(targets) != images.shape[0]:
                raise ValueError("train mode needs one target dict (boxes, labels, masks) per image")
            for index, target in enumerate(targets):
                _check_target(target, index, self.num_classes, (height, width))
        pyramid = self.fpn(self.backbone(images))
        proposals, rpn_losses = self.rpn(pyramid, (height, width), targets if self.training else None)
        if self.training:
            losses = dict(rpn_losses)
            losses.update(self.roi_heads(pyramid, proposals, (height, width), targets))
            return losses
        return self.roi_heads(pyramid, proposals, (height, width))


def _check_target(target: Dict[str, torch.Tensor], index: int, num_classes: int, size: Tuple[int, int]) -> None:
    for key in ("boxes", "labels", "masks"):
        if key not in target:
            raise ValueError(f"target {index} has no {key!r} (needs boxes (N,4) xyxy, labels (N,), masks (N,H,W))")
    n = target["boxes"].shape[0]
    if target["boxes"].shape != (n, 4) or target["labels"].shape != (n,) or \
            tuple(target["masks"].shape) != (n,) + tuple(size):
        raise ValueError(f"target {index}: boxes {tuple(target['boxes'].shape)}, labels "
                         f"{tuple(target['labels'].shape)}, masks {tuple(target['masks'].shape)} do not agree "
                         f"(expected (N,4), (N,), (N,{size[0]},{size[1]}))")
    if n and (int(target["labels"].min()) < 1 or int(target["labels"].max()) >= num_classes):
        raise ValueError(f"target {index}: labels must be 1..{num_classes - 1}, got {target['labels'].tolist()}")


def build_bpmsegnet(num_classes: int, in_channels: int = 1, **kwargs) -> BPMSegNet:
    for key in ("rpn_pre_nms_top_n", "rpn_post_nms_top_n"):
        if key in kwargs:
            kwargs[key] = tuple(kwargs[key])
    return BPMSegNet(num_classes=num_classes, in_channels=in_channels, **kwargs)


__all__ = ["BPMSegNet", "build_bpmsegnet", "SpatialLocalContrast", "SelfAttentionGate", "BPMFeaturePyramid",
           "VGGBackbone"]
