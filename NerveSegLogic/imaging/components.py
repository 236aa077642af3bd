"""Where each class's regions are in a labelmap: one ``Region`` (label, centroid, area) per connected region.

The live view labels every region with its class name at its centroid. The regions are found where the labelmap
is made (the inference worker, or the worker process), not on Slicer's main thread. OpenCV does it when installed;
a bare Slicer has no OpenCV but ships SciPy, which gives the same answer.
"""

from __future__ import annotations

from typing import Iterable, List, NamedTuple

import numpy as np

#: At most this many regions per class are named (the largest): a noisy mask must not cover the view in text.
MAX_REGIONS_PER_CLASS = 3


class Region(NamedTuple):
    label: int
    x: float  # centroid column (pixels, i)
    y: float  # centroid row (pixels, j)
    area: int  # pixels


def find_regions(labelmap: np.ndarray, labels: Iterable[int], min_area: int = 1,
                 max_per_class: int = MAX_REGIONS_PER_CLASS) -> List[Region]:
    """Connected regions (8-connected) of each label in ``labels`` with at least ``min_area`` pixels, largest
    first within a class, at most ``max_per_class`` per class."""
    labelmap = np.asarray(labelmap)
    if labelmap.ndim != 2:
        raise ValueError(f"labelmap must be 2D (H, W), got shape {labelmap.shape}")
    out: List[Region] = []
    for label in labels:
        binary = labelmap == int(label)
        rows = np.flatnonzero(binary.any(axis=1))
        if rows.size == 0:
            continue
        # Regions never leave the box around the label's pixels: label only that box (benchmarks/speed/serve_overhead.md).
        r0, r1 = int(rows[0]), int(rows[-1]) + 1
        cols = np.flatnonzero(binary[r0:r1].any(axis=0))
        c0, c1 = int(cols[0]), int(cols[-1]) + 1
        found = [Region(r.label, r.x + c0, r.y + r0, r.area)
                 for r in _components(np.ascontiguousarray(binary[r0:r1, c0:c1]), int(label)) if r.area >= min_area]
        found.sort(key=lambda r: -r.area)
        out.extend(found[:max_per_class])
    return out


def _components(binary: np.ndarray, label: int) -> List[Region]:
    try:
        import cv2
    except ImportError:
        cv2 = None
    if cv2 is not None:
        count, _, stats, centroids = cv2.connectedComponentsWithStats(binary.astype(np.uint8), connectivity=8)
        return [Region(label, float(centroids[i][0]), float(centroids[i][1]), int(stats[i, cv2.CC_STAT_AREA]))
                for i in range(1, count)]
    from scipy import ndimage

    components, count = ndimage.label(binary, structure=np.ones((3, 3), dtype=bool))
    if count == 0:
        return []
    index = np.arange(1, count + 1)
    areas = ndimage.sum_labels(binary, components, index)
    centres = ndimage.center_of_mass(binary, components, index)
    return [Region(label, float(c[1]), float(c[0]), int(a)) for c, a in zip(centres, areas)]
