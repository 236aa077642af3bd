"""Detection ops written in torch (torchvision's compiled ops do not load here), against slow reference loops."""

import math

import pytest
import torch

from NerveSegLogic.models.detection import (anchors_for_level, batched_nms, box_coder, box_iou, fpn_levels,
                                            masks_to_boxes, match_boxes, nms, paste_masks, roi_align,
                                            sample_balanced)

torch.set_num_threads(1)


# ------------------------------------------------------------------------------------------ reference loops
def reference_iou(a, b):
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def reference_nms(boxes, scores, threshold):
    boxes, scores = boxes.tolist(), scores.tolist()
    remaining = sorted(range(len(boxes)), key=lambda i: (-scores[i], i))
    keep = []
    while remaining:
        best = remaining.pop(0)
        keep.append(best)
        remaining = [i for i in remaining if reference_iou(boxes[best], boxes[i]) <= threshold]
    return keep


def reference_bilinear(feature, y, x):
    """RoIAlign's bilinear rule, one sample, plain Python."""
    channels, height, width = len(feature), len(feature[0]), len(feature[0][0])
    if y < -1.0 or y > height or x < -1.0 or x > width:
        return [0.0] * channels
    y, x = max(y, 0.0), max(x, 0.0)
    y_low, x_low = int(math.floor(y)), int(math.floor(x))
    if y_low >= height - 1:
        y_high = y_low = height - 1
        y = float(y_low)
    else:
        y_high = y_low + 1
    if x_low >= width - 1:
        x_high = x_low = width - 1
        x = float(x_low)
    else:
        x_high = x_low + 1
    ly, lx = y - y_low, x - x_low
    hy, hx = 1 - ly, 1 - lx
    return [hy * hx * f[y_low][x_low] + hy * lx * f[y_low][x_high] + ly * hx * f[y_high][x_low]
            + ly * lx * f[y_high][x_high] for f in feature]


def reference_roi_align(features, rois, out_h, out_w, scale, sampling_ratio, aligned):
    features = features.tolist()
    result = []
    for roi in rois.tolist():
        feature = features[int(roi[0])]
        offset = 0.5 if aligned else 0.0
        x1, y1 = roi[1] * scale - offset, roi[2] * scale - offset
        w, h = roi[3] * scale - offset - x1, roi[4] * scale - offset - y1
        if not aligned:
            w, h = max(w, 1.0), max(h, 1.0)
        bin_w, bin_h = w / out_w, h / out_h
        grid_h = sampling_ratio if sampling_ratio > 0 else int(math.ceil(h / out_h))
        grid_w = sampling_ratio if sampling_ratio > 0 else int(math.ceil(w / out_w))
        out = [[[0.0] * out_w for _ in range(out_h)] for _ in range(len(feature))]
        for ph in range(out_h):
            for pw in range(out_w):
                total = [0.0] * len(feature)
                for iy in range(grid_h):
                    y = y1 + ph * bin_h + (iy + 0.5) * bin_h / grid_h
                    for ix in range(grid_w):
                        x = x1 + pw * bin_w + (ix + 0.5) * bin_w / grid_w
                        total = [t + v for t, v in zip(total, reference_bilinear(feature, y, x))]
                count = max(grid_h * grid_w, 1)
                for c in range(len(feature)):
                    out[c][ph][pw] = total[c] / count
        result.append(out)
    return torch.tensor(result)


def random_boxes(n, size=100.0, seed=0):
    generator = torch.Generator().manual_seed(seed)
    xy = torch.rand(n, 2, generator=generator) * size
    wh = torch.rand(n, 2, generator=generator) * size / 3 + 1
    return torch.cat([xy, xy + wh], dim=1)


# ------------------------------------------------------------------------------------------------------ tests
def test_box_iou_matches_the_reference():
    a, b = random_boxes(20, seed=1), random_boxes(15, seed=2)
    expected = torch.tensor([[reference_iou(x, y) for y in b.tolist()] for x in a.tolist()])
    assert torch.allclose(box_iou(a, b), expected, atol=1e-6)


@pytest.mark.parametrize("threshold", [0.3, 0.5, 0.7])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_nms_matches_the_reference(threshold, seed):
    boxes = random_boxes(150, seed=seed)
    scores = torch.rand(150, generator=torch.Generator().manual_seed(seed + 10))
    assert nms(boxes, scores, threshold).tolist() == reference_nms(boxes, scores, threshold)


def test_nms_keeps_the_lower_index_on_tied_scores_and_handles_empty_input():
    boxes = torch.tensor([[0.0, 0, 10, 10], [0.0, 0, 10, 10], [50, 50, 60, 60]])
    assert nms(boxes, torch.tensor([0.5, 0.5, 0.1]), 0.5).tolist() == [0, 2]
    assert nms(torch.zeros(0, 4), torch.zeros(0), 0.5).numel() == 0


def test_batched_nms_never_suppresses_across_groups():
    boxes = torch.tensor([[0.0, 0, 10, 10], [1.0, 1, 10, 10], [0.0, 0, 10, 10]])
    scores = torch.tensor([0.9, 0.8, 0.7])
    assert sorted(batched_nms(boxes, scores, torch.tensor([1, 1, 2]), 0.5).tolist()) == [0, 2]
    assert batched_nms(boxes, scores, torch.tensor([1, 1, 1]), 0.5).tolist() == [0]


