"""A steady overlay (issue 25, item 5): presence hysteresis against hand-computed sequences, the moving average and
sticky labels against hand-computed numbers, a restart on a large image change, motion compensation, ``off()`` equal
to the plain per-frame answer bit for bit, and nothing delayed. Results are built directly; no model runs."""

from __future__ import annotations

import dataclasses
import math
from types import SimpleNamespace

import numpy as np
import pytest

from NerveSegLogic.frame import Frame, Instance, SegmentationResult
from NerveSegLogic.imaging import placement as pp
from NerveSegLogic.inference.presence import PresenceModel
from NerveSegLogic.inference.segmenter import Segmenter
from NerveSegLogic.inference.steady import (STATES, Hysteresis, SteadyOptions, SteadyOverlay, argmax_labels,
                                            sticky_labels)
from NerveSegLogic.models import registry

CLASSES = tuple(registry.card("effnet2-unet").classes)  # nerve = 1, blood_vessel = 2
NERVE, VESSEL = 1, 2
THRESHOLDS = {"score": "max_probability",
              "calibration": {"nerve": {"a": 1.0, "b": 0.0}, "blood_vessel": {"a": 1.0, "b": 0.0}},
              "thresholds": {"nerve": {"show": 0.5, "uncertain": 0.2},
                             "blood_vessel": {"show": 0.5, "uncertain": 0.2}}}
#: a 16 x 16 frame seen by an 8 x 8 model
PLACE = pp.Placement(src_h=16, src_w=16, scaled_h=8, scaled_w=8, valid_h=8, valid_w=8)
H, L = "hidden", "uncertain"
S = "shown"
NO_SMOOTHING = dict(newest_weight=1.0, stickiness=0.0)


def card(presence=None):
    return SimpleNamespace(name="test-card", path=None, classes=CLASSES,
                           raw={"presence": presence} if presence else {})


def texture(height=16, width=16, seed=0):
    """A smooth random grey picture that repeats at its edges (np.roll moves it without a seam)."""
    rng = np.random.default_rng(seed)
    spectrum = np.fft.fft2(rng.normal(size=(height, width)))
    fy, fx = np.meshgrid(np.fft.fftfreq(height), np.fft.fftfreq(width), indexing="ij")
    smooth = np.real(np.fft.ifft2(spectrum * np.exp(-(fx ** 2 + fy ** 2) / (2 * 0.08 ** 2))))
    smooth = (smooth - smooth.min()) / (smooth.max() - smooth.min())
    return (40 + 180 * smooth).astype(np.uint8)


def maps(nerve, vessel=None, shape=(8, 8)):
    """(3, h, w) probabilities: nerve and vessel maps (scalars or arrays), background the rest."""
    n = np.broadcast_to(np.asarray(nerve, np.float32), shape)
    v = np.broadcast_to(np.asarray(0.0 if vessel is None else vessel, np.float32), shape)
    return np.ascontiguousarray(np.stack([1.0 - n - v, n, v]).astype(np.float32))


def blob(peak, centre=(4, 4), radius=2.0, shape=(8, 8)):
    """A nerve map: ``peak`` inside a disc, 0 outside."""
    y, x = np.mgrid[0:shape[0], 0:shape[1]]
    return np.where(np.hypot(y - centre[0], x - centre[1]) <= radius, peak, 0.0).astype(np.float32)


POST = SimpleNamespace(contours="smooth", min_component_area=1, classes=CLASSES)


def result(probabilities, image=None, frame_id=0, placement=PLACE, region=None):
    """What the segmenter returns for one frame (its labelmap made by its own postprocessing)."""
    labelmap = Segmenter._semantic(POST, probabilities, placement)[0]
    if image is None:
        image = texture(placement.src_h, placement.src_w)
    if region is not None:
        labelmap = region.place(labelmap, *image.shape)
    frame = Frame(image=image, frame_id=frame_id)
    frame.stamp("received")
    extra = {"region": region} if region is not None else {}
    return SegmentationResult(frame=frame, labelmap=labelmap, model_name="test", classes=CLASSES,
                              probabilities=probabilities, placement=placement, **extra)


