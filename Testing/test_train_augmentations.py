"""Augmentations move the mask with the image, keep shapes and dtypes, invent no labels, and are seeded."""

import numpy as np
import pytest

from NerveSegLogic.train import augment

GEOMETRIC = ["rotation", "shear", "elastic", "flip", "vertical_flip", "diagonal_flip"]
INTENSITY = ["gamma", "gaussian_shadow", "jpeg"]


def _frame(height=96, width=120):
    """A frame whose grey value tells the label: background 60, label 1 = 140, label 2 = 220 (two blobs)."""
    mask = np.zeros((height, width), dtype=np.uint8)
    rows, cols = np.ogrid[:height, :width]
    s = height / 96.0
    mask[(rows - 35 * s) ** 2 + (cols - 40 * s) ** 2 <= (15 * s) ** 2] = 1
    mask[(rows - 60 * s) ** 2 / (14 * s) ** 2 + (cols - 85 * s) ** 2 / (20 * s) ** 2 <= 1] = 2
    image = np.choose(mask, [60, 140, 220]).astype(np.uint8)
    return image, mask


def _label_from_grey(image):
    # nearest of the three grey levels; pixels blanked to 0 read as background-or-outside (-1)
    levels = np.array([60, 140, 220])
    label = np.abs(image[..., None].astype(int) - levels).argmin(axis=-1)
    return np.where(image < 30, -1, label)


@pytest.mark.parametrize("name", list(augment.AUGMENTATIONS))
def test_every_augmentation_keeps_shape_dtype_and_only_original_labels(name):
    image, mask = _frame()
    for seed in range(5):
        out_image, out_mask = augment.AUGMENTATIONS[name](image, mask, np.random.default_rng(seed))
        assert out_image.shape == image.shape and out_image.dtype == np.uint8
        assert out_mask.shape == mask.shape and out_mask.dtype == np.uint8
        assert set(np.unique(out_mask)) <= {0, 1, 2}


@pytest.mark.parametrize("name", GEOMETRIC)
def test_geometric_augmentations_move_mask_and_image_together(name):
    from NerveSegLogic.train.metrics import dice

    image, mask = _frame(192, 240)
    moved_any = False
    for seed in range(5):
        out_image, out_mask = augment.AUGMENTATIONS[name](image, mask, np.random.default_rng(seed))
        seen = _label_from_grey(out_image)  # where the image says each label now is
        aligned = min(dice(seen == label, out_mask == label) for label in (1, 2))
        # only boundary pixels (linear image vs nearest mask sampling) may disagree
        assert aligned > 0.95, f"{name} seed {seed}: image and mask agree with Dice {aligned:.3f}"
        if not np.array_equal(out_mask, mask):
            moved_any = True
            stale = min(dice(seen == label, mask == label) for label in (1, 2))
            assert aligned > stale, f"{name} seed {seed}: the unmoved mask fits the image as well as the moved one"
    assert moved_any, f"{name} never moved the mask"


@pytest.mark.parametrize("name", INTENSITY)
def test_intensity_augmentations_change_the_image_but_never_the_mask(name):
    image, mask = _frame()
    rng = np.random.default_rng(7)
    out_image, out_mask = augment.AUGMENTATIONS[name](image, mask, rng)
    assert np.array_equal(out_mask, mask)
    assert not np.array_equal(out_image, image)


def test_rotation_stays_within_ten_degrees_and_shear_within_fifteen():
    import math

    image = np.zeros((101, 101), dtype=np.uint8)
    mask = np.zeros_like(image)
    image[50, 50:100] = 255  # a horizontal ray from the centre: its end shows the angle
    mask[50, 50:100] = 1
    for seed in range(20):
        _, rotated = augment.rotation(image, mask, np.random.default_rng(seed))
        rows, cols = np.nonzero(rotated)
        far = np.argmax(cols)
        angle = math.degrees(math.atan2(abs(rows[far] - 50), cols[far] - 50))
        assert angle <= augment.MAX_ROTATION_DEG + 1.5
    vertical = np.zeros_like(mask)
    vertical[:, 50] = 1  # a vertical line leans by the shear angle
    for seed in range(20):
        _, sheared = augment.shear(image, vertical, np.random.default_rng(seed))
        rows, cols = np.nonzero(sheared)
        lean = math.degrees(math.atan(abs(np.polyfit(rows, cols, 1)[0])))
        assert lean <= augment.MAX_SHEAR_DEG + 0.5
    horizontal = np.zeros_like(mask)
    horizontal[50, :] = 1  # Kim et al. shear along y too: a horizontal line leans by the second angle
    tilts = []
    for seed in range(20):
        _, sheared = augment.shear(image, horizontal, np.random.default_rng(seed))
        rows, cols = np.nonzero(sheared)
        tilts.append(math.degrees(math.atan(abs(np.polyfit(cols, rows, 1)[0]))))
    assert max(tilts) <= augment.MAX_SHEAR_DEG + 0.5
    assert sum(t > 3 for t in tilts) >= 10  # not only along x


