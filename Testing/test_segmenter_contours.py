"""Smooth, full-resolution contours: the labelmap is the argmax of the probabilities resampled bilinearly to the
frame (computed only where it can differ from background, with the same answer), or on request the fast
nearest-neighbour argmax of the model's grid."""

import numpy as np
import pytest

from NerveSegLogic.inference import preprocess as pp
from NerveSegLogic.inference.segmenter import CONTOURS, Segmenter, smooth_labelmap
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


def test_smooth_labelmap_of_background_only_is_empty():
    probabilities = np.zeros((3, 32, 32), np.float32)
    probabilities[0] = 1.0
    _, placement = pp.place(np.zeros((100, 120), np.uint8), pp.InputSpec(32, 32))
    assert not smooth_labelmap(probabilities, placement).any()


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
