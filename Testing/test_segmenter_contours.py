"""Smooth, full-resolution contours: the labelmap is the argmax of the probabilities resampled bilinearly to the
frame (computed only where it can differ from background, with the same answer), or on request the fast
nearest-neighbour argmax of the model's grid."""

import numpy as np
import pytest

from NerveSegLogic.imaging import placement as pp
from NerveSegLogic.inference.segmenter import (CONTOURS, Segmenter, _argmax_above_background, smooth_labelmap,
                                              smooth_labelmap_and_box)
from NerveSegLogic.models import registry
from NerveSegLogic.train import metrics


def _blobs(height, width, seed, background_bias=1.0):
    """(3, height, width) softmax probabilities of smooth random logits: blobs of class 1 and 2, some at the edges."""
    import cv2

    rng = np.random.default_rng(seed)
    logits = cv2.GaussianBlur(rng.normal(0, 3, (height, width, 3)).astype(np.float32), (0, 0), 6) * 4
    logits[..., 0] += background_bias
    e = np.exp(logits - logits.max(-1, keepdims=True))
    return np.ascontiguousarray((e / e.sum(-1, keepdims=True)).transpose(2, 0, 1))


CASES = [((512, 534), (128, 128), "fit_width_pad_crop_bottom"),  # usgra-seg frames: padded rows at the bottom
         ((420, 580), (128, 128), "fit_width_pad_crop_bottom"),
         ((700, 300), (128, 128), "fit_width_pad_crop_bottom"),  # a tall frame: its bottom is cropped away
         ((420, 580), (96, 160), "letterbox"),
         ((200, 90), (128, 128), "resize")]  # downsampling on one axis


@pytest.mark.parametrize("frame, size, mode", CASES)
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_smooth_labelmap_is_the_argmax_of_the_bilinearly_restored_probabilities(frame, size, mode, seed):
    probabilities = _blobs(*size, seed, background_bias=1.0 + 0.3 * seed)
    _, placement = pp.place(np.zeros(frame, np.uint8), pp.InputSpec(*size, resize=mode))
    expected = pp.restore(probabilities, placement).argmax(axis=0).astype(np.uint8)
    got = smooth_labelmap(probabilities, placement)
    assert got.shape == frame and got.dtype == np.uint8
    assert 0.01 < (expected > 0).mean() < 0.5  # the case has foreground to get wrong
    assert np.array_equal(got, expected)


@pytest.mark.parametrize("frame, size, mode", CASES)
def test_smooth_labelmap_box_holds_every_labelled_pixel_and_small_regions_go_alike(frame, size, mode):
    probabilities = _blobs(*size, 3)
    _, placement = pp.place(np.zeros(frame, np.uint8), pp.InputSpec(*size, resize=mode))
    labelmap, box = smooth_labelmap_and_box(probabilities, placement)
    top, bottom, left, right = box
    outside = labelmap.copy()
    outside[top:bottom, left:right] = 0
    assert labelmap[top:bottom, left:right].any() and not outside.any()
    # the box saves remove_small_components its scan of the frame, and changes nothing it clears
    for min_area in (1, 40, 400, 5000):
        scanned = pp.remove_small_components(labelmap, min_area, labels=[1, 2])
        hinted = pp.remove_small_components(labelmap, min_area, labels=[1, 2], within=box)
        assert np.array_equal(hinted, scanned)
    assert not np.array_equal(pp.remove_small_components(labelmap, 400, labels=[1, 2]), labelmap)


def _ring_with_a_region_in_its_hole_and_regions_on_every_edge(size=64):
    """(3, size, size) probabilities: a class-1 ring with a class-2 disc inside its hole, and class-1 discs cut by
    each edge and a corner of the map: regions whose outline lies inside another's hole, or on the map's border."""
    y, x = np.mgrid[0:size, 0:size].astype(np.float32) + 0.5
    r = np.hypot(x - size / 2, y - size / 2)
    ring = 1.0 / (1.0 + np.exp(np.clip((np.abs(r - 20) - 3) / 0.8, -50, 50)))
    disc = 1.0 / (1.0 + np.exp(np.clip((r - 5) / 0.8, -50, 50)))
    edges = np.zeros_like(r)
    for cx, cy in ((0, 32), (63, 20), (40, 0), (24, 63), (63, 63)):
        edges = np.maximum(edges, 1.0 / (1.0 + np.exp(np.clip((np.hypot(x - cx, y - cy) - 4) / 0.8, -50, 50))))
    one = np.maximum(ring, edges)
    return np.stack([np.clip(1.0 - one - disc, 0, 1), one, disc]).astype(np.float32)


@pytest.mark.parametrize("frame, size, mode", [((600, 600), (64, 64), "fit_width_pad_crop_bottom"),
                                               ((300, 300), (64, 64), "resize"),
                                               ((200, 90), (64, 64), "resize")])