def steady(options=None, presence=None):
    return SteadyOverlay(card(presence), options, min_component_area=1)


def drawn(out, label=NERVE):
    return bool((out.labelmap == label).any())


# --------------------------------------------------------------------------------------------- hysteresis
def test_hysteresis_appear_and_disappear_counts_by_hand():
    # appear after 2 frames at "shown", disappear after 3 below "uncertain", outlined while it waits to disappear
    levels = [0, 2, 0, 2, 2, 2, 1, 0, 0, 0, 2]
    expected = [H, H, H, H, S, S, S, L, L, H, H]
    h = Hysteresis(appear_frames=2, disappear_frames=3)
    assert [h.update(level) for level in levels] == expected


def test_hysteresis_rises_and_falls_through_the_uncertain_band_by_hand():
    levels = [0, 1, 1, 2, 2, 1, 1, 1, 0, 1, 0, 0, 0]
    # 2 frames >= uncertain: uncertain; 2 at shown: shown; a dip into the band is debounced (3 frames to fall to
    # uncertain); below uncertain it needs 3 frames in a row to go (the 1 at index 9 restarts the count)
    expected = [H, H, L, L, S, S, S, L, L, L, L, L, H]
    h = Hysteresis(appear_frames=2, disappear_frames=3)
    assert [h.update(level) for level in levels] == expected


def test_hysteresis_with_single_frames_is_per_frame_gating():
    rng = np.random.default_rng(1)
    levels = rng.integers(0, 3, 200).tolist()
    h = Hysteresis(1, 1)
    assert [h.update(level) for level in levels] == [STATES[level] for level in levels]


def test_hysteresis_shows_the_first_frame_as_it_is_and_again_after_reset():
    h = Hysteresis(appear_frames=3, disappear_frames=3)
    assert h.update(2) == S and h.update(0) == L
    h.reset()
    assert h.update(1) == L
    h.reset()
    assert h.update(0) == H
    with pytest.raises(ValueError, match="per-frame level"):
        h.update(3)


def test_presence_hysteresis_through_the_filter_with_a_thresholds_card():
    # the nerve's presence is its peak probability (identity calibration); show 0.5, uncertain 0.2
    presences = [0.1, 0.6, 0.1, 0.6, 0.7, 0.9, 0.3, 0.1, 0.05, 0.1, 0.8]
    expected = [H, H, H, H, S, S, S, L, L, H, H]
    f = steady(SteadyOptions(appear_frames=2, disappear_frames=3, **NO_SMOOTHING), THRESHOLDS)
    outs = []
    for i, p in enumerate(presences):
        r = result(maps(blob(p)), frame_id=i)
        out = f.apply(r)
        outs.append(out)
        assert out.presence["nerve"] == pytest.approx(p, abs=1e-6)
        assert out.states["nerve"] == expected[i]
        assert out.states["blood_vessel"] == H
        if out.states["nerve"] == H:
            assert not drawn(out)
        assert not np.shares_memory(out.labelmap, r.labelmap) or np.array_equal(out.labelmap, r.labelmap)
    # shown frames draw the model's own nerve
    assert [drawn(o) for o in outs[:6]] == [False, False, False, False, True, True]
    # frame 6 (0.3, in the band): the argmax has no nerve, but the nerve was drawn in frame 5 and is not hidden:
    # held, drawn where its probability is at least half its peak (the disc); frame 7 (0.1): nothing left to hold
    assert drawn(outs[6]) and np.array_equal(outs[6].labelmap == NERVE, outs[5].labelmap == NERVE)
    assert not drawn(outs[7]) and not drawn(outs[8])


def test_hidden_class_is_removed_without_touching_the_segmenters_labelmap():
    f = steady(SteadyOptions(appear_frames=3, disappear_frames=1, **NO_SMOOTHING), THRESHOLDS)
    f.apply(result(maps(blob(0.05))))  # the stream starts with the nerve hidden
    r = result(maps(blob(0.9)), frame_id=1)
    before = r.labelmap.copy()
    out = f.apply(r)
    assert out.states["nerve"] == H and not drawn(out)  # 1 of the 3 frames it needs to appear
    assert np.array_equal(r.labelmap, before) and (before == NERVE).any()


