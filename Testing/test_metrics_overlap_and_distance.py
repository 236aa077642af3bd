"""Pixel metrics (Dice, IoU, precision, recall), HD95 and pixel AUC: hand-computed values and reference libraries."""

import math

import numpy as np
import pytest

from NerveSegLogic.train import metrics


def _square(shape, rows, cols):
    mask = np.zeros(shape, dtype=bool)
    mask[rows[0]:rows[1], cols[0]:cols[1]] = True
    return mask


def test_overlap_metrics_match_hand_counts_on_two_shifted_squares():
    pred = _square((4, 4), (0, 2), (0, 2))
    truth = _square((4, 4), (0, 2), (1, 3))
    # |P| = |T| = 4, |P n T| = 2, |P u T| = 6
    assert metrics.dice(pred, truth) == pytest.approx(0.5)
    assert metrics.iou(pred, truth) == pytest.approx(2 / 6)
    assert metrics.precision(pred, truth) == pytest.approx(0.5)
    assert metrics.recall(pred, truth) == pytest.approx(0.5)


def test_overlap_metrics_are_undefined_where_the_denominator_is_empty():
    empty = np.zeros((5, 5), dtype=bool)
    some = _square((5, 5), (1, 3), (1, 3))
    assert math.isnan(metrics.dice(empty, empty))
    assert math.isnan(metrics.iou(empty, empty))
    assert math.isnan(metrics.precision(empty, some))  # nothing predicted
    assert metrics.recall(empty, some) == 0.0
    assert math.isnan(metrics.recall(some, empty))  # nothing to find
    assert metrics.dice(some, empty) == 0.0


def test_hd95_of_single_pixels_is_their_distance_in_pixels_and_in_mm():
    pred = np.zeros((8, 8), dtype=bool)
    truth = np.zeros((8, 8), dtype=bool)
    pred[0, 0] = True
    truth[3, 4] = True
    assert metrics.hausdorff95(pred, truth) == pytest.approx(5.0)
    # spacing is (row, column): 3 rows of 0.5 mm and 4 columns of 2 mm
    assert metrics.hausdorff95(pred, truth, spacing=(0.5, 2.0)) == pytest.approx(math.hypot(1.5, 8.0))


def test_hd95_interpolates_the_95th_percentile_of_boundary_distances():
    pred = np.zeros((3, 12), dtype=bool)
    truth = np.zeros((3, 12), dtype=bool)
    pred[0, 0] = pred[0, 10] = True
    truth[0, 0] = True
    # pred -> truth distances [0, 10]: 95th percentile = 0 + 0.95 * 10; truth -> pred: [0]
    assert metrics.hausdorff95(pred, truth) == pytest.approx(9.5)
    assert metrics.hausdorff95(pred, truth, percentile=100) == pytest.approx(10.0)


def test_hd95_uses_boundaries_so_shifted_squares_are_two_pixels_apart():
    pred = _square((8, 9), (2, 5), (2, 5))
    truth = _square((8, 9), (2, 5), (4, 7))
    # boundary distances pred -> truth: three at 0, two at 1, three at 2 (symmetric)
    assert metrics.hausdorff95(pred, truth) == pytest.approx(2.0)


def test_hd95_of_empty_masks_is_nan_and_of_one_empty_mask_the_frame_diagonal():
    empty = np.zeros((30, 40), dtype=bool)
    some = _square((30, 40), (5, 10), (5, 10))
    assert math.isnan(metrics.hausdorff95(empty, empty))
    assert metrics.hausdorff95(empty, some) == pytest.approx(50.0)
    assert metrics.hausdorff95(some, empty, spacing=(0.1, 0.1)) == pytest.approx(5.0)


