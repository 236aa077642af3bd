"""Pre-labelling: a model's mask for every frame that has none, with the model's identity and its uncertainty.

Each result is saved as a "model" draft version carrying the model name, the sha256 of its card file and the mean
per-pixel entropy of its class probabilities (natural log, so in nats: 0 for a certain model, ln(C) for a uniform
guess over C classes), which the review queue sorts by. A segmenter run with test-time augmentation (``--tta flip``)
says so in each version's comment, since the same model and card then give a different mask.

Refinement (``prelabel --refine``): the semantic model finds the regions, the promptable model draws them. Each
connected region of a class the promptable model knows gets the region's box, grown by :data:`REFINE_GROW` of its
size on every side, as a prompt; the promptable mask (inside that box) replaces the region when the model's own
predicted IoU is at least ``min_iou``, else the semantic region stays. The version records both models: the
semantic one as its model (name, card sha256, entropy), the promptable one and every region's decision in its
comment (:data:`REFINED_PREFIX` ...). The frame's embedding is cached in the store on the way, so a later prompt
correction of the frame costs only the decoder.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Callable, Dict, Iterable, List, Mapping, Optional, Sequence, Tuple

import numpy as np

from ..store.database import AnnotationStore, ConflictError, UNLABELLED
from ..classes import canonical_key
from ..imaging.placement import place
from ..inference.backends import tta_of
from .prompt import FramePrompter

log = logging.getLogger(__name__)

#: Probabilities are clipped to this before the log so that p = 0 contributes 0 (the limit of p ln p).
_EPS = 1e-12
#: The comment a version gets when its segmenter ran with flip test-time augmentation.
FLIP_TTA_NOTE = "test-time augmentation: flip (mean of the frame's and its mirror image's probabilities)"


def mean_entropy(probabilities: np.ndarray) -> float:
    """Mean over pixels of ``-sum_c p_c ln p_c`` for probabilities ``(C, H, W)`` (nats). Raises ValueError for
    anything that is not (C, H, W) with C >= 2."""
    p = np.asarray(probabilities, dtype=np.float64)
    if p.ndim != 3 or p.shape[0] < 2:
        raise ValueError(f"expected class probabilities (C, H, W) with C >= 2, got shape {p.shape}")
    entropy = -(p * np.log(np.clip(p, _EPS, 1.0))).sum(axis=0)
    return float(entropy.mean())


def _valid_probabilities(segmenter, image: np.ndarray, probabilities: np.ndarray, shape,
                         placement=None) -> np.ndarray:
    """The part of the probabilities that covers the frame. A Segmenter returns them in the model's input size,
    where zero padding (no tissue) surrounds the scaled frame; entropy over padding would dilute the score, so only
    the frame's own area (the placement's valid region) is kept. ``placement``: the result's own (that of the
    image region when the segmenter has one), else the frame's is worked out here."""
    if placement is not None:
        return probabilities[:, :placement.valid_h, :placement.valid_w]
    if probabilities.shape[1:] == tuple(shape):
        return probabilities
    spec = getattr(segmenter, "spec", None)
    if spec is None:
        return probabilities
    _, placement = place(image, spec)
    return probabilities[:, :placement.valid_h, :placement.valid_w]


# ------------------------------------------------------------------------------------------------ refinement
#: Each region's box is grown by this share of its width (left, right) and height (top, bottom) before prompting.
REFINE_GROW = 0.10
#: The promptable mask replaces a region when the model's predicted IoU is at least this
#: (benchmarks/annotation/refine_prelabel.md).
REFINE_MIN_IOU = 0.80
#: Regions smaller than this (pixels) are left as they are.
REFINE_MIN_AREA = 50
#: How a refined version's comment starts (then the promptable model, its sha256 and the decisions).
REFINED_PREFIX = "refined by "


@dataclass(frozen=True)
class RegionDecision:
    """What refinement did with one region: its class, the box prompted (frame pixels), the predicted IoU, whether
    the promptable mask replaced it, and the region's area before and after."""

    class_key: str
    box: Tuple[float, float, float, float]
    predicted_iou: Optional[float]
    replaced: bool
    area_before: int
    area_after: int

    def as_dict(self) -> dict:
        return {"class": self.class_key, "box": [round(float(v), 1) for v in self.box],
                "predicted_iou": None if self.predicted_iou is None else round(float(self.predicted_iou), 3),
                "replaced": self.replaced, "area_before": self.area_before, "area_after": self.area_after}


def grown_box(region: np.ndarray, grow: float) -> Tuple[float, float, float, float]:
    """The box of a bool region grown by ``grow`` of its width / height on each side, clipped to the frame."""
    ys, xs = np.nonzero(region)
    x0, x1, y0, y1 = float(xs.min()), float(xs.max()), float(ys.min()), float(ys.max())
    w, h = x1 - x0 + 1, y1 - y0 + 1
    height, width = region.shape
    return (max(0.0, x0 - grow * w), max(0.0, y0 - grow * h), min(width - 1.0, x1 + grow * w),
            min(height - 1.0, y1 + grow * h))