def test_presence_is_calibrated_from_the_frames_own_probabilities():
    block = dict(THRESHOLDS, calibration={"nerve": {"a": 2.0, "b": -1.0}, "blood_vessel": {"a": 1.0, "b": 0.0}})
    f = steady(SteadyOptions(newest_weight=0.5, stickiness=0.0), block)
    image = texture()
    f.apply(result(maps(blob(0.9)), image=image))
    out = f.apply(result(maps(blob(0.6)), image=image, frame_id=1))
    logit = math.log(0.6 / 0.4)
    assert out.presence["nerve"] == pytest.approx(1 / (1 + math.exp(-(2.0 * logit - 1.0))), abs=1e-6)
    assert float(out.probabilities[NERVE].max()) == pytest.approx(0.75, abs=1e-6)  # the average is not the presence


def test_card_without_thresholds_keeps_todays_answer_for_a_single_frame():
    # the argmax draws the nerve with a highest probability of 0.4 (background 0.35, vessel 0.25): today it is
    # drawn; hysteresis on the raw score with the default thresholds would outline it as uncertain
    probabilities = maps(np.where(blob(1.0) > 0, 0.4, 0.0), np.where(blob(1.0) > 0, 0.25, 0.0))
    r = result(probabilities)
    assert drawn(r)
    for options in (SteadyOptions(), SteadyOptions.off(), SteadyOptions(appear_frames=4, disappear_frames=4)):
        out = steady(options).apply(r)
        assert out.labelmap is r.labelmap and out.probabilities is r.probabilities
        assert out.states == {"nerve": S, "blood_vessel": H}
        assert out.presence["nerve"] == pytest.approx(0.4, abs=1e-6)


def test_card_without_thresholds_appears_after_n_frames_and_is_held_then_goes():
    f = steady(SteadyOptions(appear_frames=2, disappear_frames=3, **NO_SMOOTHING))
    sequence = [0.0, 0.9, 0.9, 0.9, 0.3, 0.3, 0.3, 0.3, 0.9]
    states, draws = [], []
    for i, p in enumerate(sequence):
        out = f.apply(result(maps(blob(p)), frame_id=i))
        states.append(out.states["nerve"])
        draws.append(drawn(out))
    assert states == [H, H, S, S, L, L, H, H, H]
    # held for disappear_frames - 1 = 2 frames where the nerve's probability is at least half its peak (0.3 >= 0.25)
    assert draws == [False, False, True, True, True, True, False, False, False]


# --------------------------------------------------------------------------------------------- averaging
def test_moving_average_by_hand():
    image = texture()
    f = steady(SteadyOptions(newest_weight=0.5, stickiness=0.0, appear_frames=1, disappear_frames=1))
    peaks = [0.8, 0.2, 0.6]
    expected = [0.8, 0.5, 0.55]  # 0.5 * 0.2 + 0.5 * 0.8;  0.5 * 0.6 + 0.5 * 0.5
    for i, (peak, want) in enumerate(zip(peaks, expected)):
        r = result(maps(blob(peak), 0.05), image=image, frame_id=i)
        out = f.apply(r)
        average = maps(blob(want), 0.05)
        np.testing.assert_allclose(out.probabilities, average, atol=1e-6)
        assert np.array_equal(out.labelmap, Segmenter._semantic(POST, average, PLACE)[0])
    assert f.resets == 0 and f.last_shift == pytest.approx((0.0, 0.0), abs=0.05)


def test_moving_average_weights_a_third_by_hand():
    image = texture()
    f = steady(SteadyOptions(newest_weight=1 / 3, stickiness=0.0))
    for i, peak in enumerate([0.9, 0.0, 0.0]):
        out = f.apply(result(maps(blob(peak)), image=image, frame_id=i))
    # 0.9 -> 2/3 * 0.9 = 0.6 -> 2/3 * 0.6 = 0.4
    assert float(out.probabilities[NERVE, 4, 4]) == pytest.approx(0.4, abs=1e-6)
    assert float(out.probabilities[0, 4, 4]) == pytest.approx(0.6, abs=1e-6)