@pytest.mark.parametrize("sampling_ratio", [2, 1, 0])
@pytest.mark.parametrize("aligned", [True, False])
def test_roi_align_matches_the_reference(sampling_ratio, aligned):
    generator = torch.Generator().manual_seed(3)
    features = torch.randn(2, 3, 12, 10, generator=generator)
    rois = torch.tensor([
        [0, 4.0, 4.0, 30.0, 20.0],     # inside
        [1, -6.0, -4.0, 12.0, 14.0],   # over the top-left border
        [0, 30.0, 40.0, 44.0, 52.0],   # over the bottom-right border
        [1, 10.0, 10.0, 11.0, 11.5],   # smaller than a feature pixel
        [0, 17.0, 3.0, 19.0, 33.0],    # thin and tall
    ])
    got = roi_align(features, rois, (3, 4), spatial_scale=0.25, sampling_ratio=sampling_ratio, aligned=aligned,
                    chunk=2)
    expected = reference_roi_align(features, rois, 3, 4, 0.25, sampling_ratio, aligned)
    assert got.shape == (5, 3, 3, 4)
    assert torch.allclose(got, expected, atol=1e-5)


def test_roi_align_passes_gradients_to_the_features():
    features = torch.randn(1, 2, 8, 8, requires_grad=True)
    pooled = roi_align(features, torch.tensor([[0, 2.0, 2.0, 20.0, 24.0]]), (2, 2), 0.25)
    pooled.sum().backward()
    assert features.grad is not None and features.grad.abs().sum() > 0


def test_roi_align_of_a_constant_map_inside_the_image_is_that_constant():
    features = torch.full((1, 1, 16, 16), 3.0)
    pooled = roi_align(features, torch.tensor([[0, 8.0, 8.0, 40.0, 30.0]]), (7, 7), 0.25)
    assert torch.allclose(pooled, torch.full_like(pooled, 3.0))


def test_anchors_have_the_size_ratio_and_centres_asked_for():
    anchors = anchors_for_level(32, (0.5, 1.0, 2.0), stride=8, height=2, width=3)
    assert anchors.shape == (2 * 3 * 3, 4)
    widths, heights = anchors[:, 2] - anchors[:, 0], anchors[:, 3] - anchors[:, 1]
    assert torch.allclose(widths * heights, torch.full((18,), 32.0 ** 2))
    assert torch.allclose((heights / widths)[:3], torch.tensor([0.5, 1.0, 2.0]))
    centres = (anchors[:, :2] + anchors[:, 2:]) / 2
    assert torch.allclose(centres[0], torch.tensor([4.0, 4.0]))
    assert torch.allclose(centres[3], torch.tensor([12.0, 4.0]))   # next cell to the right
    assert torch.allclose(centres[9], torch.tensor([4.0, 12.0]))   # next row


def test_matcher_thresholds_and_low_quality_matches():
    iou = torch.tensor([[0.9, 0.5, 0.1, 0.0],
                        [0.0, 0.2, 0.25, 0.0]])
    plain = match_boxes(iou, 0.7, 0.3, allow_low_quality=False)
    assert plain.tolist() == [0, -2, -1, -1]
    rescued = match_boxes(iou, 0.7, 0.3, allow_low_quality=True)
    assert rescued.tolist() == [0, -2, 1, -1]  # gt 1's best prediction (0.25) becomes its match
    assert match_boxes(torch.zeros(0, 3), 0.7, 0.3, True).tolist() == [-1, -1, -1]


def test_balanced_sampling_caps_positives_and_skips_ignored():
    labels = torch.tensor([1] * 10 + [0] * 100 + [-1] * 50)
    positive, negative = sample_balanced(labels, 16, 0.25, torch.Generator().manual_seed(0))
    assert positive.numel() == 4 and negative.numel() == 12
    assert (labels[positive] == 1).all() and (labels[negative] == 0).all()


def test_box_coder_round_trip_and_fpn_levels():
    coder = box_coder((10.0, 10.0, 5.0, 5.0))
    reference, targets = random_boxes(10, seed=4), random_boxes(10, seed=5)
    codes = coder.encode_single(targets, reference)
    assert torch.allclose(coder.decode_single(codes, reference), targets, atol=1e-3)
    boxes = torch.tensor([[0.0, 0, 224, 224], [0.0, 0, 112, 112], [0.0, 0, 20, 20], [0.0, 0, 900, 900]])
    assert fpn_levels(boxes).tolist() == [4, 3, 2, 5]


def test_masks_to_boxes_and_paste_masks_invert_each_other():
    mask = torch.zeros(1, 20, 30, dtype=torch.uint8)
    mask[0, 5:12, 8:20] = 1
    boxes = masks_to_boxes(mask)
    assert boxes.tolist() == [[8.0, 5.0, 20.0, 12.0]]
    pasted = paste_masks(torch.ones(1, 28, 28), boxes, 20, 30)
    assert pasted.shape == (1, 20, 30)
    inside = pasted[0, 5:12, 8:20]
    assert torch.allclose(inside, torch.ones_like(inside))
    assert pasted[0].sum() == inside.sum()