def test_smooth_labelmap_of_a_region_inside_a_hole_and_of_regions_on_the_edges(frame, size, mode):
    """The resampled boxes come from the grown regions' outer outlines: a region inside another's hole has no outline
    of its own (it is inside that region's box), and regions cut by the map's edges reach the frame's edges."""
    import cv2

    probabilities = _ring_with_a_region_in_its_hole_and_regions_on_every_edge()
    _, placement = pp.place(np.zeros(frame, np.uint8), pp.InputSpec(*size, resize=mode))
    valid = probabilities[:, :placement.valid_h, :placement.valid_w]
    grown = cv2.dilate((valid[1:].max(axis=0) > valid[0]).astype(np.uint8), np.ones((3, 3), np.uint8))
    regions = cv2.connectedComponents(grown, connectivity=8)[0] - 1
    outlines = len(cv2.findContours(grown, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)[0])
    assert outlines < regions  # the case has a region without an outer outline of its own
    expected = pp.restore(probabilities, placement).argmax(axis=0).astype(np.uint8)
    got = smooth_labelmap(probabilities, placement)
    assert (expected == 2).any() and (expected[:, 0] == 1).any() and (expected[0] == 1).any()
    assert np.array_equal(got, expected)


@pytest.mark.parametrize("classes", [2, 3, 6])
def test_argmax_of_the_margins_over_background_is_the_argmax_of_the_classes_ties_included(classes):
    rng = np.random.default_rng(classes)
    # coarse values make ties common: numpy's rule takes the first class, so a tie with class 0 is background
    planes = [rng.integers(0, 4, (37, 53)).astype(np.float32) for _ in range(classes)]
    expected = np.stack(planes).argmax(axis=0)
    got = _argmax_above_background([plane - planes[0] for plane in planes[1:]])
    assert got.dtype == np.uint8 and got.shape == (37, 53)
    assert np.array_equal(got, expected)
    assert 0.1 < (expected == 0).mean() < 0.9
    assert all((expected == k).any() for k in range(classes))


def test_smooth_labelmap_of_background_only_is_empty():
    probabilities = np.zeros((3, 32, 32), np.float32)
    probabilities[0] = 1.0
    _, placement = pp.place(np.zeros((100, 120), np.uint8), pp.InputSpec(32, 32))
    assert not smooth_labelmap(probabilities, placement).any()
    assert smooth_labelmap_and_box(probabilities, placement)[1] is None


def _disc_probabilities(size, centre, radius, softness):
    """(3, size, size): class 1 probability a soft disc (a model's smooth output), class 2 nowhere."""
    y, x = np.mgrid[0:size, 0:size].astype(np.float32) + 0.5
    inside = 1.0 / (1.0 + np.exp(np.clip((np.hypot(x - centre[0], y - centre[1]) - radius) / softness, -50, 50)))
    return np.stack([1.0 - inside, inside, np.zeros_like(inside)]).astype(np.float32)


def test_smooth_contours_follow_the_shape_closer_than_the_blocky_fast_ones():
    card = registry.card("unet")
    size, scale = card.input.width, 4  # the model's grid, and a frame four times finer
    centre, radius = (size * 0.43, size * 0.41), size * 0.13
    probabilities = _disc_probabilities(size, centre, radius, softness=0.6)
    frame = size * scale
    yy, xx = np.mgrid[0:frame, 0:frame] + 0.5
    truth = np.hypot(xx / scale - centre[0], yy / scale - centre[1]) < radius  # the disc at the frame's resolution

    class Fixed:  # a backend that always answers these probabilities
        task = "semantic"

        def run(self, batch):
            return probabilities[np.newaxis]

    scores = {}
    for contours in CONTOURS:
        labelmap = Segmenter(card, Fixed(), contours=contours).segment(np.zeros((frame, frame), np.uint8)).labelmap
        scores[contours] = (metrics.dice(labelmap == 1, truth), metrics.hausdorff95(labelmap == 1, truth))
    assert scores["smooth"][0] > scores["fast"][0]
    assert scores["smooth"][1] < scores["fast"][1]
    assert scores["smooth"][1] <= 1.0  # within a frame pixel; nearest-neighbour blocks are off by up to ~scale / 2


def test_fast_contours_are_the_nearest_neighbour_argmax_of_the_model_grid():
    card = registry.card("unet")
    probabilities = _blobs(card.input.height, card.input.width, 5)

    class Fixed:
        task = "semantic"

        def run(self, batch):
            return probabilities[np.newaxis]

    image = np.zeros((420, 580), np.uint8)
    segmenter = Segmenter(card, Fixed(), contours="fast", min_component_area=0)
    _, placement = pp.preprocess(image, card.input)
    expected = pp.restore_mask(probabilities.argmax(axis=0).astype(np.uint8), placement)
    assert np.array_equal(segmenter.segment(image).labelmap, expected)


