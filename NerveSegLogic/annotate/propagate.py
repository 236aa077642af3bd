"""Carry an accepted mask through a recording: each next frame prompted with the previous frame's structures.

From an accepted frame, every next frame of the same recording (same source, next index) gets, per structure (a
connected region of a class the promptable model segments), the previous mask's box grown by :data:`GROW` and an
include click at the structure's most interior point, as prompts. The frame is saved as a draft ``propagated``
version with those prompts, and its structures prompt the frame after it. Propagation stops, before saving, at the
first frame where

- the model's predicted IoU of a structure falls below ``min_iou`` (it is no longer sure), or
- a structure leaves the view: its mask is empty or shrinks below ``min_keep`` of the previous frame's area, or
- the frame already has an accepted mask (someone labelled it: propagate from there), or the recording ends.

The annotator then reviews the drafts (accepting is one key each) and corrects where it stopped.

    report = propagate(store, PromptableSegmenter.from_name(), from_frame=12, author="ana", count=20)
    report.frames        # what was saved, frame by frame (version, prompts, predicted IoU)
    report.stop_reason   # why it stopped, naming the frame
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from typing import Callable, Dict, Iterable, List, Optional, Sequence, Tuple

import numpy as np

from ..store import database as store_module
from .prelabel import _canonical, grown_box
from .prompt import FramePrompter
from ..store.database import AnnotationStore, FrameRecord

log = logging.getLogger(__name__)

ORIGIN = "propagated"
#: The box of the previous frame's structure, grown by this share of its size on each side (the structure moves).
GROW = 0.10
#: Stop where the predicted IoU of a structure falls below this. 0.6, not 0.8: the tuned LiteMedSAM predicts less than
#: 0.8 on frames it carries well, so 0.8 stopped every moving test sequence at its first frame; 0.6 halved the
#: corrections (benchmarks/annotation/propagate.md, a sweep on those sequences: chosen on what it is reported on). It
#: guards little against a jump to another scene (most of usgra-seg's unrelated next frames pass it); the frame-size
#: check and the review of each draft do.
MIN_IOU = 0.60
#: A structure whose mask shrinks below this share of its previous area has left the view.
MIN_KEEP = 0.25
#: Regions smaller than this (pixels) are not carried.
MIN_AREA = 50
#: Where the prompts go when the store keeps prompts only for "prompt" versions: after this in the comment.
PROMPTS_MARK = "; prompts: "


class PropagationError(ValueError):
    """Propagation cannot start (no accepted mask on the frame, a target frame outside the recording, a class the
    mask does not have); the message names the frame or the value."""


@dataclass
class PropagatedFrame:
    frame_id: int
    index: int
    version_id: int
    structures: List[dict]  # class, label, box, points, predicted_iou, area

    @property
    def min_iou(self) -> Optional[float]:
        values = [s["predicted_iou"] for s in self.structures if s["predicted_iou"] is not None]
        return min(values) if values else None


@dataclass
class PropagationReport:
    from_frame: int
    from_version: int
    model_name: str
    frames: List[PropagatedFrame] = field(default_factory=list)
    stopped_at: Optional[int] = None  # the frame where it stopped (None: it reached the end asked for)
    stop_reason: str = ""

    def summary(self) -> str:
        carried = f"carried frame {self.from_frame}'s mask to {len(self.frames)} frame(s)"
        if self.frames:
            carried += f" ({self.frames[0].frame_id}..{self.frames[-1].frame_id})"
        return f"{carried}; {self.stop_reason}" if self.stop_reason else carried


def interior_points(region: np.ndarray, count: int = 1) -> List[Tuple[float, float, bool]]:
    """``count`` include clicks at the most interior points of a bool region (the first at the maximum of its
    distance to the border; further ones at the maxima left after blanking a disc around each one chosen)."""
    import cv2

    distance = cv2.distanceTransform(np.pad(region, 1).astype(np.uint8), cv2.DIST_L2, 5)[1:-1, 1:-1]
    out = []
    yy, xx = np.ogrid[:region.shape[0], :region.shape[1]]
    for _ in range(max(0, int(count))):
        if distance.max() <= 0:
            break
        y, x = np.unravel_index(int(np.argmax(distance)), distance.shape)
        out.append((float(x), float(y), True))
        radius = max(2.0, float(distance[y, x]))
        distance = np.where((yy - y) ** 2 + (xx - x) ** 2 <= radius ** 2, 0, distance)
    return out


def largest_component(mask: np.ndarray) -> np.ndarray:
    import cv2

    count, components, stats, _ = cv2.connectedComponentsWithStats(mask.astype(np.uint8), connectivity=8)
    if count <= 2:
        return mask.astype(bool)
    return components == 1 + int(np.argmax(stats[1:, cv2.CC_STAT_AREA]))


def structures_of(mask: np.ndarray, labels: Iterable[int], min_area: int = MIN_AREA) -> List[Tuple[int, np.ndarray]]:
    """(label, region) for every connected region (>= ``min_area`` px) of ``labels`` in a labelmap."""
    import cv2

    out = []
    for label in labels:
        count, components, stats, _ = cv2.connectedComponentsWithStats((mask == label).astype(np.uint8),
                                                                       connectivity=8)
        for index in range(1, count):
            if stats[index, cv2.CC_STAT_AREA] >= min_area:
                out.append((int(label), components == index))
    return out


def next_frames(store: AnnotationStore, record: FrameRecord) -> List[FrameRecord]:
    """The frames of ``record``'s recording (same source) after it, in index order."""
    return sorted((f for f in store.frames() if f.source == record.source and f.index > record.index),
                  key=lambda f: f.index)


