"""Correct one class of a frame's mask with a box and/or clicks (promptable segmentation, LiteMedSAM).

The costly part, the frame's image embedding, is computed once per frame and model and cached in the annotation
store (float16, keyed by the model's weights sha256, so new weights never reuse an old embedding); a prompt then
costs only the model's decoder. The result replaces one class of the current mask and is saved as a new version
with origin ``prompt``, the prompts kept with it (``store.prompts(version_id)``); like every save it is undone by
restoring the parent version.

    prompter = FramePrompter(store, PromptableSegmenter.from_name())
    version = prompter.correct(frame_id, "nerve", author="ana", parent_id=current.id,
                               box=(120, 80, 210, 150), points=[(160, 120, True)])
"""

from __future__ import annotations

import logging
import threading
from collections import OrderedDict
from typing import Callable, Dict, Iterable, List, Mapping, Optional, Sequence, Tuple

import numpy as np

from .corrections import NothingChanged
from ..store.database import AnnotationStore, Version

log = logging.getLogger(__name__)

Point = Tuple[float, float, bool]


def label_for_class(class_key: str, classes: Mapping[int, str], model_classes: Mapping[int, str]) -> int:
    """The label value of ``class_key`` in a mask with ``classes``: its own label there; else the model card's
    label for it when that value is free; else the next free value. ValueError for an empty key."""
    if not isinstance(class_key, str) or not class_key.strip():
        raise ValueError(f"class: expected a class key such as 'nerve', got {class_key!r}")
    for label, key in classes.items():
        if key == class_key:
            return int(label)
    for label, key in model_classes.items():
        if key == class_key and int(label) not in classes:
            return int(label)
    return max([0, *(int(k) for k in classes), *(int(k) for k in model_classes)]) + 1


def replace_class(mask: np.ndarray, label: int, region: np.ndarray) -> np.ndarray:
    """A new labelmap: the old pixels of ``label`` cleared, then every pixel of ``region`` set to ``label`` (the
    prompted structure wins over another class where they overlap: the annotator pointed at it)."""
    out = mask.copy()
    out[out == label] = 0
    out[region] = label
    return out


