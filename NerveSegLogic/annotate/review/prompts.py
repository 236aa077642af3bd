"""The review panel's prompt tool: a box and include/exclude clicks on the shown frame -> that class's new mask.

The panel (markups ROI for the box, a markups point list for the clicks) calls this on every placement or move and
shows the returned labelmap; Accept saves it through the review session's store as a ``prompt`` version (the
prompts kept with it) and moves on, exactly like the session's own accept. No Qt and no MRML here.

    prompts = ReviewPrompt(session, PromptableSegmenter.from_name(), class_key="nerve")
    labelmap = prompts.set_box(120, 80, 210, 150)         # (H, W) uint8: the shown mask with "nerve" replaced
    index, labelmap = prompts.add_point(160, 120, include=True)
    labelmap = prompts.move_point(index, 162, 118)
    labelmap = prompts.remove_point(index)
    version = prompts.accept()                            # saved (origin prompt, accepted), session moved on

Coordinates are pixels of the frame, x the column (i) and y the row (j), as the panel reads them from the IJK of
the markups. The frame's embedding is computed once (in the background for the next frames when ``prefetch``),
so each call after the first costs only the decoder.
"""

from __future__ import annotations

import threading
from typing import List, Optional, Tuple

import numpy as np

from ..prompt import FramePrompter, label_for_class, replace_class
from ..session import ReviewSession
from ...store.database import Version

Point = Tuple[float, float, bool]