def carry(previous: Sequence[Tuple[int, np.ndarray]], predict: Callable, grow: float = GROW, points: int = 1,
          min_iou: float = MIN_IOU, min_keep: float = MIN_KEEP) -> Tuple[List[Tuple[int, np.ndarray, dict]], str]:
    """One step: each previous (label, region) prompts ``predict(box, points) -> (mask, iou)`` on the next frame.
    Returns ([(label, new region, prompt record)], "") or ([], why it stops)."""
    out = []
    for label, region in previous:
        box = grown_box(region, grow)
        clicks = interior_points(region, points)
        mask, iou = predict(box, clicks)
        record = {"label": int(label), "box": [round(float(v), 2) for v in box],
                  "points": [[x, y, include] for x, y, include in clicks],
                  "predicted_iou": None if iou is None else round(float(iou), 4)}
        mask = np.asarray(mask, dtype=bool)
        if mask.any():
            mask = largest_component(mask)
        area, before = int(mask.sum()), int(region.sum())
        if area < max(1.0, min_keep * before):
            return [], f"the structure leaves the view ({area} px, was {before})"
        if iou is not None and iou < min_iou:
            return [], f"predicted IoU {iou:.2f} < {min_iou:g}"
        record["area"] = area
        out.append((label, mask, record))
    return out, ""