def test_an_unknown_contours_mode_is_refused_with_the_valid_ones():
    with pytest.raises(ValueError, match=r"contours 'blocky' unknown; expected one of smooth, fast"):
        Segmenter(registry.card("unet"), object(), contours="blocky")


def _blobs_k(height, width, seed, classes):
    """(classes, height, width) softmax probabilities of smooth random logits, background favoured a little."""
    import cv2

    rng = np.random.default_rng(seed)
    logits = cv2.GaussianBlur(rng.normal(0, 3, (height, width, classes)).astype(np.float32), (0, 0), 6) * 4
    logits[..., 0] += 1.0
    e = np.exp(logits - logits.max(-1, keepdims=True))
    return np.ascontiguousarray((e / e.sum(-1, keepdims=True)).transpose(2, 0, 1))


def _interleaved_reference(probabilities, placement):
    """The previous smooth_labelmap (before the per-class maps): the maps interleaved (h, w, K), warped four
    channels at a time, argmax over the last axis; kept here to show the per-class version gives the same labelmap."""
    import cv2

    k = probabilities.shape[0]
    scaled = np.zeros((placement.scaled_h, placement.scaled_w, k), np.float32)
    scaled[..., 0] = 1.0
    scaled[:placement.valid_h, :placement.valid_w] = \
        probabilities[:, :placement.valid_h, :placement.valid_w].transpose(1, 2, 0)
    labelmap = np.zeros((placement.src_h, placement.src_w), np.uint8)
    grown = cv2.dilate((scaled.argmax(-1) != 0).astype(np.uint8), np.ones((3, 3), np.uint8))
    count, _, stats, _ = cv2.connectedComponentsWithStats(grown, connectivity=8)
    sx, sy = placement.scaled_w / placement.src_w, placement.scaled_h / placement.src_h
    for x, y, w, h in (stats[i, :4].tolist() for i in range(1, count)):
        x0 = 0 if x == 0 else max(0, int(np.floor((x - 0.5) / sx - 0.5)))
        x1 = placement.src_w if x + w >= placement.scaled_w else \
            min(placement.src_w, int(np.ceil((x + w + 0.5) / sx - 0.5)) + 1)
        y0 = 0 if y == 0 else max(0, int(np.floor((y - 0.5) / sy - 0.5)))
        y1 = placement.src_h if y + h >= placement.scaled_h else \
            min(placement.src_h, int(np.ceil((y + h + 0.5) / sy - 0.5)) + 1)
        if x1 <= x0 or y1 <= y0:
            continue
        inverse = np.array([[sx, 0.0, (x0 + 0.5) * sx - 0.5], [0.0, sy, (y0 + 0.5) * sy - 0.5]])
        parts = [cv2.warpAffine(np.ascontiguousarray(scaled[..., s:s + 4]), inverse, (x1 - x0, y1 - y0),
                                flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP, borderMode=cv2.BORDER_REPLICATE)
                 for s in range(0, k, 4)]
        box = np.concatenate([p if p.ndim == 3 else p[..., np.newaxis] for p in parts], axis=2)
        labelmap[y0:y1, x0:x1] = np.maximum(labelmap[y0:y1, x0:x1], box.argmax(-1).astype(np.uint8))
    return labelmap


@pytest.mark.parametrize("frame, size, mode", CASES)
@pytest.mark.parametrize("classes", [3, 4, 5])
def test_per_class_resampling_gives_the_labelmap_of_the_interleaved_one(frame, size, mode, classes):
    """The per-class warps read the model's output in place; the labelmap must be the one the interleaved warps
    gave (the shipped models have 3 classes; 4 and 5 take OpenCV's 4-channel and 4 + 1 paths before)."""
    for seed in range(2):
        probabilities = _blobs_k(*size, seed, classes)
        _, placement = pp.place(np.zeros(frame, np.uint8), pp.InputSpec(*size, resize=mode))
        got = smooth_labelmap(probabilities, placement)
        assert got.any()
        assert np.array_equal(got, _interleaved_reference(probabilities, placement))


@pytest.mark.parametrize("classes", [2, 6])
def test_two_class_maps_follow_the_bilinear_restore_too(classes):
    """OpenCV warps a 2-channel float image with coarser weights (up to 0.02 off cv2.resize), so the interleaved
    version missed the restore's argmax on ~1e-4 of the pixels for 2 and 6 classes; one map per class does not."""
    for frame in ((420, 580), (700, 300)):
        probabilities = _blobs_k(128, 128, 0, classes)
        _, placement = pp.place(np.zeros(frame, np.uint8), pp.InputSpec(128, 128))
        expected = pp.restore(probabilities, placement).argmax(axis=0).astype(np.uint8)
        got = smooth_labelmap(probabilities, placement)
        assert 0.01 < (expected > 0).mean()
        assert np.array_equal(got, expected)
