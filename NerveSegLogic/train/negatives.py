"""Frames without a nerve, made from labelled frames: windows that contain no labelled structure.

While scanning, most frames on the way to the target hold no nerve, yet every usgra-seg frame has one. A window of a
labelled frame that touches no labelled pixel (nor any within ``margin`` pixels of one), with the frame's aspect ratio
and ``min_side``..``max_side`` of its size, is such a frame once the live path resizes it to the model input: same
scanner, same tissue, nothing to mark. Used in training (recipe key ``negatives``) and, cut from held-out frames, to
measure how often a model marks a nerve where there is none.

Limitation: a window is the frame magnified (1 / side times), so its speckle is coarser than in a full frame.
"""

from __future__ import annotations

from typing import List, Sequence

import cv2
import numpy as np

from .data import Frame


def negative_windows(frame: Frame, count: int, rng: np.random.Generator, min_side: float = 0.35,
                     max_side: float = 0.6, margin: int = 8, min_tissue: float = 0.5, tries: int = 200
                     ) -> List[Frame]:
    """Up to ``count`` windows of ``frame`` holding no labelled pixel within ``margin`` pixels and at least
    ``min_tissue`` of their pixels brighter than 10 (not the black outside the ultrasound fan).

    Returns fewer (maybe none) when ``tries`` random windows do not yield enough. Names are
    ``<frame>~negative<k>``; masks are all 0; the spacing and labelled classes are the frame's (a window is not
    resampled here; a window of a nerve-only frame says only that no nerve is there)."""
    if not 0.0 < min_side <= max_side <= 1.0:
        raise ValueError(f"negatives: expected 0 < min_side <= max_side <= 1, got {min_side}, {max_side}")
    height, width = frame.image.shape[:2]
    labelled = (frame.mask > 0).astype(np.uint8)
    if margin > 0 and labelled.any():
        labelled = cv2.dilate(labelled, np.ones((2 * margin + 1, 2 * margin + 1), np.uint8))
    # integral image: labelled pixels inside a window in O(1)
    summed = cv2.integral(labelled)
    found: List[Frame] = []
    for _ in range(tries):
        if len(found) >= count:
            break
        side = rng.uniform(min_side, max_side)
        h, w = max(8, int(round(side * height))), max(8, int(round(side * width)))
        top, left = int(rng.integers(0, height - h + 1)), int(rng.integers(0, width - w + 1))
        inside = summed[top + h, left + w] - summed[top, left + w] - summed[top + h, left] + summed[top, left]
        if inside:
            continue
        window = frame.image[top:top + h, left:left + w]
        if float((window > 10).mean()) < min_tissue:
            continue
        found.append(Frame(name=f"{frame.name}~negative{len(found)}", image=np.ascontiguousarray(window),
                           mask=np.zeros((h, w), dtype=frame.mask.dtype), spacing=frame.spacing,
                           labelled=frame.labelled))  # absent here of what the frame labels, nothing more
    return found


def negative_frames(frames: Sequence[Frame], seed: int = 0, rate: float = 0.2, per_frame: int = 1,
                    **window_options) -> List[Frame]:
    """About ``rate * len(frames)`` negative windows (see :func:`negative_windows`), at most ``per_frame`` from any
    one frame, from frames visited in a seeded random order. Reproducible from ``seed``."""
    if rate < 0:
        raise ValueError(f"negatives: rate must be >= 0, got {rate}")
    wanted = int(round(rate * len(frames)))
    rng = np.random.default_rng([int(seed), 4242])
    result: List[Frame] = []
    for index in rng.permutation(len(frames)):
        if len(result) >= wanted:
            break
        result.extend(negative_windows(frames[int(index)], min(int(per_frame), wanted - len(result)), rng,
                                       **window_options))
    return result


__all__ = ["negative_windows", "negative_frames"]