def propagate(store: AnnotationStore, model, from_frame: int, author: str, to_frame: Optional[int] = None,
              count: Optional[int] = None, class_keys: Optional[Sequence[str]] = None, min_iou: float = MIN_IOU,
              grow: float = GROW, points: int = 1, min_keep: float = MIN_KEEP, min_area: int = MIN_AREA,
              prompter: Optional[FramePrompter] = None,
              progress: Optional[Callable[[int, int], None]] = None) -> PropagationReport:
    """Carry ``from_frame``'s accepted mask forward (see the module docstring); returns what was saved and why it
    stopped. ``to_frame``: the last frame to reach (same recording, later index); ``count``: at most this many
    frames; neither: to the end of the recording. ``class_keys``: the classes to carry (default: every class of
    the mask the promptable model segments). Raises PropagationError (nothing saved) for a frame without an
    accepted mask, a ``to_frame`` outside the recording, a class the mask lacks; KeyError for an unknown frame."""
    record = store.frame(from_frame)
    current = store.current(record.id)
    if current is None or current.status != "accepted":
        state = "no mask at all" if current is None else f"its current version {current.id} is {current.status}"
        raise PropagationError(f"frame {record.id} has no accepted mask to propagate ({state}); accept its mask "
                               f"first, or start from an accepted frame")
    if count is not None and int(count) < 1:
        raise PropagationError(f"--count must be at least 1, got {count}")
    if not 0.0 <= float(min_iou) <= 1.0:
        raise PropagationError(f"the predicted-IoU threshold must be 0..1, got {min_iou}")
    ahead = next_frames(store, record)
    if to_frame is not None:
        ids = [f.id for f in ahead]
        if int(to_frame) not in ids:
            target = store.frame(int(to_frame))  # KeyError for an unknown frame
            raise PropagationError(f"frame {target.id} ({target.source}[{target.index}]) is not after frame "
                                   f"{record.id} ({record.source}[{record.index}]) in the same recording")
        ahead = ahead[:ids.index(int(to_frame)) + 1]
    if count is not None:
        ahead = ahead[:int(count)]
    known = {_canonical(k) for k in model.card.labels.values()}
    classes = dict(current.classes)
    if class_keys:
        wanted = {_canonical(k) for k in class_keys}
        missing = wanted - {_canonical(k) for k in classes.values()}
        if missing:
            raise PropagationError(f"frame {record.id}'s mask has no class {', '.join(sorted(missing))} (it has "
                                   f"{', '.join(classes.values()) or 'none'})")
    else:
        wanted = known
    labels = [label for label, key in sorted(classes.items()) if _canonical(key) in wanted]
    previous = structures_of(current.mask, labels, min_area)
    report = PropagationReport(record.id, current.id, model.card.name)
    if not previous:
        report.stop_reason = (f"frame {record.id}'s accepted mask has no structure of "
                              f"{', '.join(sorted(wanted))} to carry")
        return report
    prompter = prompter or FramePrompter(store, model)
    keep_prompts = ORIGIN in getattr(store_module, "PROMPTED_ORIGINS", ("prompt",))
    previous_shape = current.mask.shape[:2]
    for number, frame in enumerate(ahead, start=1):
        head = store.current(frame.id)
        if head is not None and head.status == "accepted":
            report.stopped_at, report.stop_reason = frame.id, (f"stopped at frame {frame.id}: it has an accepted "
                                                               f"mask (version {head.id}); propagate from there")
            break
        if (frame.height, frame.width) != tuple(previous_shape):  # another scan: boxes would land at wrong pixels
            report.stopped_at, report.stop_reason = frame.id, (
                f"stopped at frame {frame.id}: it is {frame.width}x{frame.height} pixels, the frame before it "
                f"{previous_shape[1]}x{previous_shape[0]} (another scan or scanner setting); accept a mask there "
                f"and propagate from it")
            break
        embedding = prompter.embedding(frame.id)
        shape = (frame.height, frame.width)

        def predict(box, clicks, embedding=embedding, shape=shape):
            return model.predict(embedding, shape, box=box, points=clicks)

        carried, why = carry(previous, predict, grow, points, min_iou, min_keep)
        if not carried:
            report.stopped_at, report.stop_reason = frame.id, f"stopped at frame {frame.id}: {why}"
            break
        mask = np.zeros(shape, dtype=np.uint8)
        for label, region, _ in carried:
            mask[region & (mask == 0)] = label
        structures = [{"class": classes[label], **prompt} for label, _, prompt in carried]
        prompts = {"model": model.card.name, "model_sha256": model.model_sha256,
                   "click_mode": getattr(model, "click_mode", "box"), "from_frame": record.id,
                   "from_version": current.id, "previous_frame": (report.frames[-1].frame_id if report.frames
                                                                  else record.id), "structures": structures}
        used = {label: classes[label] for label in {label for label, _, _ in carried}}
        comment = f"propagated from frame {record.id} (version {current.id}) by {model.card.name}"
        if keep_prompts:
            version = store.save_mask(frame.id, mask, used, author, ORIGIN, None if head is None else head.id,
                                      comment=comment, model_name=model.card.name,
                                      model_sha256=model.model_sha256, prompts=prompts)
        else:  # the store keeps prompts only for "prompt" versions: they go into the comment, as JSON
            version = store.save_mask(frame.id, mask, used, author, ORIGIN, None if head is None else head.id,
                                      comment=comment + PROMPTS_MARK + json.dumps(prompts, sort_keys=True),
                                      model_name=model.card.name, model_sha256=model.model_sha256)
        report.frames.append(PropagatedFrame(frame.id, frame.index, version.id, structures))
        previous = [(label, region) for label, region, _ in carried]
        if progress is not None:
            progress(number, len(ahead))
    else:
        if not ahead:
            report.stop_reason = f"frame {record.id} is the last frame of its recording ({record.source})"
        else:
            end = "the end of the recording" if ahead[-1].id == next_frames(store, record)[-1].id else "as asked"
            report.stop_reason = f"reached frame {ahead[-1].id} ({end})"
    return report


def propagation_prompts(store: AnnotationStore, version) -> Optional[Dict]:
    """The prompts a ``propagated`` version was made from (from the store's prompt table, or from its comment
    where the store keeps prompts only for "prompt" versions); None for other versions."""
    if getattr(version, "origin", None) != ORIGIN:
        return None
    kept = store.prompts(version.id)
    if kept is not None:
        return kept
    comment = version.comment or ""
    if PROMPTS_MARK not in comment:
        return None
    return json.loads(comment.split(PROMPTS_MARK, 1)[1])
