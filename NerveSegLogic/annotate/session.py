"""ReviewSession: stepping through the review queue, the controller the Slicer annotation panel binds to.

The panel shows :meth:`ReviewSession.current` (image, mask, geometry, classes, who changed what), lets the annotator
fix the mask in Segment Editor, and calls accept / reject / skip / next / previous with the mask it reads back.
Every call that moves saves first: a changed mask is written to the store BEFORE the session moves, so an edit is
never lost by moving on. A save is always based on the version that was shown (not whatever is current by then),
so if someone else saved the frame meanwhile the store refuses with ConflictError (naming them), the session stays
on the frame, and the refused mask is in the error for the panel to offer again after :meth:`reload`.

No Qt and no Slicer here: it runs and is tested in plain Python.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, List, Mapping, Optional, Sequence

import numpy as np

from NerveSegLogic.frame import ImageGeometry

from .queue import REVIEW_STATUSES, review_queue
from ..store.database import AnnotationStore, FrameRecord, Version, VersionSummary


@dataclass(frozen=True)
class HistoryEntry:
    """One line of a frame's history as the panel shows it."""

    version_id: int
    author: str
    created: str
    origin: str
    status: str
    model_name: Optional[str]
    comment: Optional[str]
    change: str  # what this version did, in words

    def describe(self) -> str:
        return f"v{self.version_id} {self.created[:19].replace('T', ' ')} {self.author}: {self.change}"


@dataclass
class CurrentFrame:
    """What the panel puts on screen for one frame. ``mask`` is a private copy the caller may edit."""

    record: FrameRecord
    image: np.ndarray
    mask: np.ndarray
    classes: Dict[int, str]
    version: Optional[Version]  # the version shown (None: the frame has no mask yet)
    history: List[HistoryEntry]
    position: int  # 0-based place in the queue
    total: int

    @property
    def frame_id(self) -> int:
        return self.record.id

    @property
    def geometry(self) -> Optional[ImageGeometry]:
        return self.record.geometry

    @property
    def status(self) -> str:
        return self.version.status if self.version else "unlabelled"


def describe_history(history: Sequence[VersionSummary]) -> List[HistoryEntry]:
    """Each version with a one-line description of what it changed relative to its parent."""
    by_id = {v.id: v for v in history}
    out = []
    for v in history:
        parent = by_id.get(v.parent_id) if v.parent_id is not None else None
        if parent is None:
            change = f"{v.model_name} pre-label" if v.origin == "model" else f"{v.origin} mask"
        elif v.comment and v.comment.startswith("restored version"):
            change = v.comment
        elif v.mask_sha256 != parent.mask_sha256:
            change = f"{v.model_name} mask" if v.origin == "model" else "mask edited"
        else:
            change = "status"
        if parent is None or v.status != parent.status or change == "mask edited":
            change += f" -> {v.status}"
        out.append(HistoryEntry(v.id, v.author, v.created, v.origin, v.status, v.model_name, v.comment, change))
    return out


