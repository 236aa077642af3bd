"""Smistad's region detection rule and COCO AP (pycocotools) against hand-computed values."""

import math

import numpy as np
import pytest

from NerveSegLogic.imaging.placement import MIN_COMPONENT_AREA_PX
from NerveSegLogic.train import metrics


def _canvas():
    return np.zeros((100, 100), dtype=bool)


def test_shifted_region_is_a_true_positive_and_a_far_region_a_false_positive():
    truth, pred = _canvas(), _canvas()
    truth[10:30, 10:30] = True  # 400 px
    truth[60:65, 60:65] = True  # 25 px: below the 7-px-radius circle, ignored
    pred[10:30, 20:40] = True  # Dice with the truth: 2*200/800 = 0.5
    pred[70:85, 10:25] = True  # 225 px, overlaps nothing
    pred[90:94, 90:94] = True  # 16 px, ignored
    counts = metrics.match_regions(pred, truth)
    assert (counts.tp, counts.fp, counts.fn) == (1, 1, 0)
    assert counts.precision == pytest.approx(0.5)
    assert counts.recall == pytest.approx(1.0)
    assert counts.f1 == pytest.approx(2 / 3)


def test_overlap_at_or_below_a_quarter_is_a_miss():
    truth, pred = _canvas(), _canvas()
    truth[10:30, 10:30] = True
    pred[10:30, 26:46] = True  # intersection 80: Dice 160/800 = 0.2
    assert metrics.match_regions(pred, truth) == metrics.DetectionCounts(tp=0, fp=1, fn=1)


def test_one_prediction_covering_two_regions_detects_only_one_of_them():
    truth, pred = _canvas(), _canvas()
    truth[10:24, 10:24] = True  # 196 px each
    truth[10:24, 26:40] = True
    pred[10:24, 10:40] = True  # 420 px, Dice 0.64 with each
    assert metrics.match_regions(pred, truth) == metrics.DetectionCounts(tp=1, fp=0, fn=1)


def test_the_minimum_region_is_a_circle_of_radius_seven():
    assert MIN_COMPONENT_AREA_PX == math.ceil(math.pi * 49)
    truth = _canvas()
    truth[0:11, 0:14] = True  # 154 px: kept
    truth[50:61, 50:63] = True  # 143 px: ignored
    _, count = metrics.regions(truth)
    assert count == 1


def _square(rows, cols, shape=(40, 40)):
    mask = np.zeros(shape, dtype=bool)
    mask[rows[0]:rows[1], cols[0]:cols[1]] = True
    return mask


LABELS = {"nerve": 1, "blood_vessel": 2}


def test_coco_ap_is_one_for_a_perfect_prediction():
    gt = [[metrics.InstanceMask(1, _square((0, 10), (0, 10)))]]
    found = [[metrics.InstanceMask(1, _square((0, 10), (0, 10)), score=0.9)]]
    result = metrics.coco_average_precision(gt, found, LABELS)
    for iou_type in ("bbox", "segm"):
        assert result[iou_type] == pytest.approx({"AP50": 1.0, "AP60": 1.0, "AP70": 1.0, "AP": 1.0})


def test_coco_ap_of_a_two_thirds_iou_prediction_passes_0_5_to_0_65_only():
    gt = [[metrics.InstanceMask(1, _square((0, 10), (0, 10)))]]
    found = [[metrics.InstanceMask(1, _square((0, 10), (2, 12)), score=0.8)]]  # IoU 80/120
    for iou_type, scores in metrics.coco_average_precision(gt, found, LABELS).items():
        # matched at IoU thresholds 0.50, 0.55, 0.60, 0.65: 4 of the 10 in 0.50:0.95
        assert scores == pytest.approx({"AP50": 1.0, "AP60": 1.0, "AP70": 0.0, "AP": 0.4}), iou_type


def test_coco_ap_with_half_the_objects_found_is_51_of_101_recall_points():
    gt = [[metrics.InstanceMask(1, _square((0, 10), (0, 10))), metrics.InstanceMask(1, _square((20, 30), (20, 30)))]]
    found = [[metrics.InstanceMask(1, _square((0, 10), (0, 10)), score=0.7)]]
    result = metrics.coco_average_precision(gt, found, LABELS, iou_types=("segm",))
    # precision 1 up to recall 0.5, then nothing: 51 of COCO's 101 recall points
    assert result["segm"]["AP50"] == pytest.approx(51 / 101)


def test_coco_ap_is_zero_without_predictions_and_averages_over_classes():
    gt = [[metrics.InstanceMask(1, _square((0, 10), (0, 10)))], [metrics.InstanceMask(2, _square((5, 15), (5, 15)))]]
    assert metrics.coco_average_precision(gt, [[], []], LABELS)["segm"]["AP"] == 0.0
    found = [[metrics.InstanceMask(1, _square((0, 10), (0, 10)), score=0.9)], []]
    # nerve AP 1, vessel AP 0: the mean over the two categories
    assert metrics.coco_average_precision(gt, found, LABELS)["bbox"]["AP50"] == pytest.approx(0.5)


def test_instances_from_labelmap_gives_one_object_per_component():
    labelmap = np.zeros((40, 40), dtype=np.uint8)
    labelmap[0:10, 0:10] = 1
    labelmap[20:30, 0:10] = 1
    labelmap[20:30, 20:30] = 2
    objects = metrics.instances_from_labelmap(labelmap, [1, 2])
    assert sorted(o.label for o in objects) == [1, 1, 2]
    assert all(o.mask.sum() == 100 for o in objects)
