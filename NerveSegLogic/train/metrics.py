"""Segmentation and detection metrics for one frame at a time, and their means over a data set.

Everything is numpy/scipy/OpenCV (and pycocotools for COCO AP); nothing imports torch.

Conventions (the same in metrics.json, the comparison table and the tests):

- Masks are compared in the frame's own pixel grid. A class is ``labelmap == label``.
- Dice, IoU, precision, recall: from pixel counts (Dice and IoU: :mod:`NerveSegLogic.imaging.overlap`, the one
  definition). When a ratio has a zero denominator it is undefined and reported as NaN, which the means skip
  (nnU-Net's convention): Dice and IoU when truth and prediction are both empty, precision when nothing is
  predicted, recall when the truth is empty.
- HD95 (:func:`hausdorff95`): boundary pixels are a mask minus its binary erosion (4-connected structuring element,
  as MONAI's ``get_mask_edges``); the 95th percentile (linear interpolation) of the distances from each boundary
  pixel of one mask to the nearest boundary pixel of the other, taken both ways, the larger of the two. In pixels,
  or in mm with the pixel spacing. Both masks empty: NaN (nothing to measure). Exactly one empty: the frame's
  diagonal (the largest distance inside the frame), so a missed or invented structure is never scored better than
  the worst real boundary error.
- Pixel AUC (:func:`pixel_auc`): area under the ROC curve of the class's per-pixel probability against the truth,
  from ranks (Mann-Whitney U, ties share their mean rank). NaN when the truth is all one value.
- Detection (:func:`match_regions`), Smistad's rule: regions are 8-connected components of each class; regions
  smaller than :data:`~NerveSegLogic.imaging.placement.MIN_COMPONENT_AREA_PX` (a circle of radius 7 px) are
  ignored in both the truth and the prediction. The overlap of a predicted region P and a true region T is their
  Dice, 2 |P n T| / (|P| + |T|); pairs with overlap above 0.25 are matched one to one, largest overlap first.
  Matched true regions are true positives, unmatched predicted regions false positives, unmatched true regions
  false negatives. Per frame: precision = TP / (TP + FP), recall = TP / (TP + FN), F1 = 2 TP / (2 TP + FP + FN)
  (NaN when the frame has no regions of the class on either side).
- Means over frames skip NaN; :func:`summarize` also gives the standard deviation and how many frames counted.
"""

from __future__ import annotations

import contextlib
import io
import math
from dataclasses import dataclass
from typing import Dict, Iterable, List, Mapping, Optional, Sequence, Tuple

import cv2
import numpy as np

# dice and iou are also this module's names for them (metrics.dice, metrics.iou: training, tests)
from ..imaging.overlap import dice, dice_from_counts, iou, iou_from_counts, overlap_counts  # noqa: F401
from ..imaging.placement import MIN_COMPONENT_AREA_PX

#: Smistad et al.: a predicted region is a true positive when it overlaps a true region by more than this.
DETECTION_OVERLAP = 0.25

#: IoU thresholds reported for instance models (COCO AP), besides the 0.5:0.95 mean.
COCO_IOU_THRESHOLDS = (0.5, 0.6, 0.7)

SEGMENTATION_METRICS = ("dice", "iou", "precision", "recall", "hd95_px", "hd95_mm", "auc")
DETECTION_METRICS = ("precision", "recall", "f1")


# ---------------------------------------------------------------------------------------------------- pixel overlap
def _ratio(numerator: float, denominator: float) -> float:
    return float(numerator) / float(denominator) if denominator > 0 else math.nan


def _binary(mask: np.ndarray) -> np.ndarray:
    return np.asarray(mask).astype(bool, copy=False)


def _check_same_shape(pred: np.ndarray, truth: np.ndarray) -> None:
    if pred.shape != truth.shape:
        raise ValueError(f"prediction and truth differ in shape: {pred.shape} vs {truth.shape}")


