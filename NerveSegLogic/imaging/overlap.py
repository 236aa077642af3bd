"""Dice and IoU of masks: the one definition that training, evaluation, annotation (queue, agreement) and the
shipped-model checks use.

For two binary masks A and B of the same shape, with tp = |A n B|, fp = |A \\ B|, fn = |B \\ A|:

- Dice = 2 |A n B| / (|A| + |B|) = 2 tp / (2 tp + fp + fn)
- IoU = |A n B| / |A u B| = tp / (tp + fp + fn)

**Empty masks.** When neither mask has a pixel, both are 0 / 0: undefined, and these functions return NaN
(``math.nan``), which means over frames skip (``numpy.nanmean``). One mask empty and the other not is 0.0. A caller
that reports something else for "both empty" (the review queue: 1.0, two models that agree on nothing being there;
annotator agreement: None, the class left out of the frame) maps the NaN itself, where it calls, and says so.

numpy only; nothing else is imported.
"""

from __future__ import annotations

import math
from typing import Tuple

import numpy as np


def overlap_counts(a: np.ndarray, b: np.ndarray) -> Tuple[int, int, int]:
    """(tp, fp, fn) pixel counts of two binary masks of the same shape (anything non-zero is in the mask): pixels
    in both, in ``a`` only, in ``b`` only. ValueError when the shapes differ."""
    a, b = np.asarray(a).astype(bool, copy=False), np.asarray(b).astype(bool, copy=False)
    if a.shape != b.shape:
        raise ValueError(f"the two masks differ in shape: {a.shape} vs {b.shape}")
    tp = int(np.count_nonzero(a & b))
    return tp, int(np.count_nonzero(a)) - tp, int(np.count_nonzero(b)) - tp


def dice_from_counts(tp: int, fp: int, fn: int) -> float:
    """2 tp / (2 tp + fp + fn); NaN when both masks are empty (all three counts 0)."""
    return _ratio(2 * tp, 2 * tp + fp + fn)


def iou_from_counts(tp: int, fp: int, fn: int) -> float:
    """tp / (tp + fp + fn); NaN when both masks are empty."""
    return _ratio(tp, tp + fp + fn)


def dice(a: np.ndarray, b: np.ndarray) -> float:
    """Dice of two binary masks of the same shape (symmetric); NaN when both are empty (see the module's rule)."""
    return dice_from_counts(*overlap_counts(a, b))


def iou(a: np.ndarray, b: np.ndarray) -> float:
    """IoU (Jaccard) of two binary masks of the same shape (symmetric); NaN when both are empty."""
    return iou_from_counts(*overlap_counts(a, b))


def _ratio(numerator: int, denominator: int) -> float:
    return float(numerator) / float(denominator) if denominator > 0 else math.nan