class ReviewSession:
    """Steps through frames to review (a snapshot of the queue taken at construction, so previous() can go back to
    frames already decided).

    store: the AnnotationStore; author: who is reviewing; order: "uncertainty" or "index".
    classes: {label value: class key} for frames that have no mask yet (e.g. the model card's classes).
    frame_ids: review exactly these frames, in this order, instead of the queue.
    """

    def __init__(self, store: AnnotationStore, author: str, order: str = "uncertainty",
                 statuses: Sequence[str] = REVIEW_STATUSES, classes: Optional[Mapping[int, str]] = None,
                 frame_ids: Optional[Sequence[int]] = None):
        if not author or not str(author).strip():
            raise ValueError("a review session needs the reviewer's name (author)")
        self.store = store
        self.author = str(author)
        self.default_classes = {int(k): v for k, v in (classes or {}).items()}
        if frame_ids is None:
            frame_ids = [e.frame_id for e in review_queue(store, order=order, statuses=statuses)]
        self.frame_ids: List[int] = [int(i) for i in frame_ids]
        self._position = 0
        self._shown: Optional[CurrentFrame] = None

    # -- where we are ------------------------------------------------------------------------------------------

    def __len__(self) -> int:
        return len(self.frame_ids)

    @property
    def position(self) -> int:
        return self._position

    @property
    def done(self) -> bool:
        """True once the session has moved past the last frame."""
        return self._position >= len(self.frame_ids)

    def current(self) -> Optional[CurrentFrame]:
        """The frame at the current position as stored now (loaded once per visit), or None when done."""
        if self.done:
            return None
        if self._shown is None or self._shown.frame_id != self.frame_ids[self._position]:
            self._shown = self._load(self.frame_ids[self._position])
        return self._shown

    def reload(self) -> Optional[CurrentFrame]:
        """Re-read the current frame from the store (after a ConflictError: shows the other person's version)."""
        self._shown = None
        return self.current()

    def _load(self, frame_id: int) -> CurrentFrame:
        record = self.store.frame(frame_id)
        version = self.store.current(frame_id)
        if version is None:
            mask = np.zeros((record.height, record.width), dtype=np.uint8)
            classes = dict(self.default_classes)
        else:
            mask, classes = version.mask.copy(), dict(version.classes)
        history = describe_history(self.store.summaries(frame_id=frame_id))
        return CurrentFrame(record=record, image=self.store.image(frame_id), mask=mask, classes=classes,
                            version=version, history=history, position=self._position, total=len(self.frame_ids))

    # -- saving --------------------------------------------------------------------------------------------------

    def save(self, mask: Optional[np.ndarray] = None, status: Optional[str] = None,
             comment: Optional[str] = None, classes: Optional[Mapping[int, str]] = None) -> Optional[Version]:
        """Save the shown frame without moving: a changed ``mask`` becomes a new "corrected" version ("manual" when
        the frame had none) with ``status`` (default draft); an unchanged mask with a new ``status`` becomes a
        status version; nothing changed saves nothing (returns None). Raises ConflictError if the frame changed in
        the store since it was shown, ValueError for a mask of the wrong size or with unnamed labels."""
        shown = self.current()
        if shown is None:
            raise IndexError("the review session is finished: no frame to save")
        base = shown.version
        merged = {**shown.classes, **{int(k): v for k, v in (classes or {}).items()}}
        changed = mask is not None and not np.array_equal(np.asarray(mask), shown.mask)
        if mask is not None and np.asarray(mask).shape != shown.mask.shape:
            raise ValueError(f"mask shape {np.asarray(mask).shape} differs from frame {shown.frame_id}'s "
                             f"{shown.mask.shape}")
        if changed or (base is None and mask is not None and status is not None):
            version = self.store.save_mask(shown.frame_id, np.asarray(mask), merged, self.author,
                                           "corrected" if base is not None else "manual",
                                           base.id if base is not None else None, status=status or "draft",
                                           comment=comment)
        elif status is not None and base is not None:
            version = self.store.set_status(shown.frame_id, status, self.author, base.id, comment=comment)
        elif status is not None:
            raise ValueError(f"frame {shown.frame_id} has no mask yet: draw one (or pass the empty mask) to "
                             f"mark it {status}")
        else:
            return None
        self._shown = self._load(shown.frame_id)  # now based on the new version
        return version

    # -- decisions and moves (each saves first) ------------------------------------------------------------------

    def accept(self, mask: Optional[np.ndarray] = None, comment: Optional[str] = None) -> Version:
        """Accept the shown frame (with ``mask`` if it was edited: saved as "corrected", status accepted), then
        move to the next frame."""
        version = self.save(mask, status="accepted", comment=comment)
        self._move(+1)
        return version  # type: ignore[return-value]  (status given: save always writes)

    def reject(self, comment: Optional[str] = None, mask: Optional[np.ndarray] = None) -> Version:
        """Reject the shown frame's mask (an unlabelled frame is rejected with an empty mask), then move on."""
        shown = self.current()
        if shown is not None and shown.version is None and mask is None:
            mask = shown.mask  # the empty mask: "rejected" must hang on some version
        version = self.save(mask, status="rejected", comment=comment)
        self._move(+1)
        return version  # type: ignore[return-value]

    def skip(self, mask: Optional[np.ndarray] = None) -> Optional[Version]:
        """Move on without a decision; an edited ``mask`` is still saved (as a draft) first."""
        version = self.save(mask)
        self._move(+1)
        return version

    def next(self, mask: Optional[np.ndarray] = None) -> Optional[CurrentFrame]:
        """Save an edited ``mask`` (draft) if any, move to the next frame and return it (None past the end)."""
        self.save(mask)
        self._move(+1)
        return self.current()

    def previous(self, mask: Optional[np.ndarray] = None) -> Optional[CurrentFrame]:
        """Save an edited ``mask`` (draft) if any, move to the previous frame and return it."""
        if not self.done:
            self.save(mask)
        self._move(-1)
        return self.current()

    def go_to(self, position: int, mask: Optional[np.ndarray] = None) -> Optional[CurrentFrame]:
        """Save an edited ``mask`` (draft) if any, then show the frame at ``position`` (0-based)."""
        if not 0 <= position < len(self.frame_ids):
            raise IndexError(f"position {position} outside the session's {len(self.frame_ids)} frames")
        if not self.done:
            self.save(mask)
        self._position = position
        return self.current()

    def _move(self, step: int) -> None:
        self._position = min(max(self._position + step, 0), len(self.frame_ids))
        self._shown = None
