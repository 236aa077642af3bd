"""Two-stage detection building blocks in plain torch: boxes, anchors, matching, sampling, NMS, RoIAlign.

torchvision's compiled ops (nms, roi_align) do not load here, so they are written in torch. Boxes are float
``(N, 4)`` ``x1, y1, x2, y2`` in input pixels, with continuous coordinates (a box of width w covers x1..x1+w; no
"+1" pixel convention). Box regression uses MONAI's :class:`~monai.apps.detection.utils.box_coder.BoxCoder`
(Faster R-CNN's parameterisation).

Each function says its units; tests compare :func:`nms` and :func:`roi_align` with slow reference loops.
"""

from __future__ import annotations

import math
from typing import List, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.nn.functional as F


# ---------------------------------------------------------------------------------------------------------- boxes
def box_area(boxes: torch.Tensor) -> torch.Tensor:
    """Areas (px^2) of (N, 4) xyxy boxes; 0 for degenerate boxes."""
    return (boxes[:, 2] - boxes[:, 0]).clamp(min=0) * (boxes[:, 3] - boxes[:, 1]).clamp(min=0)


def box_iou(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """(N, M) intersection over union of xyxy boxes; 0 where the union is empty."""
    top_left = torch.maximum(a[:, None, :2], b[None, :, :2])
    bottom_right = torch.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = (bottom_right - top_left).clamp(min=0).prod(dim=2)
    union = box_area(a)[:, None] + box_area(b)[None, :] - inter
    return torch.where(union > 0, inter / union.clamp(min=1e-12), torch.zeros_like(inter))


def clip_boxes(boxes: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Boxes clipped to the image 0..width, 0..height (px)."""
    x = boxes[:, 0::2].clamp(0, width)
    y = boxes[:, 1::2].clamp(0, height)
    return torch.stack([x[:, 0], y[:, 0], x[:, 1], y[:, 1]], dim=1)


def keep_large_boxes(boxes: torch.Tensor, min_size: float) -> torch.Tensor:
    """Indices of boxes whose width and height are both at least ``min_size`` px."""
    widths, heights = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]
    return torch.nonzero((widths >= min_size) & (heights >= min_size)).flatten()


def masks_to_boxes(masks: torch.Tensor) -> torch.Tensor:
    """Tight xyxy boxes (px, continuous: a one-pixel mask at (r, c) gives [c, r, c+1, r+1]) of (N, H, W) masks."""
    if masks.numel() == 0:
        return torch.zeros(0, 4, dtype=torch.float32, device=masks.device)
    boxes = torch.zeros(masks.shape[0], 4, dtype=torch.float32, device=masks.device)
    for index, mask in enumerate(masks):
        ys, xs = torch.nonzero(mask, as_tuple=True)
        if ys.numel():
            boxes[index] = torch.stack([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]).float()
    return boxes


def box_coder(weights: Sequence[float] = (1.0, 1.0, 1.0, 1.0)):
    """MONAI's Faster R-CNN box coder (dx, dy, dw, dh scaled by ``weights``; dw, dh clipped at log(1000/16))."""
    from monai.apps.detection.utils.box_coder import BoxCoder

    return BoxCoder(weights=tuple(float(w) for w in weights))


# ------------------------------------------------------------------------------------------------------------ NMS
def nms(boxes: torch.Tensor, scores: torch.Tensor, iou_threshold: float) -> torch.Tensor:
    """Greedy non-maximum suppression: indices of kept boxes, highest score first.

    A box is dropped when its IoU with an already kept, higher-scoring box exceeds ``iou_threshold``. Ties in
    score keep the lower index first (stable sort), like torchvision. The IoU matrix is computed once in torch;
    the greedy pass runs over it in numpy (O(N^2) memory: fine for the few thousand proposals per image here).
    """
    if boxes.shape[0] == 0:
        return torch.zeros(0, dtype=torch.int64, device=boxes.device)
    order = torch.argsort(scores, descending=True, stable=True)
    iou = box_iou(boxes[order], boxes[order]).detach().cpu().numpy()
    suppressed = np.zeros(len(order), dtype=bool)
    keep = []
    for i in range(len(order)):
        if suppressed[i]:
            continue
        keep.append(i)
        suppressed[i + 1:] |= iou[i, i + 1:] > iou_threshold
    return order[torch.as_tensor(keep, dtype=torch.int64, device=boxes.device)]


def batched_nms(boxes: torch.Tensor, scores: torch.Tensor, groups: torch.Tensor, iou_threshold: float
                ) -> torch.Tensor:
    """NMS within each group (class or image) independently: boxes of different groups never suppress each other."""
    if boxes.shape[0] == 0:
        return torch.zeros(0, dtype=torch.int64, device=boxes.device)
    # Shift each group to its own far-away region so that cross-group IoU is 0, then one NMS pass.
    offsets = groups.to(boxes.dtype) * (boxes.max() - boxes.min() + 1)
    return nms(boxes + offsets[:, None], scores, iou_threshold)


# -------------------------------------------------------------------------------------------------------- anchors
def anchors_for_level(size: float, aspect_ratios: Sequence[float], stride: int, height: int, width: int,
                      device=None) -> torch.Tensor:
    """Anchors (height*width*A, 4) xyxy in px for one feature level, ordered (y, x, ratio).

    Each anchor has area size^2 and height/width = ratio, centred on the feature cell's centre
    ((x + 0.5) * stride, (y + 0.5) * stride).
    """
    ratios = torch.as_tensor(aspect_ratios, dtype=torch.float32, device=device)
    heights = size * torch.sqrt(ratios)
    widths = size / torch.sqrt(ratios)
    base = torch.stack([-widths, -heights, widths, heights], dim=1) / 2            # (A, 4)
    ys = (torch.arange(height, dtype=torch.float32, device=device) + 0.5) * stride
    xs = (torch.arange(width, dtype=torch.float32, device=device) + 0.5) * stride
    cy, cx = torch.meshgrid(ys, xs, indexing="ij")
    centres = torch.stack([cx, cy, cx, cy], dim=-1).reshape(-1, 1, 4)               # (HW, 1, 4)
    return (centres + base[None]).reshape(-1, 4)


# ------------------------------------------------------------------------------------------- matching, sampling
BELOW_LOW = -1
BETWEEN = -2


def match_boxes(iou: torch.Tensor, high: float, low: float, allow_low_quality: bool) -> torch.Tensor:
    """For each prediction (column of the (G, P) IoU matrix) the index of its ground truth box.

    Returns (P,) int64: the matched gt index where max IoU >= ``high``, BELOW_LOW (-1) where < ``low``, BETWEEN (-2)
    in between (ignored). ``allow_low_quality`` also matches each gt to the predictions of its highest IoU even
    under ``high`` (so every object has at least one positive anchor).
    """
    if iou.shape[0] == 0:
        return torch.full((iou.shape[1],), BELOW_LOW, dtype=torch.int64, device=iou.device)
    best, matches = iou.max(dim=0)
    original = matches.clone()
    matches[best < low] = BELOW_LOW
    matches[(best >= low) & (best < high)] = BETWEEN
    if allow_low_quality:
        best_per_gt = iou.max(dim=1, keepdim=True).values
        _, columns = torch.nonzero((iou == best_per_gt) & (best_per_gt > 0), as_tuple=True)
        matches[columns] = original[columns]
    return matches


def sample_balanced(labels: torch.Tensor, batch_size: int, positive_fraction: float,
                    generator: Optional[torch.Generator] = None) -> Tuple[torch.Tensor, torch.Tensor]:
    """Random positive (label >= 1) and negative (label == 0) indices: at most ``positive_fraction`` of
    ``batch_size`` positives, negatives fill the rest; labels < 0 are ignored."""
    positive = torch.nonzero(labels >= 1).flatten()
    negative = torch.nonzero(labels == 0).flatten()
    num_pos = min(positive.numel(), int(batch_size * positive_fraction))
    num_neg = min(negative.numel(), batch_size - num_pos)
    pick_pos = positive[torch.randperm(positive.numel(), generator=generator, device=positive.device)[:num_pos]]
    pick_neg = negative[torch.randperm(negative.numel(), generator=generator, device=negative.device)[:num_neg]]
    return pick_pos, pick_neg


# ------------------------------------------------------------------------------------------------------- RoIAlign
def _bilinear_gather(feature: torch.Tensor, y: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Bilinear samples of ``feature`` (C, H, W) at float positions y, x (same shape S): (C, *S).

    RoIAlign's border rule: positions more than one pixel outside the map give 0; others are clamped to the map.
    """
    _, height, width = feature.shape
    outside = (y < -1.0) | (y > height) | (x < -1.0) | (x > width)
    y = y.clamp(min=0)
    x = x.clamp(min=0)
    y0 = y.floor().long()
    x0 = x.floor().long()
    at_bottom = y0 >= height - 1
    at_right = x0 >= width - 1
    y0 = torch.where(at_bottom, torch.full_like(y0, height - 1), y0)
    x0 = torch.where(at_right, torch.full_like(x0, width - 1), x0)
    y = torch.where(at_bottom, y0.to(y.dtype), y)
    x = torch.where(at_right, x0.to(x.dtype), x)
    y1 = torch.where(at_bottom, y0, y0 + 1)
    x1 = torch.where(at_right, x0, x0 + 1)
    ly, lx = y - y0.to(y.dtype), x - x0.to(x.dtype)
    hy, hx = 1.0 - ly, 1.0 - lx
    value = (feature[:, y0, x0] * (hy * hx) + feature[:, y0, x1] * (hy * lx)
             + feature[:, y1, x0] * (ly * hx) + feature[:, y1, x1] * (ly * lx))
    return value * (~outside).to(value.dtype)


def roi_align(features: torch.Tensor, rois: torch.Tensor, output_size: Tuple[int, int], spatial_scale: float,
              sampling_ratio: int = 2, aligned: bool = True, chunk: int = 64) -> torch.Tensor:
    """RoIAlign (He et al., Mask R-CNN): (K, C, PH, PW) features of ``rois`` (K, 5) = (batch index, x1, y1, x2, y2)
    in input px, from ``features`` (B, C, H, W) at ``spatial_scale`` (feature px per input px).

    Each output bin averages sampling_ratio x sampling_ratio bilinear samples at the centres of a regular grid
    inside the bin; ``sampling_ratio`` <= 0 uses ceil(roi size / output size) samples per bin, per RoI.
    ``aligned=True`` shifts the box by -0.5 feature px so that pixel centres line up (Detectron2 / torchvision
    semantics); ``aligned=False`` keeps the original shift-less form and forces RoIs to at least 1x1. Gradients flow
    to ``features`` (not to the boxes). RoIs are processed ``chunk`` at a time to bound memory.
    """
    out_h, out_w = int(output_size[0]), int(output_size[1])
    num_rois, channels = rois.shape[0], features.shape[1]
    if num_rois == 0:
        return features.new_zeros(0, channels, out_h, out_w)
    offset = 0.5 if aligned else 0.0
    x1 = rois[:, 1] * spatial_scale - offset
    y1 = rois[:, 2] * spatial_scale - offset
    roi_w = rois[:, 3] * spatial_scale - offset - x1
    roi_h = rois[:, 4] * spatial_scale - offset - y1
    if not aligned:
        roi_w, roi_h = roi_w.clamp(min=1.0), roi_h.clamp(min=1.0)
    bin_w, bin_h = roi_w / out_w, roi_h / out_h
    outputs = []
    if sampling_ratio > 0:
        grid = sampling_ratio
        # sample offsets inside the RoI, in units of bins: (p + (i + 0.5) / grid) for p < out, i < grid
        steps_y = (torch.arange(out_h, device=rois.device, dtype=rois.dtype)[:, None]
                   + (torch.arange(grid, device=rois.device, dtype=rois.dtype)[None, :] + 0.5) / grid).reshape(-1)
        steps_x = (torch.arange(out_w, device=rois.device, dtype=rois.dtype)[:, None]
                   + (torch.arange(grid, device=rois.device, dtype=rois.dtype)[None, :] + 0.5) / grid).reshape(-1)
        for start in range(0, num_rois, chunk):
            part = slice(start, start + chunk)
            ys = y1[part, None] + steps_y[None, :] * bin_h[part, None]                 # (k, out_h*grid)
            xs = x1[part, None] + steps_x[None, :] * bin_w[part, None]                 # (k, out_w*grid)
            batch = rois[part, 0].long()
            for b in torch.unique(batch).tolist():
                selected = torch.nonzero(batch == b).flatten()
                yy = ys[selected][:, :, None].expand(-1, -1, xs.shape[1])
                xx = xs[selected][:, None, :].expand(-1, ys.shape[1], -1)
                samples = _bilinear_gather(features[b], yy, xx)                     # (C, k, out_h*g, out_w*g)
                pooled = samples.reshape(channels, -1, out_h, grid, out_w, grid).mean(dim=(3, 5))
                outputs.append((selected + start, pooled.transpose(0, 1)))
    else:
        for index in range(num_rois):  # adaptive grid: the sample count differs per RoI
            grid_h = max(1, int(math.ceil(float(roi_h[index]) / out_h)))
            grid_w = max(1, int(math.ceil(float(roi_w[index]) / out_w)))
            sy = (torch.arange(out_h, device=rois.device, dtype=rois.dtype)[:, None]
                  + (torch.arange(grid_h, device=rois.device, dtype=rois.dtype)[None, :] + 0.5) / grid_h).reshape(-1)
            sx = (torch.arange(out_w, device=rois.device, dtype=rois.dtype)[:, None]
                  + (torch.arange(grid_w, device=rois.device, dtype=rois.dtype)[None, :] + 0.5) / grid_w).reshape(-1)
            yy = (y1[index] + sy * bin_h[index])[:, None].expand(-1, sx.numel())
            xx = (x1[index] + sx * bin_w[index])[None, :].expand(sy.numel(), -1)
            samples = _bilinear_gather(features[int(rois[index, 0])], yy, xx)         # (C, out_h*gh, out_w*gw)
            pooled = samples.reshape(channels, out_h, grid_h, out_w, grid_w).mean(dim=(2, 4))
            outputs.append((torch.tensor([index], device=rois.device), pooled[None]))
    result = features.new_zeros(num_rois, channels, out_h, out_w)
    for indices, pooled in outputs:
        result = result.index_copy(0, indices, pooled)
    return result


def fpn_levels(boxes: torch.Tensor, min_level: int = 2, max_level: int = 5, canonical_size: float = 224.0,
               canonical_level: int = 4) -> torch.Tensor:
    """FPN level of each box (Lin et al. 2017, eq. 1): floor(k0 + log2(sqrt(area) / 224)), clamped."""
    scale = torch.sqrt(box_area(boxes)).clamp(min=1e-6)
    levels = torch.floor(canonical_level + torch.log2(scale / canonical_size + 1e-8))
    return levels.clamp(min_level, max_level).to(torch.int64)


def multilevel_roi_align(features: List[torch.Tensor], strides: Sequence[int], rois: torch.Tensor,
                         output_size: Tuple[int, int], sampling_ratio: int = 2) -> torch.Tensor:
    """RoIAlign of each RoI on its FPN level (levels = log2(stride) of ``features``)."""
    levels = [int(round(math.log2(s))) for s in strides]
    channels = features[0].shape[1]
    result = features[0].new_zeros(rois.shape[0], channels, *output_size)
    if rois.shape[0] == 0:
        return result
    assigned = fpn_levels(rois[:, 1:], min(levels), max(levels))
    for feature, stride, level in zip(features, strides, levels):
        selected = torch.nonzero(assigned == level).flatten()
        if selected.numel():
            pooled = roi_align(feature, rois[selected], output_size, 1.0 / stride, sampling_ratio, aligned=True)
            result = result.index_copy(0, selected, pooled)
    return result


# -------------------------------------------------------------------------------------------------- mask pasting
def paste_masks(masks: torch.Tensor, boxes: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """(N, height, width) float masks in 0..1: each (M, M) box-relative mask resampled (bilinear) into its box.

    Pixel (r, c) of the image takes the mask value at its centre (c + 0.5, r + 0.5) relative to the box; pixels
    outside the box are 0.
    """
    out = masks.new_zeros(masks.shape[0], height, width)
    for index in range(masks.shape[0]):
        x1, y1, x2, y2 = boxes[index].tolist()
        c0, r0 = max(int(math.floor(x1)), 0), max(int(math.floor(y1)), 0)
        c1, r1 = min(int(math.ceil(x2)), width), min(int(math.ceil(y2)), height)
        if c1 <= c0 or r1 <= r0 or x2 <= x1 or y2 <= y1:
            continue
        xs = (torch.arange(c0, c1, dtype=masks.dtype, device=masks.device) + 0.5 - x1) / (x2 - x1) * 2 - 1
        ys = (torch.arange(r0, r1, dtype=masks.dtype, device=masks.device) + 0.5 - y1) / (y2 - y1) * 2 - 1
        grid_y, grid_x = torch.meshgrid(ys, xs, indexing="ij")
        grid = torch.stack([grid_x, grid_y], dim=-1)[None]
        sampled = F.grid_sample(masks[index][None, None], grid, mode="bilinear", padding_mode="zeros",
                                align_corners=False)
        out[index, r0:r1, c0:c1] = sampled[0, 0]
    return out
