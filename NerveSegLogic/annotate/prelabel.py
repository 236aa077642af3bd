"""Pre-labelling: a model's mask for every frame that has none, with the model's identity and its uncertainty.

Each result is saved as a "model" draft version carrying the model name, the sha256 of its card file and the mean
per-pixel entropy of its class probabilities (natural log, so in nats: 0 for a certain model, ln(C) for a uniform
guess over C classes), which the review queue sorts by. A segmenter run with test-time augmentation (``--tta flip``)
says so in each version's comment, since the same model and card then give a different mask.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Iterable, List, Optional

import numpy as np

from .store import AnnotationStore, ConflictError, UNLABELLED

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
    from NerveSegLogic.inference.preprocess import place

    _, placement = place(image, spec)
    return probabilities[:, :placement.valid_h, :placement.valid_w]


@dataclass
class PrelabelReport:
    model_name: str
    model_sha256: Optional[str]
    version_ids: List[int] = field(default_factory=list)
    skipped: List[int] = field(default_factory=list)  # frames that got a mask from someone else meanwhile
    tta: str = "none"  # the test-time augmentation the segmenter ran with (none or flip)


def prelabel(store: AnnotationStore, segmenter, author: str, frame_ids: Optional[Iterable[int]] = None,
             second_opinion: bool = False, progress: bool = True, comment: Optional[str] = None) -> PrelabelReport:
    """Segment every unlabelled frame (or the given ones that are still unlabelled) and save a "model" version.

    second_opinion: also segment frames whose history so far holds only draft masks of OTHER models, adding this
    model's version on top, so the review queue can rank them by the two models' disagreement.

    segmenter: a :class:`NerveSegLogic.inference.segmenter.Segmenter` (or anything with ``segment(image)`` giving a
    result with ``labelmap``, ``probabilities`` and ``model_name``, plus ``classes`` and ``card_sha256``).
    author: who ran the model (recorded as the version's author; the model itself is in model_name/model_sha256).
    comment: stored with each version (e.g. which weights file ran when it is not the card's); when the segmenter
    runs with flip test-time augmentation, :data:`FLIP_TTA_NOTE` is added to it.
    A frame that gains a mask from someone else while this runs is skipped, not overwritten.
    """
    from NerveSegLogic.inference.backends import tta_of

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
    report = PrelabelReport(model_name=name or "", model_sha256=card_sha, tta=tta)
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
        try:
            version = store.save_mask(frame_id, result.labelmap, classes, author, "model", candidates[frame_id],
                                      model_name=model_name, model_sha256=card_sha, uncertainty=uncertainty,
                                      comment=comment)
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