def precision(pred: np.ndarray, truth: np.ndarray) -> float:
    """|P n T| / |P|; NaN when nothing is predicted."""
    tp, fp, _ = overlap_counts(pred, truth)
    return _ratio(tp, tp + fp)


def recall(pred: np.ndarray, truth: np.ndarray) -> float:
    """|P n T| / |T|; NaN when the truth is empty."""
    tp, _, fn = overlap_counts(pred, truth)
    return _ratio(tp, tp + fn)


# ---------------------------------------------------------------------------------------------------- boundaries
def boundary(mask: np.ndarray) -> np.ndarray:
    """Boundary pixels of a binary mask: the mask minus its erosion by a 4-connected cross (pixels on the frame's
    border count as boundary)."""
    from scipy import ndimage

    mask = _binary(mask)
    return mask & ~ndimage.binary_erosion(mask, border_value=0)


def surface_distances(from_mask: np.ndarray, to_mask: np.ndarray,
                      spacing: Sequence[float] = (1.0, 1.0)) -> np.ndarray:
    """Distance from every boundary pixel of ``from_mask`` to the nearest boundary pixel of ``to_mask``.

    spacing: (row, column) pixel size; distances come out in the same unit (pixels for (1, 1), mm for mm).
    Both masks must be non-empty (ValueError otherwise).
    """
    from scipy import ndimage

    source, target = boundary(from_mask), boundary(to_mask)
    if not source.any() or not target.any():
        raise ValueError("surface distances need two non-empty masks")
    # Distance transform of the complement of the target boundary: distance of every pixel to that boundary.
    distance_map = ndimage.distance_transform_edt(~target, sampling=tuple(float(s) for s in spacing))
    return distance_map[source]


def hausdorff95(pred: np.ndarray, truth: np.ndarray, spacing: Sequence[float] = (1.0, 1.0),
                percentile: float = 95.0) -> float:
    """Symmetric percentile Hausdorff distance between the boundaries of two binary masks (see module docstring).

    spacing: (row, column) pixel size; the result is in that unit. Both empty: NaN. One empty: the frame diagonal.
    ``percentile=100`` gives the classic (maximum) Hausdorff distance between the boundaries.
    """
    pred, truth = _binary(pred), _binary(truth)
    _check_same_shape(pred, truth)
    has_pred, has_truth = bool(pred.any()), bool(truth.any())
    if not has_pred and not has_truth:
        return math.nan
    if has_pred != has_truth:
        height, width = pred.shape
        return float(math.hypot(height * float(spacing[0]), width * float(spacing[1])))
    forward = np.percentile(surface_distances(pred, truth, spacing), percentile)
    backward = np.percentile(surface_distances(truth, pred, spacing), percentile)
    return float(max(forward, backward))


# ---------------------------------------------------------------------------------------------------- ranking
def pixel_auc(scores: np.ndarray, truth: np.ndarray) -> float:
    """Area under the ROC curve of per-pixel ``scores`` (any real values, higher = more likely the class) against a
    binary ``truth``; the probability that a random class pixel scores above a random other pixel, ties counting
    one half. NaN when the truth is all True or all False."""
    from scipy.stats import rankdata

    scores = np.asarray(scores, dtype=np.float64).ravel()
    truth = _binary(truth).ravel()
    if scores.shape != truth.shape:
        raise ValueError(f"scores and truth differ in size: {scores.size} vs {truth.size}")
    positives = int(np.count_nonzero(truth))
    negatives = truth.size - positives
    if positives == 0 or negatives == 0:
        return math.nan
    ranks = rankdata(scores)  # average ranks for ties
    u_statistic = ranks[truth].sum() - positives * (positives + 1) / 2.0
    return float(u_statistic / (positives * negatives))