class ReviewPrompt:
    """Prompt state for the session's current frame and one class (see the module docstring).

    session: the :class:`ReviewSession` the panel reviews with; model: a promptable model
    (:class:`~NerveSegLogic.inference.promptable.PromptableSegmenter`); class_key: the class the prompts draw
    (change it with :meth:`set_class`); prefetch: how many frames ahead of the current one to embed in a background
    thread (0: none). Prompts are cleared when the session shows another frame.
    """

    def __init__(self, session: ReviewSession, model, class_key: Optional[str] = None, prefetch: int = 2):
        self.session = session
        self.prompter = FramePrompter(session.store, model)
        self.class_key = class_key or next(iter(model.card.labels.values()))
        self.prefetch = max(0, int(prefetch))
        self._frame_id: Optional[int] = None
        self._box: Optional[Tuple[float, float, float, float]] = None
        self._points: List[Point] = []
        self._region: Optional[np.ndarray] = None
        self._preview: Optional[np.ndarray] = None
        self._background: Optional[Tuple[threading.Thread, threading.Event]] = None
        self._sync()

    # -- state -------------------------------------------------------------------------------------------------
    @property
    def frame_id(self) -> Optional[int]:
        """The frame the prompts are on (the session's current one), None when the session is done."""
        self._sync()
        return self._frame_id

    @property
    def box(self) -> Optional[Tuple[float, float, float, float]]:
        return self._box

    @property
    def points(self) -> List[Point]:
        """The clicks as (x, y, include), in the order placed (the index the other calls take)."""
        return list(self._points)

    @property
    def preview(self) -> Optional[np.ndarray]:
        """The last labelmap returned (the shown mask with the class replaced), None before a usable prompt."""
        return None if self._preview is None else self._preview.copy()

    def _sync(self) -> None:
        """Follow the session: on a new frame, clear the prompts and start embedding the frames ahead."""
        shown = self.session.current()
        frame_id = None if shown is None else shown.frame_id
        if frame_id != self._frame_id:
            self._frame_id = frame_id
            self.clear()
            self._prefetch()

    def _prefetch(self) -> None:
        if self._frame_id is None or not self.prefetch:
            return
        if self._background is not None and self._background[0].is_alive():
            self._background[1].set()  # the old look-ahead is stale: stop it after its current frame
        start = self.session.position
        ahead = self.session.frame_ids[start:start + 1 + self.prefetch]
        self._background = self.prompter.embed_in_background(ahead)

    # -- prompts -----------------------------------------------------------------------------------------------
    def set_class(self, class_key: str) -> Optional[np.ndarray]:
        """Draw ``class_key`` from now on (the prompts stay); returns the new preview."""
        if not isinstance(class_key, str) or not class_key.strip():
            raise ValueError(f"class: expected a class key such as 'nerve', got {class_key!r}")
        self.class_key = class_key
        return self._update()

    def set_box(self, x0: float, y0: float, x1: float, y1: float) -> Optional[np.ndarray]:
        """Place or move the box (pixel corners, any order: an ROI dragged past itself still works)."""
        self._sync()
        self._box = (min(x0, x1), min(y0, y1), max(x0, x1), max(y0, y1))
        return self._update()

    def set_prompts(self, box: Optional[Tuple[float, float, float, float]],
                    points: List[Point]) -> Optional[np.ndarray]:
        """Replace the box (or None) and every click at once, running the prompt once: what the panel calls when
        a markups node changed (it reads all of them)."""
        self._sync()
        self._box = None if box is None else (min(box[0], box[2]), min(box[1], box[3]),
                                              max(box[0], box[2]), max(box[1], box[3]))
        self._points = [(float(x), float(y), bool(include)) for x, y, include in points]
        return self._update()

    def clear_box(self) -> Optional[np.ndarray]:
        self._box = None
        return self._update()

    def add_point(self, x: float, y: float, include: bool = True) -> Tuple[int, Optional[np.ndarray]]:
        """Add a click; returns its index and the new preview."""
        self._sync()
        self._points.append((float(x), float(y), bool(include)))
        return len(self._points) - 1, self._update()

    def move_point(self, index: int, x: float, y: float, include: Optional[bool] = None) -> Optional[np.ndarray]:
        """Move click ``index`` (and switch it between include and exclude when ``include`` is given)."""
        old = self._point(index)
        self._points[index] = (float(x), float(y), old[2] if include is None else bool(include))
        return self._update()

    def remove_point(self, index: int) -> Optional[np.ndarray]:
        self._point(index)
        del self._points[index]
        return self._update()

    def clear(self) -> None:
        """Forget the box and the clicks of this frame."""
        self._box, self._points, self._region, self._preview = None, [], None, None

    def _point(self, index: int) -> Point:
        if not isinstance(index, int) or not 0 <= index < len(self._points):
            raise IndexError(f"no click {index!r}: the frame has {len(self._points)} click(s)")
        return self._points[index]

    def _usable(self) -> bool:
        return self._box is not None or any(p[2] for p in self._points)

    def _update(self) -> Optional[np.ndarray]:
        """Run the prompt (decoder only once the frame is embedded) and return the preview; None (and no preview)
        while there is neither a box nor an include click."""
        self._sync()
        if self._frame_id is None:
            raise IndexError("the review session is finished: no frame to prompt on")
        if not self._usable():
            self._region = self._preview = None
            return None
        self._region = self.prompter.predict(self._frame_id, self._box, self._points)
        shown = self.session.current()
        label = label_for_class(self.class_key, shown.classes, self.prompter.model.card.labels)
        self._preview = replace_class(shown.mask, label, self._region)
        return self._preview.copy()

    # -- saving ------------------------------------------------------------------------------------------------
    def save(self, status: str = "draft", comment: Optional[str] = None) -> Version:
        """Save the preview as a ``prompt`` version based on the version the session shows, and stay on the
        frame. Raises ValueError with no usable prompt, ConflictError when someone saved the frame meanwhile,
        NothingChanged when the mask would not change."""
        self._sync()
        if self._frame_id is None:
            raise IndexError("the review session is finished: no frame to save")
        if not self._usable() or self._region is None:
            raise ValueError("nothing to save: place a box or an include click first")
        shown = self.session.current()
        version = self.prompter.correct(self._frame_id, self.class_key, self.session.author,
                                        shown.version.id if shown.version else None, box=self._box,
                                        points=self._points, status=status, comment=comment, region=self._region)
        self.session.reload()  # the session now shows the saved version; the prompts stay for more edits
        return version

    def accept(self, comment: Optional[str] = None) -> Version:
        """Save the preview with status accepted, then move the session to the next frame (as its accept does)."""
        version = self.save(status="accepted", comment=comment)
        self.session.next()  # nothing left to save: only moves
        self._sync()
        return version

    def close(self) -> None:
        """Stop the background embedding (it finishes the frame it is on)."""
        if self._background is not None:
            self._background[1].set()
            self._background[0].join(timeout=30)
            self._background = None


__all__ = ["ReviewPrompt"]