def test_depth_cut_blanks_image_and_mask_below_the_same_row():
    image, mask = _frame()
    mask[:] = 1
    out_image, out_mask = augment.depth_cut(image, mask, np.random.default_rng(3))
    cut = int(np.argmax(~out_mask.any(axis=1)))
    assert 0.6 * mask.shape[0] - 1 <= cut <= 0.95 * mask.shape[0] + 1
    assert not out_image[cut:].any() and not out_mask[cut:].any()
    assert np.array_equal(out_image[:cut], image[:cut])


def test_augmenter_is_reproducible_from_its_seed_and_rejects_unknown_names():
    image, mask = _frame()
    augmenter = augment.Augmenter(["gamma", "rotation", "gaussian_shadow", "depth_cut", "jpeg", "elastic"])
    first = augmenter(image, mask, np.random.default_rng([4, 2]))
    again = augmenter(image, mask, np.random.default_rng([4, 2]))
    other = augmenter(image, mask, np.random.default_rng([4, 3]))
    assert np.array_equal(first[0], again[0]) and np.array_equal(first[1], again[1])
    assert not np.array_equal(first[0], other[0])
    with pytest.raises(ValueError, match="unknown augmentation.*known: .*elastic"):
        augment.Augmenter(["gamma", "mixup"])


def test_flips_are_the_mirrors_their_names_say():
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (64, 64), dtype=np.uint8)
    mask = (rng.random((64, 64)) > 0.7).astype(np.uint8)
    for name, expected in (("flip", lambda a: a[:, ::-1]), ("vertical_flip", lambda a: a[::-1]),
                           ("diagonal_flip", lambda a: a.T)):
        out_image, out_mask = augment.AUGMENTATIONS[name](image, mask, rng)
        assert np.array_equal(out_image, expected(image)), name
        assert np.array_equal(out_mask, expected(mask)), name
        again = augment.AUGMENTATIONS[name](*augment.AUGMENTATIONS[name](image, mask, rng), rng)
        assert np.array_equal(again[0], image) and np.array_equal(again[1], mask), f"{name} twice is not the frame"


def test_diagonal_flip_of_a_frame_that_is_not_square_keeps_its_shape_and_swaps_the_axes():
    image = np.full((100, 160), 60, dtype=np.uint8)
    mask = np.zeros_like(image)
    mask[10:20, 100:140] = 1  # a box near the top right: after the flip it lies near the bottom left
    image[mask == 1] = 200
    out_image, out_mask = augment.diagonal_flip(image, mask, np.random.default_rng(0))
    assert out_image.shape == image.shape and out_mask.shape == mask.shape
    rows, cols = np.nonzero(out_mask)
    # the transpose puts the box at rows 100-140 of 160 and columns 10-20 of 100, resized back to 100 x 160
    assert abs(rows.min() - 100 * 100 / 160) <= 1 and abs(rows.max() + 1 - 140 * 100 / 160) <= 1
    assert abs(cols.min() - 10 * 160 / 100) <= 2 and abs(cols.max() + 1 - 20 * 160 / 100) <= 2
    assert (out_image[out_mask == 1] > 150).mean() > 0.9


def test_recipe_angles_reach_the_augmentations():
    import math

    image = np.zeros((101, 101), dtype=np.uint8)
    mask = np.zeros_like(image)
    mask[50, 50:100] = 1
    augmenter = augment.Augmenter.from_recipe({"augmentations": ["rotation"], "augmentation_probability": 1.0,
                                                "rotation_degrees": 15})
    angles = []
    for seed in range(40):
        _, rotated = augmenter(image, mask, np.random.default_rng(seed))
        rows, cols = np.nonzero(rotated)
        far = np.argmax(np.hypot(rows - 50, cols - 50))
        angles.append(math.degrees(math.atan2(abs(rows[far] - 50), cols[far] - 50)))
    assert max(angles) <= 15 + 1.5
    assert max(angles) > augment.MAX_ROTATION_DEG + 1.5  # wider than the default's 10 degrees
