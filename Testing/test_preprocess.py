"""Pre/post-processing: frames go into the model input and results come back to the frame's own pixels."""

import numpy as np
import pytest

from NerveSegLogic.imaging import placement as pp


def test_fit_width_pads_short_frames_at_the_bottom():
    spec = pp.InputSpec(height=256, width=256)
    image = np.full((100, 200), 255, np.uint8)  # scaled to 128 x 256: 128 rows of padding below
    tensor, placement = pp.preprocess(image, spec)
    assert tensor.shape == (1, 256, 256) and tensor.dtype == np.float32
    assert placement.scaled_h == 128 and placement.valid_h == 128
    assert np.allclose(tensor[0, :128], 1.0) and np.allclose(tensor[0, 128:], 0.0)


def test_fit_width_crops_tall_frames_at_the_bottom_and_restore_marks_the_crop_background():
    spec = pp.InputSpec(height=64, width=64)
    image = np.zeros((256, 128), np.uint8)
    image[:64] = 200  # only the top half survives the crop (scaled to 128 x 64)
    tensor, placement = pp.preprocess(image, spec)
    assert (placement.scaled_h, placement.valid_h) == (128, 64)
    probs = np.zeros((3, 64, 64), np.float32)
    probs[2] = 1.0  # the model says class 2 everywhere it looked
    back = pp.restore(probs, placement)
    assert back.shape == (3, 256, 128)
    assert np.allclose(back[2, :120], 1.0)  # seen rows keep the model's answer
    assert np.allclose(back[0, 136:], 1.0) and np.allclose(back[2, 136:], 0.0)  # cropped rows: background


@pytest.mark.parametrize("mode", ["resize", "letterbox", "fit_width_pad_crop_bottom"])
def test_mask_placed_and_restored_returns_to_the_frame(mode):
    spec = pp.InputSpec(height=128, width=128, resize=mode)
    mask = np.zeros((120, 100), np.uint8)
    mask[30:90, 20:70] = 1
    placed = pp.place_mask(mask, spec)
    _, placement = pp.place(mask, spec)
    back = pp.restore_mask(placed, placement)
    assert back.shape == mask.shape
    agreement = (back == mask).mean()
    assert agreement > 0.98, agreement


def test_rgb_frames_become_grey_by_luminance():
    rgb = np.zeros((2, 2, 3), np.uint8)
    rgb[..., 0] = 100
    rgb[..., 1] = 200
    grey = pp.to_grey(rgb)
    assert grey.shape == (2, 2) and grey.dtype == np.uint8
    assert grey[0, 0] == round(0.299 * 100 + 0.587 * 200)


def test_normalize_maps_each_dtype_to_unit_range():
    assert pp.normalize(np.array([[0, 255]], np.uint8)).tolist() == [[0.0, 1.0]]
    assert pp.normalize(np.array([[0, 65535]], np.uint16)).tolist() == [[0.0, 1.0]]
    assert np.allclose(pp.normalize(np.array([[0.0, 255.0]], np.float32)), [[0.0, 1.0]])
    with pytest.raises(ValueError, match="dtype"):
        pp.normalize(np.array([[1, 2]], np.int64))


def test_small_components_below_a_7_pixel_radius_circle_are_removed():
    labelmap = np.zeros((100, 100), np.uint8)
    labelmap[5:15, 5:15] = 1  # 100 px < 154 px: removed
    labelmap[40:60, 40:60] = 1  # 400 px: kept
    labelmap[80:93, 80:93] = 2  # 169 px: kept
    out = pp.remove_small_components(labelmap)
    assert pp.MIN_COMPONENT_AREA_PX == 154
    assert out[10, 10] == 0 and out[50, 50] == 1 and out[85, 85] == 2
    assert (out != 0).sum() == 400 + 169


def test_input_spec_refuses_unknown_modes_naming_the_field():
    with pytest.raises(ValueError, match="input.resize"):
        pp.InputSpec(height=8, width=8, resize="stretchy")
    with pytest.raises(KeyError, match="size"):
        pp.InputSpec.from_card({"channels": 1})


def test_small_region_removal_equals_a_whole_frame_reference_on_random_labelmaps():
    """Regions are searched only inside each label's box; the answer must be the whole frame's (scipy reference)."""
    from scipy import ndimage

    rng = np.random.default_rng(7)
    for _ in range(20):
        labelmap = np.zeros((120, 160), np.uint8)
        for _ in range(12):
            y, x = rng.integers(0, 115), rng.integers(0, 155)
            h, w = rng.integers(1, 12, size=2)
            labelmap[y:y + h, x:x + w] = rng.integers(1, 3)
        expected = labelmap.copy()
        for value in (1, 2):
            components, count = ndimage.label(labelmap == value, structure=np.ones((3, 3), bool))
            areas = ndimage.sum_labels(np.ones_like(components), components, np.arange(1, count + 1))
            for index, area in enumerate(areas, start=1):
                if area < 20:
                    expected[components == index] = 0
        assert np.array_equal(pp.remove_small_components(labelmap, 20, labels=[1, 2]), expected)


