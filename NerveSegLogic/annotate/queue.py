"""The review queue: which frames an annotator should look at, most uncertain first.

A frame is to be reviewed while its current status is ``draft`` or ``needs-review``, or while it has no mask yet
(``unlabelled``, to be drawn from scratch). Its uncertainty score, in 0..1 so the two kinds compare:
- when two different models have labelled it: their disagreement, 1 - Dice of their masks (the latest version of
  each of the two most recent models; Dice averaged over the classes either mask has, 1 when both are empty);
- else the model's mean per-pixel entropy recorded at pre-labelling (nats), divided by ln(C) with C the number of
  classes including background (the entropy of a uniform guess), so 1 means "no idea".
Frames with no score (no model ran on them) come last. ``order="index"`` keeps source order instead.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Dict, List, Optional, Sequence

import numpy as np

from ..imaging import overlap
from ..store.database import AnnotationStore, UNLABELLED, VersionSummary

ORDERS = ("uncertainty", "index")
REVIEW_STATUSES = ("needs-review", "draft", UNLABELLED)


@dataclass(frozen=True)
class QueueEntry:
    frame_id: int
    source: str
    index: int
    subject: Optional[str]
    status: str  # current status, or "unlabelled"
    version_id: Optional[int]  # current version
    uncertainty: Optional[float]  # mean entropy, nats (latest model version)
    disagreement: Optional[float]  # 1 - Dice of two models' masks
    score: Optional[float]  # what the queue sorts by, 0..1

    def as_dict(self) -> dict:
        return asdict(self)


def dice(a: np.ndarray, b: np.ndarray) -> float:
    """Mean over the labels present in either labelmap of their Dice (:func:`~NerveSegLogic.imaging.overlap.dice`,
    never NaN here: each label is in one of the two); 1.0 when both are empty."""
    labels = sorted((set(np.unique(a)) | set(np.unique(b))) - {0})
    if not labels:
        return 1.0  # both empty (overlap's rule: NaN): two models that both find nothing agree, disagreement 0
    return float(np.mean([overlap.dice(a == label, b == label) for label in labels]))


def review_queue(store: AnnotationStore, order: str = "uncertainty",
                 statuses: Sequence[str] = REVIEW_STATUSES, subject: Optional[str] = None) -> List[QueueEntry]:
    """Frames to review (current status in ``statuses``), most uncertain first or in (source, index) order.
    Raises ValueError for an unknown order."""
    if order not in ORDERS:
        raise ValueError(f"queue order {order!r} unknown; expected one of {', '.join(ORDERS)}")
    frames = store.frames(statuses=statuses, subject=subject)
    wanted = {f.id for f in frames}
    by_frame: Dict[int, List[VersionSummary]] = {}
    for v in store.summaries():
        if v.frame_id in wanted:
            by_frame.setdefault(v.frame_id, []).append(v)
    entries = []
    for f in frames:
        history = by_frame.get(f.id, [])
        current = history[-1] if history else None
        uncertainty, normalised = _entropy(history)
        disagreement = _disagreement(store, history)
        score = disagreement if disagreement is not None else normalised
        entries.append(QueueEntry(frame_id=f.id, source=f.source, index=f.index, subject=f.subject,
                                  status=current.status if current else UNLABELLED,
                                  version_id=current.id if current else None, uncertainty=uncertainty,
                                  disagreement=disagreement, score=score))
    if order == "index":
        entries.sort(key=lambda e: (e.source, e.index, e.frame_id))
    else:
        entries.sort(key=lambda e: (e.score is None, -(e.score or 0.0), e.source, e.index, e.frame_id))
    return entries


def _entropy(history: List[VersionSummary]):
    """(mean entropy in nats, entropy / ln C) of the latest model version that recorded one."""
    for v in reversed(history):
        if v.origin == "model" and v.uncertainty is not None:
            n_classes = len(v.classes) + 1
            return v.uncertainty, (v.uncertainty / math.log(n_classes) if n_classes > 1 else None)
    return None, None


def _disagreement(store: AnnotationStore, history: List[VersionSummary]) -> Optional[float]:
    latest_by_model: Dict[str, VersionSummary] = {}
    for v in history:
        if _is_model_save(v, history):
            latest_by_model[v.model_name] = v
    if len(latest_by_model) < 2:
        return None
    a, b = sorted(latest_by_model.values(), key=lambda v: v.id)[-2:]
    return 1.0 - dice(store.mask(a.mask_sha256), store.mask(b.mask_sha256))


def _is_model_save(v: VersionSummary, history: List[VersionSummary]) -> bool:
    """A version a model produced (not a status change someone made to a model mask): origin model, and its mask
    or model differs from its parent's."""
    if v.origin != "model" or not v.model_name:
        return False
    parent = next((p for p in history if p.id == v.parent_id), None)
    return parent is None or parent.model_name != v.model_name or parent.mask_sha256 != v.mask_sha256
