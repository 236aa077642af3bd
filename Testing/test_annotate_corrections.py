"""Correction operations on small labelmaps with results worked out by hand, and saving them as versions."""

from __future__ import annotations

import numpy as np
import pytest

from NerveSegLogic.annotate.corrections import (apply_correction, erase, fill_holes, fill_polygon, fit_ellipse,
                                                keep_largest_component, paint, relabel, smooth_outline)
from NerveSegLogic.store.database import AnnotationStore, ConflictError


def grid(text: str) -> np.ndarray:
    """A labelmap from rows of digits ('.' is 0)."""
    rows = [r.strip() for r in text.strip().splitlines()]
    return np.array([[0 if ch == "." else int(ch) for ch in row] for row in rows], dtype=np.uint8)


def test_paint_fills_the_euclidean_disc_and_overwrites():
    mask = grid("""
        .......
        .......
        ...2...
        .......
        .......
        .......
        .......""")
    expected = grid("""
        .......
        ...1...
        ..111..
        .11111.
        ..111..
        ...1...
        .......""")  # radius 2 at (x=3, y=3): dx^2 + dy^2 <= 4
    out = paint(mask, center=(3, 3), radius=2, label=1)
    assert np.array_equal(out, expected)
    assert mask[2, 3] == 2  # input untouched
    assert np.array_equal(paint(np.zeros((3, 3), np.uint8), (1, 1), 1, 5), grid("""
        .5.
        555
        .5."""))


def test_erase_clears_the_disc_or_only_one_class():
    mask = grid("""
        1112
        1122
        1222""")
    assert np.array_equal(erase(mask, center=(1, 1), radius=1), grid("""
        1.12
        ...2
        1.22"""))
    assert np.array_equal(erase(mask, center=(1, 1), radius=1, label=2), grid("""
        1112
        11.2
        1.22"""))


def test_fill_polygon_fills_inside_and_outline():
    out = fill_polygon(np.zeros((6, 7), np.uint8), [(1, 1), (4, 1), (4, 3), (1, 3)], label=2)
    assert np.array_equal(out, grid("""
        .......
        .2222..
        .2222..
        .2222..
        .......
        ......."""))
    triangle = fill_polygon(np.zeros((5, 5), np.uint8), [(0, 0), (4, 0), (0, 4)], label=1)
    assert np.array_equal(triangle, grid("""
        11111
        1111.
        111..
        11...
        1...."""))
    with pytest.raises(ValueError, match="at least 3"):
        fill_polygon(np.zeros((5, 5), np.uint8), [(0, 0), (4, 0)], label=1)


def test_fill_holes_fills_enclosed_background_only():
    mask = grid("""
        .......
        .11111.
        .1..21.
        .11111.
        .......
        11.....
        .1.....""")
    # The enclosed 0s become 1, the 2 inside stays; the bay at the bottom-left touches the border: not a hole.
    assert np.array_equal(fill_holes(mask), grid("""
        .......
        .11111.
        .11121.
        .11111.
        .......
        11.....
        .1....."""))


def test_keep_largest_component_per_class():
    mask = grid("""
        11..1
        11..1
        .....
        22..2""")
    assert np.array_equal(keep_largest_component(mask), grid("""
        11...
        11...
        .....
        22..."""))
    assert np.array_equal(keep_largest_component(mask, label=2), grid("""
        11..1
        11..1
        .....
        22..."""))


def test_smooth_outline_opens_then_closes():
    mask = grid("""
        ............
        ............
        ..11111111..
        ..11111111..
        ..11111111..
        ..111.1111..
        ..11111111..
        ..11111111..
        ..11111111..
        ..11111111..
        ............
        1...........""")
    # Radius 1 is the 3x3 cross: opening drops the speck and the square's corners, closing fills the 1-px hole.
    assert np.array_equal(smooth_outline(mask, radius=1), grid("""
        ............
        ............
        ...111111...
        ..11111111..
        ..11111111..
        ..11111111..
        ..11111111..
        ..11111111..
        ..11111111..
        ...111111...
        ............
        ............"""))
    other = mask.copy()
    other[5, 5] = 2  # another class in the hole is not eaten
    assert smooth_outline(other, radius=1, label=1)[5, 5] == 2
    with pytest.raises(ValueError):
        smooth_outline(mask, radius=0)