def _canonical(key: str) -> str:
    try:
        return canonical_key(key)
    except ValueError:
        return key


def region_groups(mask: np.ndarray, merge_px: int = 0) -> List[np.ndarray]:
    """The regions of a bool mask: its connected components, or with ``merge_px`` > 0 the groups of components
    closer than that to each other (a structure the model split into pieces is prompted as one)."""
    import cv2

    if merge_px > 0:
        size = 2 * int(merge_px) + 1
        grown = cv2.dilate(mask.astype(np.uint8), cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (size, size)))
        count, components = cv2.connectedComponents(grown, connectivity=8)
        return [mask & (components == index) for index in range(1, count)]
    count, components = cv2.connectedComponents(mask.astype(np.uint8), connectivity=8)
    return [components == index for index in range(1, count)]


def refine_labelmap(labelmap: np.ndarray, classes: Mapping[int, str],
                    predict: Callable[[Tuple[float, float, float, float]], Tuple[np.ndarray, Optional[float]]],
                    class_keys: Iterable[str], grow: float = REFINE_GROW, min_iou: float = REFINE_MIN_IOU,
                    min_area: int = REFINE_MIN_AREA, merge_px: int = 0) -> Tuple[np.ndarray, List[RegionDecision]]:
    """Refine a semantic labelmap region by region (see the module docstring).

    classes: {label: key} of ``labelmap``; class_keys: the keys the promptable model segments (others are left
    alone); predict(box) -> (bool mask of the frame, predicted IoU or None) for one box prompt. A replacing mask is
    cut to its box and takes only background pixels and pixels of its own class (another class's region stays).
    merge_px: pieces of a class closer than this are one region (:func:`region_groups`).
    Returns the new labelmap and one decision per region, in class then region order."""
    wanted = {_canonical(k) for k in class_keys}
    out = labelmap.copy()
    decisions: List[RegionDecision] = []
    for label, key in sorted(classes.items()):
        if _canonical(key) not in wanted:
            continue
        for region in region_groups(labelmap == label, merge_px):
            area = int(region.sum())
            if area < min_area:
                continue
            box = grown_box(region, grow)
            mask, iou = predict(box)
            x0, y0, x1, y1 = (int(round(v)) for v in box)
            inside = np.zeros_like(region)
            inside[y0:y1 + 1, x0:x1 + 1] = True
            new = np.asarray(mask, dtype=bool) & inside
            if iou is None or iou < min_iou or not new.any():
                decisions.append(RegionDecision(key, box, iou, False, area, area))
                continue
            out[region & (out == label)] = 0
            take = new & ((out == 0) | (out == label))
            out[take] = label
            decisions.append(RegionDecision(key, box, iou, True, area, int(take.sum())))
    return out, decisions


class PrelabelRefiner:
    """Refines pre-labels of one store with a promptable model (``prelabel(..., refiner=...)``).

    model: a :class:`~NerveSegLogic.inference.promptable.PromptableSegmenter`; its embedding of each frame is
    cached in the store (:class:`~NerveSegLogic.annotate.prompt.FramePrompter`)."""

    def __init__(self, store: AnnotationStore, model, grow: float = REFINE_GROW, min_iou: float = REFINE_MIN_IOU,
                 min_area: int = REFINE_MIN_AREA):
        if not 0.0 <= float(min_iou) <= 1.0:
            raise ValueError(f"refine: the predicted-IoU threshold must be 0..1, got {min_iou}")
        if not 0.0 <= float(grow) <= 1.0:
            raise ValueError(f"refine: the box growth must be 0..1 of the region's size, got {grow}")
        self.prompter = FramePrompter(store, model)
        self.model = model
        self.grow, self.min_iou, self.min_area = float(grow), float(min_iou), int(min_area)
        self.class_keys = list(model.card.labels.values())

    def refine(self, frame_id: int, labelmap: np.ndarray,
               classes: Mapping[int, str]) -> Tuple[np.ndarray, List[RegionDecision]]:
        embedding = self.prompter.embedding(frame_id)
        shape = labelmap.shape

        def predict(box):
            return self.model.predict(embedding, shape, box=box)

        return refine_labelmap(labelmap, classes, predict, self.class_keys, self.grow, self.min_iou, self.min_area)

    def note(self, decisions: Sequence[RegionDecision]) -> str:
        """The comment part that records the promptable model and each region's decision."""
        parts = []
        for d in decisions:
            iou = "no IoU" if d.predicted_iou is None else f"IoU {d.predicted_iou:.2f}"
            parts.append(f"{d.class_key} {'replaced' if d.replaced else 'kept'} ({iou})")
        head = (f"{REFINED_PREFIX}{self.model.card.name} (sha256 {self.model.model_sha256[:12]}, predicted IoU >= "
                f"{self.min_iou:g}, boxes grown {self.grow:.0%})")
        return head + (": " + ", ".join(parts) if parts else ": no region to refine")