def _blob(shape, seed, threshold=0.6):
    import cv2

    rng = np.random.default_rng(seed)
    noise = cv2.GaussianBlur(rng.random(shape).astype(np.float32), (0, 0), 4)
    noise = (noise - noise.min()) / (noise.max() - noise.min())
    return noise > threshold


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("spacing", [None, (0.3, 0.7)])
def test_hd95_matches_monai_on_random_blobs(seed, spacing):
    torch = pytest.importorskip("torch")
    from monai.metrics import compute_hausdorff_distance

    pred, truth = _blob((64, 80), seed), _blob((64, 80), seed + 100)
    assert pred.any() and truth.any()
    as_batch = lambda m: torch.from_numpy(np.stack([~m, m])[None].astype(np.float32))  # noqa: E731
    reference = compute_hausdorff_distance(as_batch(pred), as_batch(truth), percentile=95,
                                           spacing=list(spacing) if spacing else None).item()
    ours = metrics.hausdorff95(pred, truth, spacing=spacing or (1.0, 1.0))
    assert ours == pytest.approx(reference, rel=1e-5, abs=1e-5)


def _disc(shape, centre, radius):
    rows, cols = np.ogrid[:shape[0], :shape[1]]
    return (rows - centre[0]) ** 2 + (cols - centre[1]) ** 2 <= radius ** 2


@pytest.mark.parametrize("spacing", [(1.0, 1.0), (0.25, 0.5)])
def test_hausdorff_maximum_matches_simpleitk_for_separate_discs(spacing):
    sitk = pytest.importorskip("SimpleITK")
    pred = _disc((60, 70), (20, 20), 8)
    truth = _disc((60, 70), (35, 50), 11)

    def image(mask):
        img = sitk.GetImageFromArray(mask.astype(np.uint8))
        img.SetSpacing((spacing[1], spacing[0]))  # SimpleITK is (x, y) = (column, row)
        return img

    hausdorff = sitk.HausdorffDistanceImageFilter()
    hausdorff.Execute(image(pred), image(truth))
    ours = metrics.hausdorff95(pred, truth, spacing=spacing, percentile=100)
    assert ours == pytest.approx(hausdorff.GetHausdorffDistance(), rel=1e-6)


def test_pixel_auc_matches_hand_example_and_counts_ties_as_half():
    assert metrics.pixel_auc(np.array([0.1, 0.4, 0.35, 0.8]), np.array([0, 0, 1, 1])) == pytest.approx(0.75)
    assert metrics.pixel_auc(np.array([0.5, 0.5]), np.array([0, 1])) == pytest.approx(0.5)
    assert metrics.pixel_auc(np.array([0.2, 0.9]), np.array([0, 1])) == pytest.approx(1.0)
    assert math.isnan(metrics.pixel_auc(np.array([0.2, 0.9]), np.array([1, 1])))


def test_pixel_auc_equals_brute_force_pair_counting():
    rng = np.random.default_rng(3)
    scores = np.round(rng.random((12, 11)), 1)  # rounded so there are many ties
    truth = rng.random((12, 11)) > 0.6
    pos, neg = scores[truth], scores[~truth]
    wins = (pos[:, None] > neg[None, :]).sum() + 0.5 * (pos[:, None] == neg[None, :]).sum()
    assert metrics.pixel_auc(scores, truth) == pytest.approx(wins / (pos.size * neg.size))


def test_frame_metrics_and_summary_report_every_class_and_skip_undefined_values():
    truth = np.zeros((40, 40), dtype=np.uint8)
    truth[5:25, 5:25] = 1
    pred = np.zeros_like(truth)
    pred[5:25, 10:30] = 1
    labels = {"nerve": 1, "blood_vessel": 2}
    frame = metrics.frame_metrics(pred, truth, labels, spacing=(0.1, 0.1))
    assert frame["per_class"]["nerve"]["dice"] == pytest.approx(2 * 300 / 800)
    assert frame["per_class"]["nerve"]["hd95_mm"] == pytest.approx(frame["per_class"]["nerve"]["hd95_px"] * 0.1)
    assert math.isnan(frame["per_class"]["blood_vessel"]["dice"])  # absent on both sides
    perfect = metrics.frame_metrics(truth, truth, labels)
    summary = metrics.summarize([frame, perfect])
    assert summary["per_class"]["nerve"]["dice"] == pytest.approx((0.75 + 1.0) / 2)
    assert summary["spread"]["nerve"]["dice"]["n"] == 2
    assert summary["spread"]["blood_vessel"]["dice"]["n"] == 0
    assert summary["detection"]["nerve"]["pooled"]["tp"] == 2
