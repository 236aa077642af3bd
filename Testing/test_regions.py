"""Where the class names stand: each class's regions (centroid, area) found with OpenCV, or with SciPy where a
bare Slicer has no OpenCV, give the same answer."""

from __future__ import annotations

import numpy as np

from NerveSegLogic.imaging import components as regions


def labelmap():
    out = np.zeros((120, 160), np.uint8)
    out[10:30, 100:140] = 1  # 800 px
    out[60:64, 10:14] = 1  # 16 px: below the naming size
    out[80:110, 20:50] = 2  # 900 px
    out[5:8, 5:8] = 2  # 9 px
    return out


def test_regions_are_centroids_and_areas_largest_first_above_the_minimum():
    found = regions.find_regions(labelmap(), [1, 2], min_area=50)
    assert [(r.label, r.area) for r in found] == [(1, 800), (2, 900)]
    assert (found[0].x, found[0].y) == (119.5, 19.5) and (found[1].x, found[1].y) == (34.5, 94.5)
    assert regions.find_regions(np.zeros((5, 5), np.uint8), [1, 2]) == []


def test_without_opencv_scipy_finds_the_same_regions(monkeypatch):
    import builtins

    real_import = builtins.__import__

    def no_cv2(name, *args, **kwargs):
        if name == "cv2":
            raise ImportError("a bare Slicer has no OpenCV")
        return real_import(name, *args, **kwargs)

    with_cv2 = regions.find_regions(labelmap(), [1, 2], min_area=1)
    monkeypatch.setattr(builtins, "__import__", no_cv2)
    without = regions.find_regions(labelmap(), [1, 2], min_area=1)
    assert [(r.label, r.area, round(r.x, 6), round(r.y, 6)) for r in without] == \
        [(r.label, r.area, round(r.x, 6), round(r.y, 6)) for r in with_cv2]
    assert len(without) == 4
