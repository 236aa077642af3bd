"""The one Dice and IoU (NerveSegLogic.imaging.overlap) and how its callers map the empty-masks case."""

import math

import numpy as np
import pytest

from NerveSegLogic.annotate.agreement import class_dice
from NerveSegLogic.annotate.queue import dice as queue_dice
from NerveSegLogic.imaging import overlap
from NerveSegLogic.train import metrics


def test_dice_and_iou_of_two_masks():
    a = np.zeros((4, 4), bool)
    b = np.zeros((4, 4), bool)
    a[0, :2] = True  # 2 pixels
    b[0, 1:4] = True  # 3 pixels, 1 shared
    assert overlap.overlap_counts(a, b) == (1, 1, 2)
    assert overlap.dice(a, b) == 2 * 1 / (2 + 3)
    assert overlap.iou(a, b) == 1 / 4
    assert overlap.dice(a, b) == overlap.dice(b, a)


def test_empty_masks_follow_one_rule():
    empty = np.zeros((3, 3), np.uint8)
    some = empty.copy()
    some[1, 1] = 7  # anything non-zero is in the mask
    assert math.isnan(overlap.dice(empty, empty)) and math.isnan(overlap.iou(empty, empty))
    assert overlap.dice(some, empty) == 0.0 and overlap.iou(empty, some) == 0.0
    assert overlap.dice(some, some) == 1.0


def test_shapes_must_agree():
    with pytest.raises(ValueError, match="differ in shape"):
        overlap.dice(np.zeros((2, 3)), np.zeros((3, 2)))


def test_callers_map_both_empty_as_they_document():
    empty = np.zeros((3, 3), np.uint8)
    assert math.isnan(metrics.dice(empty, empty))  # training and evaluation: undefined, skipped by means
    assert queue_dice(empty, empty) == 1.0  # the review queue: two models that find nothing agree
    assert class_dice(empty, {1: "nerve"}, empty, {1: "nerve"}) == {"nerve": None}  # agreement: class left out