def test_sticky_labels_by_hand():
    image = texture()
    f = steady(SteadyOptions(newest_weight=1.0, stickiness=0.2, appear_frames=1, disappear_frames=1))
    first = f.apply(result(maps(0.6, 0.1), image=image))  # nerve everywhere
    assert (first.labelmap == NERVE).all()
    # background now beats the nerve by 0.1 <= 0.2: every pixel keeps the nerve, pulled towards it
    second = f.apply(result(maps(0.4, 0.1), image=image, frame_id=1))
    np.testing.assert_allclose(second.probabilities[:, 4, 4], [0.5 / 1.2, 0.6 / 1.2, 0.1 / 1.2], atol=1e-6)
    assert (second.labelmap == NERVE).all()
    # by 0.5 > 0.2: background wins even pulled towards the nerve
    third = f.apply(result(maps(0.2, 0.1), image=image, frame_id=2))
    np.testing.assert_allclose(third.probabilities[:, 4, 4], [0.7 / 1.2, 0.4 / 1.2, 0.1 / 1.2], atol=1e-6)
    assert not drawn(third)


def test_sticky_pull_by_hand_at_an_outline_and_without_labels():
    s = 0.3
    labels = np.zeros((8, 8), np.uint8)
    labels[:, :4] = NERVE  # nerve on the left, background on the right
    probabilities = maps(0.45, 0.05)
    pulled, pulled_labels = sticky_labels(probabilities, labels, s)
    # inside the nerve (column 1): all 9 neighbours nerve
    np.testing.assert_allclose(pulled[:, 4, 1], [0.5 / 1.3, 0.75 / 1.3, 0.05 / 1.3], atol=1e-6)
    # just right of the outline (column 4): 3 of 9 neighbours nerve, 6 background: the pull is shared
    np.testing.assert_allclose(pulled[:, 4, 4], [(0.5 + 2 * s / 3) / 1.3, (0.45 + s / 3) / 1.3, 0.05 / 1.3],
                               atol=1e-6)
    np.testing.assert_allclose(pulled.sum(axis=0), 1.0, atol=1e-6)
    assert np.array_equal(pulled_labels, argmax_labels(pulled))
    assert (pulled_labels[:, :4] == NERVE).all() and (pulled_labels[:, 4:] == 0).all()  # the outline stays
    # no last labels (255): no pull at all
    none, _ = sticky_labels(probabilities, np.full_like(labels, 255), s)
    np.testing.assert_array_equal(none, probabilities)


def test_argmax_labels_is_numpys():
    rng = np.random.default_rng(2)
    probabilities = rng.random((3, 16, 16)).astype(np.float32)
    probabilities[:, 0, 0] = 0.5  # a tie: the first class, as numpy
    assert np.array_equal(argmax_labels(probabilities), probabilities.argmax(axis=0))


def test_a_steady_scene_keeps_the_frames_own_outline():
    image = texture()
    f = steady()  # the defaults
    r = result(maps(blob(0.9, radius=2.5), 0.05), image=image)
    for i in range(6):
        out = f.apply(dataclasses.replace(r, frame=Frame(image=image, frame_id=i)))
        assert np.array_equal(out.labelmap, r.labelmap)
        assert np.array_equal(out.probabilities.argmax(axis=0), r.probabilities.argmax(axis=0))


# --------------------------------------------------------------------------------------------- restarts
def _stream(f, image, peaks, start=0):
    return [f.apply(result(maps(blob(p)), image=image, frame_id=start + i)) for i, p in enumerate(peaks)]


def test_the_first_frame_after_a_cut_is_the_unsmoothed_answer():
    f = steady(SteadyOptions(appear_frames=3, disappear_frames=3), THRESHOLDS)
    _stream(f, texture(seed=1), [0.05, 0.05, 0.05])
    r = result(maps(blob(0.9, centre=(2, 5))), image=texture(seed=2), frame_id=3)  # another view
    out = f.apply(r)
    assert f.resets == 1 and f.last_response < 0.5
    assert out.labelmap is r.labelmap and out.probabilities is r.probabilities
    assert out.states["nerve"] == S  # the hysteresis starts again too: no 3 frames to wait