def test_uint8_normalization_by_table_gives_the_divided_floats_exactly():
    """Grey uint8 frames are normalised through a 256-entry table (one pass): every value, and strided views of a
    frame, must give exactly the float32 that converting and dividing by 255 gives."""
    frame = np.random.default_rng(3).integers(0, 256, (420, 580), dtype=np.uint8)
    every_value = np.arange(256, dtype=np.uint8).reshape(16, 16)
    for image in (every_value, frame, frame[::3, 5:400], frame.T, np.dstack([frame, frame])[:, :, 1]):
        got = pp.normalize(image)
        assert got.dtype == np.float32 and got.shape == image.shape
        assert np.array_equal(got, image.astype(np.float32) / 255.0)
    assert pp.normalize(np.zeros((0, 4), np.uint8)).shape == (0, 4)


def _whole_frame_reference(labelmap, min_area):
    from scipy import ndimage

    expected = labelmap.copy()
    for value in (int(v) for v in np.unique(labelmap) if v):
        components, count = ndimage.label(labelmap == value, structure=np.ones((3, 3), bool))
        areas = ndimage.sum_labels(np.ones_like(components), components, np.arange(1, count + 1))
        expected[np.isin(components, 1 + np.flatnonzero(areas < min_area))] = 0
    return expected


@pytest.mark.parametrize("specks", [3, 40])
def test_few_and_many_small_regions_are_cleared_as_the_whole_frame_reference_clears_them(specks):
    """Up to 16 small regions per label are cleared inside their own boxes, more through one lookup; both must
    clear exactly the reference's pixels, next to large regions that stay (specks touching them join them)."""
    rng = np.random.default_rng(specks)
    labelmap = np.zeros((210, 290), np.uint8)
    labelmap[40:120, 30:140] = 1
    labelmap[130:190, 150:260] = 2
    for _ in range(specks):
        y, x = rng.integers(0, 205), rng.integers(0, 285)
        labelmap[y:y + rng.integers(1, 5), x:x + rng.integers(1, 5)] = rng.integers(1, 3)
    expected = _whole_frame_reference(labelmap, 30)
    assert (expected != labelmap).sum() > 0 and (expected == 1).sum() > 5000
    kept = labelmap.copy()
    assert np.array_equal(pp.remove_small_components(labelmap, 30), expected)
    assert np.array_equal(labelmap, kept)  # a copy unless asked otherwise
    assert pp.remove_small_components(labelmap, 30, in_place=True) is labelmap
    assert np.array_equal(labelmap, expected)


def test_more_regions_than_16_bit_numbers_hold_are_still_found():
    """Isolated pixels one apart: 300 x 300 = 90,000 regions in one label's box, past uint16 numbering."""
    labelmap = np.zeros((600, 600), np.uint8)
    labelmap[::2, ::2] = 1
    labelmap[::2, ::2][0, 0] = 0
    assert not pp.remove_small_components(labelmap, 2).any()
    assert np.array_equal(pp.remove_small_components(labelmap, 1), labelmap)


@pytest.mark.parametrize("frame_shape", [(420, 580), (128, 128)])  # scaled, and already the input's size
def test_preprocessed_inputs_do_not_share_the_reused_normalisation_buffer(frame_shape):
    """preprocess() normalises grey uint8 frames into a buffer kept per thread; each input it returns must stay
    as it was when the next frame is preprocessed (callers batch them)."""
    rng = np.random.default_rng(11)
    spec = pp.InputSpec(128, 128)
    first_frame, second_frame = (rng.integers(0, 256, frame_shape, dtype=np.uint8) for _ in range(2))
    first, _ = pp.preprocess(first_frame, spec)
    kept = first.copy()
    second, _ = pp.preprocess(second_frame, spec)
    assert np.array_equal(first, kept) and not np.array_equal(first, second)
    reference, _ = pp.place(first_frame.astype(np.float32) / 255.0, spec)
    assert np.array_equal(first[0], reference)


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16, np.int32, np.int64])
def test_small_regions_are_cleared_alike_in_every_integer_labelmap_type(dtype):
    """uint8 labelmaps (the segmenter's) are compared in OpenCV, other integer types in numpy: the same pixels go."""
    rng = np.random.default_rng(7)
    labelmap = np.zeros((90, 120), np.uint8)
    labelmap[10:50, 10:60] = 1
    labelmap[55:85, 70:115] = 2
    for _ in range(25):
        y, x = rng.integers(0, 86), rng.integers(0, 116)
        labelmap[y:y + rng.integers(1, 4), x:x + rng.integers(1, 4)] = rng.integers(1, 3)
    expected = _whole_frame_reference(labelmap, 12)
    assert (expected != labelmap).any()
    got = pp.remove_small_components(labelmap.astype(dtype), 12)
    assert got.dtype == dtype and np.array_equal(got, expected)