def _radius_map(shape, cx, cy, a, b):
    yy, xx = np.mgrid[:shape[0], :shape[1]]
    return np.sqrt(((xx - cx) / a) ** 2 + ((yy - cy) / b) ** 2)


def test_fit_ellipse_reproduces_an_ellipse_and_fills_a_bitten_one():
    shape = (48, 64)
    r = _radius_map(shape, 30, 22, 14, 8)
    mask = np.zeros(shape, np.uint8)
    mask[r <= 1] = 1
    mask[2:5, 2:5] = 1  # a stray second region: dropped
    mask[22, 30] = 2  # another class inside: kept
    out = fit_ellipse(mask, label=1)
    # The fitted ellipse matches the drawn one up to the rim (within one pixel of it).
    assert np.all(out[(r <= 0.85) & (mask != 2)] == 1)
    assert not np.any(out[r > 1.15] == 1)
    assert out[22, 30] == 2 and not out[2:5, 2:5].any()
    bitten = np.zeros(shape, np.uint8)
    bitten[r <= 1] = 1
    bitten[(r <= 1) & (_radius_map(shape, 44, 22, 4, 4) <= 1)] = 0  # a bite out of the right end
    fitted = fit_ellipse(bitten, label=1)
    bite_inside = (bitten == 0) & (r <= 0.8)
    assert bite_inside.any() and np.all(fitted[bite_inside] == 1)
    with pytest.raises(ValueError, match="not in the mask"):
        fit_ellipse(np.zeros(shape, np.uint8), label=1)


def test_relabel_moves_one_class_to_another_or_deletes_it():
    mask = grid("""
        123
        321""")
    assert np.array_equal(relabel(mask, 3, 1), grid("""
        121
        121"""))
    assert np.array_equal(relabel(mask, 2, 0), grid("""
        1.3
        3.1"""))


def test_apply_correction_saves_a_corrected_draft_on_top_of_the_parent(tmp_path):
    with AnnotationStore(tmp_path / "p.nsdb") as store:
        frame = store.add_frame(np.zeros((7, 7), np.uint8), "s", 0)
        base = store.save_mask(frame.id, np.zeros((7, 7), np.uint8), {1: "nerve"}, "runner", "model", None,
                               model_name="smistad-unet")
        v = apply_correction(store, frame.id, "paint", "alice", base.id, center=(3, 3), radius=1, label=1)
        assert (v.origin, v.status, v.author, v.parent_id) == ("corrected", "draft", "alice", base.id)
        assert int(v.mask.sum()) == 5 and v.comment.startswith("paint")
        with pytest.raises(ValueError, match=r"label values \[3\]"):
            apply_correction(store, frame.id, "paint", "alice", v.id, center=(0, 0), radius=0, label=3)
        w = apply_correction(store, frame.id, "paint", "alice", v.id, classes={3: "artery"}, center=(0, 0),
                             radius=0, label=3)
        assert w.classes == {1: "nerve", 3: "artery"} and w.mask[0, 0] == 3
        with pytest.raises(ConflictError):
            apply_correction(store, frame.id, "erase", "bob", v.id, center=(3, 3), radius=2)
        with pytest.raises(KeyError, match="unknown correction"):
            apply_correction(store, frame.id, "magic", "bob", w.id)
        fresh = store.add_frame(np.ones((7, 7), np.uint8), "s", 1)
        m = apply_correction(store, fresh.id, "polygon", "bob", None, classes={1: "nerve"},
                             points=[(0, 0), (2, 0), (2, 2)], label=1)
        assert m.origin == "manual" and m.parent_id is None