# ---------------------------------------------------------------------------------------------------- detection
@dataclass(frozen=True)
class DetectionCounts:
    """Region counts of one class in one frame (or summed over frames)."""

    tp: int
    fp: int
    fn: int

    @property
    def precision(self) -> float:
        return _ratio(self.tp, self.tp + self.fp)

    @property
    def recall(self) -> float:
        return _ratio(self.tp, self.tp + self.fn)

    @property
    def f1(self) -> float:
        return _ratio(2 * self.tp, 2 * self.tp + self.fp + self.fn)

    def __add__(self, other: "DetectionCounts") -> "DetectionCounts":
        return DetectionCounts(self.tp + other.tp, self.fp + other.fp, self.fn + other.fn)

    def as_dict(self) -> Dict[str, float]:
        return {"tp": self.tp, "fp": self.fp, "fn": self.fn,
                "precision": self.precision, "recall": self.recall, "f1": self.f1}


def regions(mask: np.ndarray, min_area: int = MIN_COMPONENT_AREA_PX) -> Tuple[np.ndarray, int]:
    """8-connected regions of a binary mask with at least ``min_area`` pixels: (label image 0..n, n).

    Smaller regions are 0 in the label image, as if absent.
    """
    count, components, stats, _ = cv2.connectedComponentsWithStats(_binary(mask).astype(np.uint8), connectivity=8)
    keep = np.flatnonzero(stats[1:, cv2.CC_STAT_AREA] >= min_area) + 1
    relabel = np.zeros(count, dtype=np.int32)
    relabel[keep] = np.arange(1, keep.size + 1, dtype=np.int32)
    return relabel[components], int(keep.size)


def match_regions(pred: np.ndarray, truth: np.ndarray, min_area: int = MIN_COMPONENT_AREA_PX,
                  threshold: float = DETECTION_OVERLAP) -> DetectionCounts:
    """Smistad's detection rule for one class in one frame (see the module docstring for the exact definition)."""
    pred, truth = _binary(pred), _binary(truth)
    _check_same_shape(pred, truth)
    pred_regions, n_pred = regions(pred, min_area)
    true_regions, n_true = regions(truth, min_area)
    if n_pred == 0 or n_true == 0:
        return DetectionCounts(0, n_pred, n_true)
    # Joint histogram of (predicted region, true region) labels = pairwise intersections.
    joint = np.bincount(pred_regions.ravel() * (n_true + 1) + true_regions.ravel(),
                        minlength=(n_pred + 1) * (n_true + 1)).reshape(n_pred + 1, n_true + 1)
    intersection = joint[1:, 1:].astype(np.float64)
    pred_area = joint[1:, :].sum(axis=1).astype(np.float64)
    true_area = joint[:, 1:].sum(axis=0).astype(np.float64)
    overlap = 2.0 * intersection / (pred_area[:, None] + true_area[None, :])
    matched_pred, matched_true = set(), set()
    for flat in np.argsort(-overlap, axis=None):
        p, t = np.unravel_index(flat, overlap.shape)
        if overlap[p, t] <= threshold:
            break
        if p in matched_pred or t in matched_true:
            continue
        matched_pred.add(int(p))
        matched_true.add(int(t))
    tp = len(matched_true)
    return DetectionCounts(tp=tp, fp=n_pred - tp, fn=n_true - tp)


# ---------------------------------------------------------------------------------------------------- one frame
def frame_metrics(pred_labelmap: np.ndarray, true_labelmap: np.ndarray, labels: Mapping[str, int],
                  probabilities: Optional[Mapping[str, np.ndarray]] = None,
                  spacing: Optional[Sequence[float]] = None) -> Dict[str, Dict[str, Dict[str, float]]]:
    """All per-class metrics of one frame.

    labels: {class key: label value}. probabilities: {class key: (H, W) per-pixel probability} for pixel AUC
    (omitted: AUC is NaN). spacing: (row, column) mm per pixel for ``hd95_mm`` (None: NaN).
    Returns ``{"per_class": {key: {dice, iou, precision, recall, hd95_px, hd95_mm, auc}},
    "detection": {key: {tp, fp, fn, precision, recall, f1}}}``.
    """
    _check_same_shape(pred_labelmap, true_labelmap)
    per_class: Dict[str, Dict[str, float]] = {}
    detection: Dict[str, Dict[str, float]] = {}
    for key, label in labels.items():
        pred, truth = pred_labelmap == label, true_labelmap == label
        tp, fp, fn = overlap_counts(pred, truth)
        hd_px = hausdorff95(pred, truth)
        hd_mm = hausdorff95(pred, truth, spacing) if spacing is not None else math.nan
        auc = math.nan
        if probabilities is not None and key in probabilities:
            auc = pixel_auc(probabilities[key], truth)
        per_class[key] = {"dice": dice_from_counts(tp, fp, fn), "iou": iou_from_counts(tp, fp, fn),
                          "precision": _ratio(tp, tp + fp), "recall": _ratio(tp, tp + fn),
                          "hd95_px": hd_px, "hd95_mm": hd_mm, "auc": auc}
        detection[key] = match_regions(pred, truth).as_dict()
    return {"per_class": per_class, "detection": detection}