@pytest.mark.parametrize("change", ["frame size", "probe lifted", "placement"])
def test_a_new_frame_size_or_a_lifted_probe_starts_again(change):
    f = steady()
    image = texture()
    _stream(f, image, [0.9, 0.9])
    placement = PLACE
    if change == "frame size":
        image = texture(20, 16)
        placement = pp.Placement(src_h=20, src_w=16, scaled_h=10, scaled_w=8, valid_h=8, valid_w=8)
    elif change == "probe lifted":
        image = (image // 6).astype(np.uint8)
    else:
        placement = dataclasses.replace(PLACE, valid_h=7)
    r = result(maps(blob(0.3)), image=image, frame_id=2, placement=placement)
    out = f.apply(r)
    assert f.resets == 1
    assert out.labelmap is r.labelmap and out.probabilities is r.probabilities


def test_reset_forgets_the_stream():
    f = steady()
    image = texture()
    _stream(f, image, [0.9, 0.9])
    f.reset()
    r = result(maps(blob(0.1)), image=image, frame_id=2)
    out = f.apply(r)
    assert out.labelmap is r.labelmap and f.resets == 0


# --------------------------------------------------------------------------------------------- motion
def _moving_pair(dx_model, dy_model, motion, stickiness=0.0):
    """Two frames of a 128 x 128 picture seen by a 64 x 64 model, the second moved by (dx, dy) model pixels (twice
    that in frame pixels), with the nerve disc moving alike."""
    placement = pp.Placement(src_h=128, src_w=128, scaled_h=64, scaled_w=64, valid_h=64, valid_w=64)
    picture = texture(128, 128, seed=3)
    moved = np.roll(picture, (2 * dy_model, 2 * dx_model), axis=(0, 1))
    first = maps(blob(0.9, centre=(30, 30), radius=6, shape=(64, 64)), shape=(64, 64))
    second = maps(blob(0.9, centre=(30 + dy_model, 30 + dx_model), radius=6, shape=(64, 64)), shape=(64, 64))
    f = steady(SteadyOptions(newest_weight=0.5, stickiness=stickiness, motion=motion))
    f.apply(result(first, image=picture, placement=placement))
    r = result(second, image=moved, frame_id=1, placement=placement)
    return f, r, f.apply(r), second


@pytest.mark.parametrize("stickiness", [0.0, 0.3])
def test_motion_compensation_aligns_the_average_with_the_moved_frame(stickiness):
    f, r, out, second = _moving_pair(5, -3, motion=True, stickiness=stickiness)
    assert f.last_shift == pytest.approx((5.0, -3.0), abs=0.3) and f.resets == 0
    # the previous average (and labels) moved by (5, -3) land exactly on the new disc
    if stickiness == 0.0:
        np.testing.assert_allclose(out.probabilities, second, atol=1e-6)
    assert np.array_equal(out.probabilities.argmax(axis=0), second.argmax(axis=0))
    if stickiness == 0.0:
        assert np.array_equal(out.labelmap, r.labelmap)
    else:  # the pull shared at the outline may move it, by at most a frame pixel
        import cv2

        got, want = (out.labelmap == NERVE).astype(np.uint8), (r.labelmap == NERVE).astype(np.uint8)
        kernel = np.ones((3, 3), np.uint8)
        assert not (got & (1 - cv2.dilate(want, kernel))).any() and not (cv2.erode(want, kernel) & (1 - got)).any()


def test_without_motion_compensation_the_average_lags_behind():
    f, r, out, second = _moving_pair(5, -3, motion=False)
    assert not np.allclose(out.probabilities, second, atol=0.05)
    trailing = (out.labelmap == NERVE) & (r.labelmap != NERVE)  # drawn where the nerve was, not where it is
    assert trailing.sum() > 0


# --------------------------------------------------------------------------------------------- off, no delay
def _random_results(count, seed):
    rng = np.random.default_rng(seed)
    out = []
    for i in range(count):
        nerve = blob(float(rng.uniform(0.05, 0.95)), centre=tuple(rng.integers(2, 6, 2)), radius=2.2)
        vessel = np.where(nerve > 0, 0.0, blob(float(rng.uniform(0.0, 0.9)), centre=(1, 6), radius=1.5))
        out.append(result(maps(nerve, vessel), image=texture(seed=int(rng.integers(0, 3))), frame_id=i))
    return out


def test_off_is_the_plain_per_frame_answer_bit_for_bit():
    results = _random_results(40, seed=4)
    f = steady(SteadyOptions.off())
    for r in results:
        out = f.apply(r)
        assert out.labelmap is r.labelmap and out.probabilities is r.probabilities
        assert out.states == {c.key: (S if (r.labelmap == c.label).any() else H) for c in CLASSES}
    # with thresholds: per-frame gating, the hidden classes removed from the segmenter's labelmap
    gate = PresenceModel.from_block(THRESHOLDS)
    f = steady(SteadyOptions.off(), THRESHOLDS)
    for r in results:
        out = f.apply(r)
        states = gate.states(out.presence)
        assert out.states == states
        expected = r.labelmap.copy()
        for c in CLASSES:
            if states[c.key] == H:
                expected[expected == c.label] = 0
        assert np.array_equal(out.labelmap, expected) and out.probabilities is r.probabilities
    assert SteadyOptions.off().is_off and not SteadyOptions().is_off


def test_nothing_is_delayed_each_result_is_its_own_frames():
    results = _random_results(30, seed=5)
    f = steady()
    for r in results:
        out = f.apply(r)
        assert out.frame is r.frame and out.frame_id == r.frame_id
        assert out.frame.timestamps is r.frame.timestamps and out.labelmap.shape == r.frame.image.shape
        assert out.model_name == r.model_name and out.placement is r.placement


def test_options_are_checked():
    assert SteadyOptions() == SteadyOptions(newest_weight=1 / 3, stickiness=0.3, appear_frames=2,
                                            disappear_frames=5, motion=True)
    off = SteadyOptions.off()
    assert (off.newest_weight, off.stickiness, off.appear_frames, off.disappear_frames, off.motion) == \
        (1.0, 0.0, 1, 1, False)
    with pytest.raises(ValueError, match="newest_weight"):
        SteadyOptions(newest_weight=0.1)
    with pytest.raises(ValueError, match="appear_frames"):
        SteadyOptions(appear_frames=0)
    with pytest.raises(ValueError, match="stickiness"):
        SteadyOptions(stickiness=-0.1)


# --------------------------------------------------------------------------------------------- other results
def test_a_region_result_is_rebuilt_at_the_region():
    if "region" not in {f.name for f in dataclasses.fields(SegmentationResult)}:
        pytest.skip("SegmentationResult has no region field in this tree")
    from NerveSegLogic.imaging.region import Region

    region = Region(8, 6, 16, 16)
    image = np.zeros((30, 40), np.uint8)
    image[6:22, 8:24] = texture()
    f = steady(SteadyOptions(newest_weight=0.5, stickiness=0.0))
    f.apply(result(maps(blob(0.9), 0.05), image=image, region=region))
    out = f.apply(result(maps(blob(0.3), 0.05), image=image, frame_id=1, region=region))
    expected = region.place(Segmenter._semantic(POST, maps(blob(0.6), 0.05), PLACE)[0], 30, 40)
    assert np.array_equal(out.labelmap, expected) and drawn(out)


def test_instance_results_are_gated_but_not_averaged():
    frame = Frame(image=texture(), frame_id=0)
    labelmap = np.zeros((16, 16), np.uint8)
    labelmap[4:9, 4:9] = NERVE
    mask = labelmap == NERVE
    r = SegmentationResult(frame=frame, labelmap=labelmap, model_name="test", classes=CLASSES,
                           instances=[Instance(label=NERVE, score=0.15, box=(4, 4, 9, 9), mask=mask)])
    out = steady(SteadyOptions(), THRESHOLDS).apply(r)
    assert out.presence == {"nerve": pytest.approx(0.15), "blood_vessel": pytest.approx(0.0, abs=1e-5)}
    assert out.states["nerve"] == H and not drawn(out) and out.probabilities is None
    assert (r.labelmap == NERVE).any()