class FramePrompter:
    """Prompts on the frames of one store with one promptable model (see the module docstring).

    ``model`` is a :class:`~NerveSegLogic.inference.promptable.PromptableSegmenter` (or anything with its
    ``embed``, ``mask``, ``model_sha256`` and ``card``). ``computed`` counts the embeddings this object computed
    (not read from the cache). Thread-safe: one lock guards the embedding of a frame, so a background prefetch and
    a prompt never embed the same frame twice.
    """

    def __init__(self, store: AnnotationStore, model, keep_in_memory: int = 4):
        self.store = store
        self.model = model
        self.computed = 0
        self._keep = max(1, int(keep_in_memory))
        self._memory: "OrderedDict[int, np.ndarray]" = OrderedDict()  # recent frames: repeated prompts skip SQLite
        self._guard = threading.Lock()  # guards _memory, _frame_locks and computed
        self._frame_locks: Dict[int, threading.Lock] = {}  # one per frame: never embed a frame twice at once

    @property
    def model_name(self) -> str:
        return self.model.card.name

    def cached(self, frame_id: int) -> bool:
        """True when this frame's embedding for this model is in memory or in the store."""
        with self._guard:
            if frame_id in self._memory:
                return True
        return self.store.embedding(frame_id, self.model.model_sha256) is not None

    def embedding(self, frame_id: int) -> np.ndarray:
        """The frame's image embedding (float16): from memory or the store's cache, else computed now and cached.
        KeyError for an unknown frame."""
        frame_id = int(frame_id)
        with self._guard:
            if frame_id in self._memory:
                self._memory.move_to_end(frame_id)
                return self._memory[frame_id]
            lock = self._frame_locks.setdefault(frame_id, threading.Lock())
        with lock:  # a second caller for the same frame waits here, then finds it cached
            with self._guard:
                if frame_id in self._memory:
                    return self._memory[frame_id]
            embedding = self.store.embedding(frame_id, self.model.model_sha256)
            if embedding is None:
                embedding = self.model.embed(self.store.image(frame_id)).astype(np.float16)
                with self._guard:
                    self.computed += 1
                if not getattr(self.store, "read_only", False):  # a read-only store still prompts
                    self.store.save_embedding(frame_id, self.model.model_sha256, embedding)
            with self._guard:
                self._memory[frame_id] = embedding
                while len(self._memory) > self._keep:
                    self._memory.popitem(last=False)
                self._frame_locks.pop(frame_id, None)
            return embedding

    def embed_frames(self, frame_ids: Optional[Iterable[int]] = None,
                     progress: Optional[Callable[[int, int], None]] = None,
                     stop: Optional[threading.Event] = None) -> int:
        """Embed every frame (or ``frame_ids``) that has no cached embedding; return how many were computed.
        ``progress(done, total)`` is called after each frame; ``stop`` ends the loop early when set."""
        ids = [r.id for r in self.store.frames()] if frame_ids is None else [int(i) for i in frame_ids]
        before = self.computed
        for done, frame_id in enumerate(ids, start=1):
            if stop is not None and stop.is_set():
                break
            if self.store.embedding(frame_id, self.model.model_sha256) is None:
                self.embedding(frame_id)
            if progress is not None:
                progress(done, len(ids))
        return self.computed - before

    def embed_in_background(self, frame_ids: Iterable[int]) -> Tuple[threading.Thread, threading.Event]:
        """Start a daemon thread embedding ``frame_ids`` (uncached ones only); returns it and the event that
        stops it. Errors are logged, not raised: a prompt on the frame later computes what is missing."""
        ids = list(frame_ids)
        stop = threading.Event()

        def work():
            try:
                self.embed_frames(ids, stop=stop)
            except Exception:  # noqa: BLE001  (a background helper: the prompt path recomputes what failed)
                log.exception("background embedding of %d frames stopped", len(ids))

        thread = threading.Thread(target=work, name="nerveseg-embed", daemon=True)
        thread.start()
        return thread, stop

    def predict(self, frame_id: int, box: Optional[Sequence[float]] = None,
                points: Sequence[Point] = ()) -> np.ndarray:
        """The prompted structure on the frame as a bool (H, W) mask (PromptError for an unusable prompt)."""
        record = self.store.frame(frame_id)
        return self.model.mask(self.embedding(frame_id), (record.height, record.width), box=box, points=points)

    def prompt_record(self, class_key: str, label: int, box: Optional[Sequence[float]],
                      points: Sequence[Point]) -> dict:
        """What is saved with a prompt version: the model, the class and the prompts, in frame pixels."""
        return {"model": self.model_name, "model_sha256": self.model.model_sha256, "class": class_key,
                "label": int(label), "box": None if box is None else [float(v) for v in box],
                "points": [[float(x), float(y), bool(include)] for x, y, include in points],
                "click_mode": getattr(self.model, "click_mode", "box")}

    def correct(self, frame_id: int, class_key: str, author: str, parent_id: Optional[int],
                box: Optional[Sequence[float]] = None, points: Sequence[Point] = (), status: str = "draft",
                comment: Optional[str] = None, region: Optional[np.ndarray] = None) -> Version:
        """Replace class ``class_key`` of version ``parent_id``'s mask (an empty mask when None) by the prompted
        structure and save it as a new ``prompt`` version with ``status``. ``region`` is the already predicted
        mask for these prompts (saves recomputing it). Raises ConflictError when ``parent_id`` is no longer
        current, PromptError for an unusable prompt, NothingChanged when the mask would not change."""
        record = self.store.frame(frame_id)
        if parent_id is None:
            base, classes = np.zeros((record.height, record.width), dtype=np.uint8), {}
        else:
            parent = self.store.version(parent_id)
            if parent.frame_id != int(frame_id):
                raise ValueError(f"version {parent_id} belongs to frame {parent.frame_id}, not frame {frame_id}")
            base, classes = parent.mask, dict(parent.classes)
        label = label_for_class(class_key, classes, self.model.card.labels)
        if region is None:
            region = self.predict(frame_id, box, points)
        result = replace_class(base, label, region)
        merged = {**classes, label: class_key}
        if np.array_equal(result, base) and merged == classes:
            raise NothingChanged(f"the prompt gives frame {frame_id}'s {class_key} exactly as it is; nothing saved")
        return self.store.save_mask(frame_id, result, merged, author, "prompt", parent_id, status=status,
                                    comment=comment, model_name=self.model_name,
                                    model_sha256=self.model.model_sha256,
                                    prompts=self.prompt_record(class_key, label, box, points))


def describe_prompt(prompts: Mapping) -> str:
    """One line for a history view: ``nerve: box 10,20,80,90 + 2 include, 1 exclude``."""
    parts: List[str] = []
    if prompts.get("box"):
        parts.append("box " + ",".join(f"{v:g}" for v in prompts["box"]))
    points = prompts.get("points") or []
    includes = sum(1 for p in points if p[2])
    if points:
        parts.append(f"{includes} include, {len(points) - includes} exclude")
    return f"{prompts.get('class', '?')}: " + " + ".join(parts)