# ---------------------------------------------------------------------------------------------------- summaries
def nan_stats(values: Iterable[float]) -> Dict[str, float]:
    """{mean, std, n} of the finite values (population std); mean and std are NaN when none is finite."""
    array = np.asarray([v for v in values if v is not None], dtype=np.float64)
    finite = array[np.isfinite(array)]
    if finite.size == 0:
        return {"mean": math.nan, "std": math.nan, "n": 0}
    return {"mean": float(finite.mean()), "std": float(finite.std()), "n": int(finite.size)}


def summarize(frames: Sequence[Mapping]) -> Dict[str, Dict]:
    """Means over frames of :func:`frame_metrics` results.

    Returns ``{"per_class": {key: {metric: mean, ...}}, "detection": {key: {precision, recall, f1: means over
    frames; "pooled": counts and precision/recall/F1 of all regions of all frames together}}, "spread": {key:
    {metric: {"std", "n"}}}}``.
    """
    per_class: Dict[str, Dict[str, float]] = {}
    detection: Dict[str, Dict] = {}
    spread: Dict[str, Dict[str, Dict[str, float]]] = {}
    keys: List[str] = []
    for frame in frames:
        for key in frame["per_class"]:
            if key not in keys:
                keys.append(key)
    for key in keys:
        present = [f for f in frames if key in f["per_class"]]
        per_class[key], spread[key] = {}, {}
        for metric in SEGMENTATION_METRICS:
            stats = nan_stats(f["per_class"][key].get(metric, math.nan) for f in present)
            per_class[key][metric] = stats["mean"]
            spread[key][metric] = {"std": stats["std"], "n": stats["n"]}
        counts = [f["detection"][key] for f in present]
        pooled = DetectionCounts(sum(int(c["tp"]) for c in counts), sum(int(c["fp"]) for c in counts),
                                 sum(int(c["fn"]) for c in counts))
        detection[key] = {}
        for metric in DETECTION_METRICS:
            stats = nan_stats(c[metric] for c in counts)
            detection[key][metric] = stats["mean"]
            spread[key]["detection_" + metric] = {"std": stats["std"], "n": stats["n"]}
        detection[key]["pooled"] = pooled.as_dict()
    return {"per_class": per_class, "detection": detection, "spread": spread}


# ---------------------------------------------------------------------------------------------------- COCO AP
@dataclass(frozen=True)
class InstanceMask:
    """One object: class label value, binary mask (H, W) in the frame, score (predictions; 1 for truth), and
    optionally its box (x0, y0, x1, y1) in pixels; without one the mask's bounding box is used."""

    label: int
    mask: np.ndarray
    score: float = 1.0
    box: Optional[Tuple[float, float, float, float]] = None


def instances_from_labelmap(labelmap: np.ndarray, labels: Iterable[int],
                            min_area: int = 1) -> List[InstanceMask]:
    """One instance per 8-connected component of each label (at least ``min_area`` pixels)."""
    out: List[InstanceMask] = []
    for label in labels:
        components, count = regions(labelmap == label, min_area)
        for index in range(1, count + 1):
            out.append(InstanceMask(label=int(label), mask=components == index))
    return out