@dataclass
class PrelabelReport:
    model_name: str
    model_sha256: Optional[str]
    version_ids: List[int] = field(default_factory=list)
    skipped: List[int] = field(default_factory=list)  # frames that got a mask from someone else meanwhile
    tta: str = "none"  # the test-time augmentation the segmenter ran with (none or flip)
    refined_by: Optional[str] = None  # the promptable model of --refine
    regions_replaced: int = 0
    regions_kept: int = 0
    decisions: Dict[int, List[RegionDecision]] = field(default_factory=dict)  # frame id -> its regions


def prelabel(store: AnnotationStore, segmenter, author: str, frame_ids: Optional[Iterable[int]] = None,
             second_opinion: bool = False, progress: bool = True, comment: Optional[str] = None,
             refiner: Optional[PrelabelRefiner] = None) -> PrelabelReport:
    """Segment every unlabelled frame (or the given ones that are still unlabelled) and save a "model" version.

    second_opinion: also segment frames whose history so far holds only draft masks of OTHER models, adding this
    model's version on top, so the review queue can rank them by the two models' disagreement.

    segmenter: a :class:`NerveSegLogic.inference.segmenter.Segmenter` (or anything with ``segment(image)`` giving a
    result with ``labelmap``, ``probabilities`` and ``model_name``, plus ``classes`` and ``card_sha256``).
    author: who ran the model (recorded as the version's author; the model itself is in model_name/model_sha256).
    comment: stored with each version (e.g. which weights file ran when it is not the card's); when the segmenter
    runs with flip test-time augmentation, :data:`FLIP_TTA_NOTE` is added to it.
    refiner: a :class:`PrelabelRefiner`: each labelmap is refined by the promptable model before it is saved.
    A frame that gains a mask from someone else while this runs is skipped, not overwritten.
    """
    tta = tta_of(getattr(segmenter, "backend", None))
    if tta == "flip":
        comment = f"{comment}; {FLIP_TTA_NOTE}" if comment else FLIP_TTA_NOTE
    classes = {int(c.label): c.key for c in segmenter.classes}
    card_sha = getattr(segmenter, "card_sha256", None)
    name = getattr(getattr(segmenter, "card", None), "name", None)
    candidates = {f.id: None for f in store.frames(statuses=[UNLABELLED])}
    if second_opinion:
        candidates.update(_model_only_frames(store, name))
    todo = [i for i in (frame_ids if frame_ids is not None else sorted(candidates)) if i in candidates]
    report = PrelabelReport(model_name=name or "", model_sha256=card_sha, tta=tta,
                            refined_by=None if refiner is None else refiner.model.card.name)
    iterator = todo
    if progress:
        from tqdm import tqdm

        iterator = tqdm(todo, desc=f"prelabel {name or 'model'}", unit="frame")
    for frame_id in iterator:
        image = store.image(frame_id)
        result = segmenter.segment(image)
        model_name = result.model_name or name
        report.model_name = model_name
        uncertainty = None
        if result.probabilities is not None:
            uncertainty = mean_entropy(_valid_probabilities(segmenter, image, result.probabilities, image.shape,
                                                            getattr(result, "placement", None)))
        labelmap, note = result.labelmap, comment
        if refiner is not None:
            labelmap, decisions = refiner.refine(frame_id, labelmap, classes)
            report.decisions[frame_id] = decisions
            report.regions_replaced += sum(d.replaced for d in decisions)
            report.regions_kept += sum(not d.replaced for d in decisions)
            note = f"{comment}; {refiner.note(decisions)}" if comment else refiner.note(decisions)
        try:
            version = store.save_mask(frame_id, labelmap, classes, author, "model", candidates[frame_id],
                                      model_name=model_name, model_sha256=card_sha, uncertainty=uncertainty,
                                      comment=note)
        except ConflictError as exc:
            log.info("frame %d skipped: %s", frame_id, exc)
            report.skipped.append(frame_id)
            continue
        report.version_ids.append(version.id)
    return report


def _model_only_frames(store: AnnotationStore, model_name: Optional[str]):
    """{frame id: current version id} of frames whose every version is a draft by a model other than this one."""
    history = {}
    for v in store.summaries():
        history.setdefault(v.frame_id, []).append(v)
    out = {}
    for frame_id, versions in history.items():
        if all(v.origin == "model" and v.status == "draft" and v.model_name != model_name for v in versions):
            out[frame_id] = versions[-1].id
    return out