def _rle(mask: np.ndarray) -> dict:
    from pycocotools import mask as mask_utils

    return mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))


def _coco_box(instance: InstanceMask) -> List[float]:
    if instance.box is not None:
        x0, y0, x1, y1 = (float(v) for v in instance.box)
        return [x0, y0, max(0.0, x1 - x0), max(0.0, y1 - y0)]
    from pycocotools import mask as mask_utils

    return [float(v) for v in mask_utils.toBbox(_rle(instance.mask))]


def coco_average_precision(truth: Sequence[Sequence[InstanceMask]], predictions: Sequence[Sequence[InstanceMask]],
                           labels: Mapping[str, int],
                           iou_types: Sequence[str] = ("bbox", "segm")) -> Dict[str, Dict[str, float]]:
    """COCO average precision with pycocotools, over all frames and classes (101-point interpolated, up to 100
    detections per frame, all object sizes).

    truth / predictions: per frame, the objects in it. labels: {class key: label value} (the COCO categories).
    Returns ``{"bbox": {"AP50", "AP60", "AP70", "AP"}, "segm": {...}}`` where AP is the mean over IoU 0.50:0.95.
    A category with truth but no predictions counts as AP 0; with no truth at all it is left out (COCO's rule);
    NaN when no frame has any truth.
    """
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    if len(truth) != len(predictions):
        raise ValueError(f"{len(truth)} frames of truth but {len(predictions)} of predictions")
    categories = [{"id": int(label), "name": key} for key, label in labels.items()]
    images, annotations, results = [], [], []
    for image_id, (objects, found) in enumerate(zip(truth, predictions), start=1):
        shape = objects[0].mask.shape if objects else (found[0].mask.shape if found else (1, 1))
        images.append({"id": image_id, "height": int(shape[0]), "width": int(shape[1])})
        for obj in objects:
            rle = _rle(obj.mask)
            annotations.append({"id": len(annotations) + 1, "image_id": image_id, "category_id": int(obj.label),
                                "segmentation": rle, "area": float(obj.mask.sum()), "bbox": _coco_box(obj),
                                "iscrowd": 0})
        for obj in found:
            results.append({"image_id": image_id, "category_id": int(obj.label), "score": float(obj.score),
                            "segmentation": _rle(obj.mask), "bbox": _coco_box(obj)})
    out: Dict[str, Dict[str, float]] = {}
    empty = {"AP50": math.nan, "AP60": math.nan, "AP70": math.nan, "AP": math.nan}
    if not annotations:
        return {iou_type: dict(empty) for iou_type in iou_types}
    quiet = io.StringIO()
    with contextlib.redirect_stdout(quiet):  # pycocotools prints progress lines
        ground = COCO()
        ground.dataset = {"images": images, "annotations": annotations, "categories": categories}
        ground.createIndex()
        detected = ground.loadRes(results) if results else None
        for iou_type in iou_types:
            if detected is None:
                out[iou_type] = {"AP50": 0.0, "AP60": 0.0, "AP70": 0.0, "AP": 0.0}
                continue
            evaluation = COCOeval(ground, detected, iouType=iou_type)
            evaluation.evaluate()
            evaluation.accumulate()
            # precision[T, R, K, A, M]: IoU thresholds, recall points, categories, area ranges, max detections.
            table = evaluation.eval["precision"][:, :, :, 0, -1]
            thresholds = evaluation.params.iouThrs

            def mean_at(rows: np.ndarray) -> float:
                values = table[rows]
                values = values[values > -1]
                return float(values.mean()) if values.size else math.nan

            scores = {}
            for threshold in COCO_IOU_THRESHOLDS:
                row = int(np.argmin(np.abs(thresholds - threshold)))
                scores[f"AP{int(round(threshold * 100))}"] = mean_at(np.array([row]))
            scores["AP"] = mean_at(np.arange(len(thresholds)))
            out[iou_type] = scores
    return out
