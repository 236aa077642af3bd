"""A steady overlay: temporal consistency of the live segmentation, without lag.

The segmenter answers each frame on its own, so on a live probe a structure near the model's decision boundary
comes and goes from frame to frame and its outline jitters. :class:`SteadyOverlay` sits after the model, one per
stream, and turns each :class:`~NerveSegLogic.frame.SegmentationResult` into a steadier one *for the same frame*.
What it does, in order:

1. **Motion and cuts.** Each frame is shrunk to a 64 x 64 grey copy (about 0.05 ms) and compared with the previous
   one by ``cv2.phaseCorrelate`` (about 0.03 ms): the global shift between them (0.1 px of the copy, ~0.3 model
   pixels, on the benchmark's noisy frames) and the correlation peak (``response``: 0.8-1 for the same view moved,
   about 0.1-0.2 for two unrelated views, at most ~0.5 for two neighbouring usgra-seg frames of one scan). The
   stream **starts again** (the frame's own answer is used, bit for bit the segmenter's labelmap, and the hysteresis
   below restarts from it) on: a new frame size, placement or region; a peak below
   :attr:`SteadyOptions.reset_response` (a cut to another view); a shift beyond :attr:`SteadyOptions.reset_shift`
   of the frame; the mean grey changing by more than :attr:`SteadyOptions.reset_brightness` (probe lifted).
2. **A short moving average of the class probabilities**, at the model's resolution (``K x h x w``, e.g.
   3 x 192 x 192), exponential: ``average = w * newest + (1 - w) * previous average`` with the newest frame's
   weight ``w`` = :attr:`SteadyOptions.newest_weight`. Before blending, the previous average is **moved by the
   estimated shift** (whole model pixels; sub-pixel warping measured no better), so the mask follows the anatomy
   instead of trailing it (benchmarks/accuracy/steady_overlay.md measures what motion compensation is worth). Where the motion uncovers a strip, the newest frame alone is used.
3. **Sticky labels** (hysteresis of each pixel's class): the average is pulled towards last frame's labels (moved
   with the motion), ``(p + s * pull) / (1 + s * sum(pull))`` with ``pull`` each class's share of the 3 x 3 model
   pixels around (:func:`sticky_labels`; ``s`` = :attr:`SteadyOptions.stickiness`): inside a structure a pixel
   keeps its class unless another beats it by more than ``s``, so outlines stop jittering from frame to frame; at
   an outline the pull is shared by both sides, so a scene that does not change keeps its outline (within about a
   frame pixel of the frame's own labelmap after 10 identical frames; benchmarks/accuracy/steady_overlay.md).
4. **The labelmap** is rebuilt from these steadied probabilities with the segmenter's own postprocessing
   (``Segmenter.semantic``: bilinear or fast contours, small regions dropped), unless they are the frame's own.
5. **Presence with hysteresis**, per class. Each frame gives the class a per-frame *level* (``hidden`` 0,
   ``uncertain`` 1, ``shown`` 2): with thresholds in the card (:mod:`.presence`), the plain gating of its calibrated
   presence (``>= show``: shown; ``>= uncertain``: uncertain; below: hidden), the presence being the frame's own
   (from the model's probabilities for this frame, as the calibration was fitted). The displayed level follows it,
   but a *rise* needs ``appear_frames`` consecutive frames at or above the new level (so a hidden class is shown
   only after ``appear_frames`` consecutive frames whose presence passes ``show``; meanwhile it is hidden, or
   outlined once it has held the band that long), and a *fall* needs ``disappear_frames`` consecutive frames below
   the displayed level (so a shown class disappears only after ``disappear_frames`` consecutive frames below
   ``uncertain``, drawn as ``uncertain`` in between; a dip into the band alone leaves it shown until it has lasted
   ``disappear_frames`` frames). With ``appear_frames = disappear_frames = 1`` the displayed state is the per-frame
   gating, frame by frame (:class:`Hysteresis`).

   **A card without thresholds** (no ``presence`` block, or a class without ``thresholds``) draws every class the
   argmax finds, as before. Running the hysteresis on the raw score with :data:`~.presence.DEFAULT_SHOW` /
   :data:`~.presence.DEFAULT_UNCERTAIN` would *not* keep that behaviour for a single frame: a class the argmax draws
   can have a highest probability below 0.5 (down to 1/3 with three classes), and it would be outlined as
   uncertain; with six classes one below 0.2 would be hidden. So for such a class the per-frame level is what the
   live view shows today: ``shown`` when the (steadied) labelmap holds the class, ``hidden`` when it does not; there
   is no uncertain band, and a single frame (or ``off()``) gives exactly today's labelmap with every drawn class
   ``shown``.
6. A class whose displayed state is ``hidden`` is removed from the labelmap. A class drawn in the last frame that
   this frame's labelmap no longer holds, and that the hysteresis does not hide, is **held** for up to
   ``disappear_frames - 1`` frames in a row: drawn where its steadied probability is at least
   :data:`HOLD_FRACTION` of its highest (where it is, given that it is there), while that highest is at least
   :data:`HOLD_MIN_PEAK`. No old mask is replayed: the held pixels come from this frame's probabilities.

What it never does: hold a frame back, add a frame of delay, or run the model. ``apply(result)`` returns at once
with a result for ``result``'s own frame (the same :class:`~NerveSegLogic.frame.Frame` object and stage stamps);
the newest frame is always in what is drawn, with the largest single weight of any frame.

``SteadyOptions.off()`` is per-frame gating only: no averaging, no motion estimation, no sticky labels, no
hysteresis; the labelmap is the segmenter's own (the same array) unless the card's thresholds hide a class.

The returned result's ``presence`` ({class key: calibrated presence of this frame, from its own probabilities}) and
``states`` ({class key: ``shown`` / ``uncertain`` / ``hidden``}) are set (fields of SegmentationResult). Its
``probabilities`` are the steadied ones the labelmap was made from.

Where it runs: inside the segmenter (``Segmenter.segment(image, frame, steady=...)``: :meth:`SteadyOverlay.average`
before the postprocessing, :meth:`SteadyOverlay.gate` after it, so the labelmap is made once), one filter per
stream, owned by the inference engine (``InferenceEngine.set_steady``) of the in-process run, the worker process,
``nerveseg demo`` and ``nerveseg serve``; on by default there (``SteadyOptions.off()`` when switched off, which
still gives every result its ``presence`` and ``states``). ``predict``, ``evaluate`` and pre-labelling do not use it.

Not thread-safe: one filter per stream, called from the thread that produces that stream's results (the inference
worker). Measured in ``benchmarks/accuracy/steady_overlay.md``.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np

from ..imaging import placement as pp
from .presence import PresenceModel, frame_scores
from .segmenter import Segmenter, smooth_labelmap_and_box

STATES = ("hidden", "uncertain", "shown")  # index = level
LEVEL = {name: level for level, name in enumerate(STATES)}

#: A held class (see the module docstring, step 6) is drawn where its steadied probability is at least this fraction
#: of its highest in the frame ...
HOLD_FRACTION = 0.5
#: ... while that highest is at least this; below, there is nothing left to hold.
HOLD_MIN_PEAK = 0.25

#: Side of the small grey copy of each frame used to estimate motion and to notice a new view (pixels).
MOTION_SIDE = 64


@dataclass(frozen=True)
class SteadyOptions:
    """How steady the overlay is. The defaults are the live path's, tuned on benchmarks/accuracy/steady_overlay.md.

    newest_weight: the newest frame's weight in the exponential moving average of the class probabilities, in
        [0.2, 1]; 1 turns averaging off. 1/3: the newest frame weighs 0.33, the one before 0.22, then 0.15, ...
        (the newest always weighs most; the average's mean age is (1 - w) / w = 2 frames, which motion
        compensation keeps from becoming a positional lag).
    stickiness: inside a structure, a pixel keeps last frame's class unless another class's averaged probability
        beats it by more than this (0: no sticky labels).
    appear_frames: consecutive frames a class needs at a higher per-frame level before it is displayed at it
        (hidden -> uncertain -> shown); 1 = at once.
    disappear_frames: consecutive frames a class needs below its displayed level before it drops (shown ->
        uncertain -> hidden); meanwhile a class whose frames say hidden is drawn as uncertain (and held, see the
        module docstring, step 6); 1 = at once.
    motion: move the previous average (and labels) by the global shift between the frames before blending.
    reset_response: a phase-correlation peak below this means another view: the stream starts again.
    reset_shift: a shift larger than this fraction of the frame's width (or height) starts again.
    reset_brightness: a mean grey that changes by more than this fraction (probe lifted, gain jump) starts again.
    """

    newest_weight: float = 1 / 3
    stickiness: float = 0.3
    appear_frames: int = 2
    disappear_frames: int = 5
    motion: bool = True
    reset_response: float = 0.5
    reset_shift: float = 0.25
    reset_brightness: float = 0.4

    def __post_init__(self):
        if not (isinstance(self.newest_weight, (int, float)) and 0.2 <= self.newest_weight <= 1.0):
            raise ValueError(f"SteadyOptions.newest_weight must be in [0.2, 1] (1: no averaging), "
                             f"got {self.newest_weight!r}")
        for name in ("appear_frames", "disappear_frames"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"SteadyOptions.{name} must be a whole number >= 1, got {value!r}")
        for name in ("stickiness", "reset_response", "reset_shift", "reset_brightness"):
            value = getattr(self, name)
            if isinstance(value, bool) or not (isinstance(value, (int, float)) and math.isfinite(value)
                                               and value >= 0):
                raise ValueError(f"SteadyOptions.{name} must be a finite number >= 0, got {value!r}")

    @classmethod
    def off(cls) -> "SteadyOptions":
        """Per-frame gating only: no averaging, no motion estimation, no sticky labels, no hysteresis."""
        return cls(newest_weight=1.0, stickiness=0.0, appear_frames=1, disappear_frames=1, motion=False)

    @property
    def smoothing(self) -> bool:
        """Whether the probabilities are steadied (moving average or sticky labels): motion is estimated then."""
        return self.newest_weight < 1.0 or self.stickiness > 0.0

    @property
    def is_off(self) -> bool:
        return not self.smoothing and self.appear_frames == 1 and self.disappear_frames == 1


# ------------------------------------------------------------------------------------------------- hysteresis
class Hysteresis:
    """One class's displayed level from its per-frame levels (0 hidden, 1 uncertain, 2 shown).

    A rise to a level needs ``appear_frames`` consecutive frames at or above it; a fall needs ``disappear_frames``
    consecutive frames below the displayed level (to uncertain when those frames were all at most uncertain, to
    hidden when all were hidden). The displayed state is ``hidden`` at level 0, ``shown`` at level 2 in a frame
    whose own level is 2, else ``uncertain`` (a class waiting to rise, or to fall, is outlined). The first frame
    (and the first after :meth:`reset`) is displayed as it is.
    """

    def __init__(self, appear_frames: int = 1, disappear_frames: int = 1):
        self.appear_frames = int(appear_frames)
        self.disappear_frames = int(disappear_frames)
        self.reset()

    def reset(self) -> None:
        self.level: Optional[int] = None
        # consecutive frames, ending with the last one, whose own level was: >= 1, == 2, == 0, <= 1
        self._at_least_1 = self._at_2 = self._at_0 = self._at_most_1 = 0

    def update(self, level: int) -> str:
        """The displayed state for a frame whose own level is ``level`` (0, 1 or 2)."""
        if level not in (0, 1, 2):
            raise ValueError(f"a per-frame level is 0 (hidden), 1 (uncertain) or 2 (shown), got {level!r}")
        self._at_least_1 = self._at_least_1 + 1 if level >= 1 else 0
        self._at_2 = self._at_2 + 1 if level == 2 else 0
        self._at_0 = self._at_0 + 1 if level == 0 else 0
        self._at_most_1 = self._at_most_1 + 1 if level <= 1 else 0
        shown = self.level
        if shown is None:
            shown = level
        elif shown < 2 and self._at_2 >= self.appear_frames:
            shown = 2
        elif shown < 1 and self._at_least_1 >= self.appear_frames:
            shown = 1
        elif shown > 0 and self._at_0 >= self.disappear_frames:
            shown = 0
        elif shown > 1 and self._at_most_1 >= self.disappear_frames:
            shown = 1
        self.level = shown
        if shown == 0:
            return "hidden"
        return "shown" if shown == 2 and level >= 1 else "uncertain"


# ------------------------------------------------------------------------------------------------- motion
def small_grey(image: np.ndarray, side: int = MOTION_SIDE) -> np.ndarray:
    """A ``side`` x ``side`` float32 copy of a grey frame, each pixel a local mean (per-frame speckle averages
    out): bilinear to twice the side, then 2 x 2 means. (OpenCV's area resampling is fast only by whole factors:
    straight to 64 x 64 it takes about 1 ms for a 512 x 534 frame, this about 0.05 ms.)"""
    import cv2

    if image.ndim == 3:
        image = pp.to_grey(image)
    if image.dtype not in (np.uint8, np.uint16, np.float32):
        image = image.astype(np.float32)
    double = cv2.resize(image, (2 * side, 2 * side), interpolation=cv2.INTER_LINEAR)
    return cv2.resize(double, (side, side), interpolation=cv2.INTER_AREA).astype(np.float32, copy=False)


_WINDOWS: Dict[Tuple[int, int], np.ndarray] = {}


def estimate_shift(previous: np.ndarray, current: np.ndarray) -> Tuple[float, float, float]:
    """(dx, dy, response): how far the content of ``current`` lies from where it was in ``previous`` (pixels of
    these small images; +x right, +y down) and the phase correlation's peak (1: the same picture moved; about
    0.1-0.2 for unrelated pictures)."""
    import cv2

    shape = tuple(current.shape)
    window = _WINDOWS.get(shape)
    if window is None:
        window = _WINDOWS[shape] = cv2.createHanningWindow((shape[1], shape[0]), cv2.CV_32F)
    (dx, dy), response = cv2.phaseCorrelate(previous, current, window)
    return float(dx), float(dy), float(response)


def _overlap(dx: int, dy: int, height: int, width: int):
    """(rows, columns) of a ``height`` x ``width`` area that receive content moved by (dx, dy), and (rows, columns)
    it comes from; None when nothing overlaps."""
    if abs(dx) >= width or abs(dy) >= height:
        return None
    y0, y1 = max(0, dy), height + min(0, dy)
    x0, x1 = max(0, dx), width + min(0, dx)
    return (slice(y0, y1), slice(x0, x1)), (slice(y0 - dy, y1 - dy), slice(x0 - dx, x1 - dx))


def shift_blend(previous: np.ndarray, current: np.ndarray, weight: float, dx: int, dy: int,
                height: int, width: int) -> np.ndarray:
    """A new ``(K, h, w)`` array: ``weight * current + (1 - weight) * previous`` where ``previous`` is moved by
    (dx, dy) whole pixels inside its top-left ``height`` x ``width`` part (the frame's part of the model input);
    where nothing of ``previous`` lands (the strip the motion uncovers, and the padding outside the frame's part)
    it is ``current`` alone."""
    out = current.copy()
    overlap = _overlap(int(dx), int(dy), int(height), int(width))
    if overlap is None:
        return out
    (rows, cols), (src_rows, src_cols) = overlap
    target = out[:, rows, cols]
    target *= np.float32(weight)
    target += np.float32(1.0 - weight) * previous[:, src_rows, src_cols]
    return out


def shift_labels(labels: np.ndarray, dx: int, dy: int, height: int, width: int) -> np.ndarray:
    """``labels`` (h, w) uint8 moved by (dx, dy) inside the top-left ``height`` x ``width`` part; 255 (no label)
    where nothing lands."""
    out = np.full(labels.shape, 255, dtype=np.uint8)
    overlap = _overlap(int(dx), int(dy), int(height), int(width))
    if overlap is not None:
        (rows, cols), (src_rows, src_cols) = overlap
        out[rows, cols] = labels[src_rows, src_cols]
    return out


def sticky_labels(probabilities: np.ndarray, labels: np.ndarray, stickiness: float
                  ) -> Tuple[np.ndarray, np.ndarray]:
    """(probabilities pulled towards last frame's ``labels``, their argmax): per class k,
    ``(p_k + s * pull_k) / (1 + s * sum_j pull_j)`` where ``pull_k`` is the share of class k among the 3 x 3 model
    pixels around (``labels`` == k, box-filtered; 255 = no label, no pull). Inside a region a pixel keeps its last
    class unless another beats it by more than ``s``; at an outline the pull is shared between the classes on each
    side, so the outline stays where it was (a pull on single pixels would leave model-pixel stairs in it). The
    result is still a distribution per pixel; a new array."""
    import cv2

    s = float(stickiness)
    total = np.ones(labels.shape, dtype=np.float32)
    pulls = []
    for k in range(probabilities.shape[0]):
        pull = cv2.blur(cv2.compare(labels, k, cv2.CMP_EQ), (3, 3)).astype(np.float32)
        pull *= np.float32(s / 255.0)
        total += pull
        pulls.append(pull)
    out = np.empty_like(probabilities, dtype=np.float32)
    for k, pull in enumerate(pulls):
        cv2.add(probabilities[k], pull, dst=out[k])
        cv2.divide(out[k], total, dst=out[k])
    return out, argmax_labels(out)


def argmax_labels(probabilities: np.ndarray, with_best: bool = False):
    """(h, w) uint8 argmax over the class axis of ``(K, h, w)`` maps (the first class on ties, as numpy's); with
    ``with_best``, also the (h, w) maximum."""
    import cv2

    labels = np.zeros(probabilities.shape[1:], dtype=np.uint8)
    best = probabilities[0].copy()
    for k in range(1, probabilities.shape[0]):
        better = cv2.compare(probabilities[k], best, cv2.CMP_GT)
        cv2.copyTo(np.full(labels.shape, k, np.uint8), better, labels)
        cv2.max(best, probabilities[k], dst=best)
    return (labels, best) if with_best else labels


def _clear(labels: np.ndarray, values: Sequence[int]) -> None:
    """Set ``values`` in the uint8 array ``labels`` to 0, in place."""
    import cv2

    for value in values:
        cv2.subtract(labels, labels, dst=labels, mask=cv2.compare(labels, int(value), cv2.CMP_EQ))


# ------------------------------------------------------------------------------------------------- the filter
@dataclass
class _Memory:
    """What the filter remembers of the previous frame."""

    average: np.ndarray  # (K, h, w) float32 moving average (never modified once stored)
    labels: np.ndarray  # (h, w) uint8 argmax of what was drawn from, at the model's resolution
    small: np.ndarray  # small grey copy of the frame (or region), for motion and cuts
    brightness: float
    placement: object
    region: object
    frame_shape: Tuple[int, int]


class SteadyOverlay:
    """A per-stream steadying filter for one model's results (see the module docstring).

    card: the model's ModelCard (classes, and its ``presence`` block if any).
    options: :class:`SteadyOptions` (default: the live path's defaults); ``SteadyOptions.off()`` for per-frame
        gating only.
    min_component_area, contours: the segmenter's postprocessing (:meth:`for_segmenter` copies them), used when
        the labelmap is rebuilt from the steadied probabilities.

    ``apply(result)`` -> a new result for the same frame; ``reset()`` forgets the stream (call it when the stream,
    the model or the options change). The same work in two steps, for a segmenter that builds its labelmap only
    once, from the steadied probabilities: :meth:`average` before its postprocessing, :meth:`gate` after it.

    ``resets`` counts the times the stream started again on a large image change; ``last_shift`` is the last
    motion estimate (model pixels, +x right, +y down) and ``last_response`` its phase-correlation peak.
    """

    def __init__(self, card, options: Optional[SteadyOptions] = None,
                 min_component_area: int = pp.MIN_COMPONENT_AREA_PX, contours: str = "smooth"):
        self.card = card
        self.options = options if options is not None else SteadyOptions()
        self.classes = tuple(card.classes)
        self.presence_model = PresenceModel.from_card(card)
        self.min_component_area = int(min_component_area)
        # the segmenter's own postprocessing, run on the steadied probabilities (Segmenter.semantic reads these)
        self._postprocess = SimpleNamespace(contours=contours, min_component_area=self.min_component_area,
                                            classes=self.classes)
        self.resets = 0
        self.last_shift: Tuple[float, float] = (0.0, 0.0)
        self.last_response: float = math.nan
        self.reset()

    @classmethod
    def for_segmenter(cls, segmenter, options: Optional[SteadyOptions] = None) -> "SteadyOverlay":
        """A filter for ``segmenter``'s results, with its card and postprocessing settings."""
        return cls(segmenter.card, options, min_component_area=segmenter.min_component_area,
                   contours=segmenter.contours)

    def reset(self) -> None:
        """Forget the stream: the next result is used as it is."""
        self._memory: Optional[_Memory] = None
        self._restart = False
        self._hysteresis = {cls.key: Hysteresis(self.options.appear_frames, self.options.disappear_frames)
                            for cls in self.classes}
        self._forget_drawn()

    def _forget_drawn(self) -> None:
        self._drawn = {cls.key: False for cls in self.classes}  # the class had pixels in the last labelmap
        self._held = {cls.key: 0 for cls in self.classes}  # frames in a row it has been held

    # ------------------------------------------------------------------------------------------- one frame
    def apply(self, result):
        """A new result for ``result``'s frame: the steadied labelmap and ``probabilities``, plus ``presence`` and
        ``states``. ``result`` itself is not modified; its labelmap is reused (not rebuilt) whenever the steadied
        probabilities are the frame's own (first frame, after a start-again, ``off()``)."""
        raw = result.probabilities
        region = getattr(result, "region", None)
        steadied = self.average(raw, result.placement, result.frame.image, region)
        labelmap = result.labelmap
        if steadied is not raw:
            labelmap = self.labelmap(steadied, result.placement, region, labelmap.shape)
        return self.gate(result, raw_probabilities=raw, labelmap=labelmap, probabilities=steadied)

    def average(self, probabilities: Optional[np.ndarray], placement, image: np.ndarray, region=None
                ) -> Optional[np.ndarray]:
        """The probabilities to draw this frame from (steps 1-3 of the module docstring): ``probabilities`` (the
        model's, ``(K, h, w)`` at its input size) blended into the motion-compensated average of the stream and
        pulled towards last frame's labels; ``probabilities`` itself (the same object) when there is nothing to
        blend with (first frame, smoothing off, no probabilities) or the image changed too much (then the stream
        starts again, the hysteresis too at the next :meth:`gate`). ``image``: the frame (its own size);
        ``region``: the region the model saw, or None."""
        options = self.options
        if not options.smoothing or probabilities is None or placement is None:
            self._memory = None
            return probabilities
        frame_shape = tuple(int(v) for v in image.shape[:2])
        small = small_grey(image if region is None else region.crop(image))
        brightness = float(small.mean())
        memory = self._memory
        start_again = (memory is None or memory.placement != placement or memory.region != region
                       or memory.frame_shape != frame_shape or memory.average.shape != probabilities.shape)
        dx = dy = 0
        if not start_again:
            if abs(brightness - memory.brightness) > options.reset_brightness * max(memory.brightness, 1.0):
                start_again = True
            else:
                sx, sy, response = estimate_shift(memory.small, small)
                # small-copy pixels -> model pixels: the small copy spans the frame's scaled size
                mx, my = sx * placement.scaled_w / small.shape[1], sy * placement.scaled_h / small.shape[0]
                self.last_shift, self.last_response = (mx, my), response
                if (response < options.reset_response or abs(sx) > options.reset_shift * small.shape[1]
                        or abs(sy) > options.reset_shift * small.shape[0]):
                    start_again = True
                elif options.motion:
                    dx, dy = int(round(mx)), int(round(my))
        if start_again:
            if memory is not None:
                self.resets += 1
                self._restart = True
            averaged = steadied = probabilities
            labels = None
        else:
            averaged = probabilities
            if options.newest_weight < 1.0:
                averaged = shift_blend(memory.average, probabilities, options.newest_weight, dx, dy,
                                       placement.valid_h, placement.valid_w)
            steadied, labels = averaged, None
            if options.stickiness > 0.0:
                last = shift_labels(memory.labels, dx, dy, placement.valid_h, placement.valid_w)
                steadied, labels = sticky_labels(averaged, last, options.stickiness)
        if labels is None:
            labels = argmax_labels(steadied)
        self._memory = _Memory(averaged, labels, small, brightness, placement, region, frame_shape)
        return steadied

    def labelmap(self, probabilities: np.ndarray, placement, region, frame_shape) -> np.ndarray:
        """The frame's labelmap from (steadied) model-size probabilities, made exactly as the segmenter makes it
        (``Segmenter.semantic``: smooth or fast contours, small regions dropped), placed at the region if any."""
        labelmap = Segmenter.semantic(self._postprocess, probabilities, placement)[0]
        if region is not None:
            labelmap = region.place(labelmap, *frame_shape)
        return labelmap

    def gate(self, result, raw_probabilities: Optional[np.ndarray] = None, labelmap: Optional[np.ndarray] = None,
             probabilities: Optional[np.ndarray] = None):
        """Presence, hysteresis, hiding and holding for one frame (steps 5-6): a new result like ``result`` with
        ``labelmap`` and ``probabilities`` (default: the result's own), each class's ``presence`` (calibrated, from
        ``raw_probabilities``, the model's own for this frame; default: the result's probabilities) and display
        ``states``. The labelmap passed in (or the result's) is not modified."""
        raw = result.probabilities if raw_probabilities is None else raw_probabilities
        steadied = result.probabilities if probabilities is None else probabilities
        labelmap = result.labelmap if labelmap is None else labelmap
        placement = result.placement
        scores = frame_scores(raw, self.classes, placement, result.instances)
        presence = self.presence_model.presence(scores)
        if self._restart:
            self._restart = False
            for hysteresis in self._hysteresis.values():
                hysteresis.reset()
            self._forget_drawn()

        thresholds = self.presence_model.thresholds
        gated = self.presence_model.states(presence)
        present = _labels_present(labelmap, [c.label for c in self.classes])
        states: Dict[str, str] = {}
        hide: List[int] = []
        hold: List = []
        for cls in self.classes:
            if cls.key in thresholds:
                level = LEVEL[gated[cls.key]]
            else:  # no thresholds: drawn when the labelmap holds it, as without this filter
                level = 2 if cls.label in present else 0
            state = self._hysteresis[cls.key].update(level)
            states[cls.key] = state
            if state == "hidden":
                if cls.label in present:
                    hide.append(cls.label)
                self._drawn[cls.key], self._held[cls.key] = False, 0
            elif cls.label in present:
                self._drawn[cls.key], self._held[cls.key] = True, 0
            elif (self._drawn[cls.key] and self._held[cls.key] < self.options.disappear_frames - 1
                  and steadied is not None and placement is not None):
                hold.append(cls)  # drawn in the last frame, gone from this one's labelmap, not hidden
            else:
                self._drawn[cls.key], self._held[cls.key] = False, 0
        out = labelmap
        hidden = [c.label for c in self.classes if states[c.key] == "hidden"]
        if hidden and self._memory is not None:
            _clear(self._memory.labels, hidden)  # a hidden class's pixels do not stick
        if hide:
            out = _without(out, hide, copy=out is labelmap)
        region = getattr(result, "region", None)
        for cls in hold:
            held = self._hold(out, cls.label, steadied, placement, region, copy=out is labelmap)
            self._drawn[cls.key] = held is not out
            self._held[cls.key] = self._held[cls.key] + 1 if self._drawn[cls.key] else 0
            out = held
        changes = {"labelmap": out, "probabilities": steadied}
        if out is not result.labelmap:
            changes["regions"] = None  # the scene finds them itself
        return _with(result, changes, presence=presence, states=states)

    def _hold(self, labelmap: np.ndarray, label: int, probabilities: np.ndarray, placement, region,
              copy: bool) -> np.ndarray:
        """``labelmap`` with a held class drawn where its probability is at least :data:`HOLD_FRACTION` of its
        highest in the frame's part of the model input, on pixels no other class holds, small regions dropped;
        ``labelmap`` itself (the same object) when that draws nothing or the highest is below
        :data:`HOLD_MIN_PEAK`."""
        channel = probabilities[label]
        valid = channel[:placement.valid_h, :placement.valid_w]
        peak = float(valid.max()) if valid.size else 0.0
        if peak < HOLD_MIN_PEAK:
            return labelmap
        # a two-class map whose argmax is "at least HOLD_FRACTION of the peak", resampled as the segmenter does
        pair = np.empty((2,) + channel.shape, dtype=np.float32)
        pair[0] = HOLD_FRACTION * peak
        pair[1] = channel
        mask, box = smooth_labelmap_and_box(pair, placement)
        if box is None:
            return labelmap
        mask = pp.remove_small_components(mask, self.min_component_area, labels=[1], in_place=True, within=box)
        if region is not None:
            mask = region.place(mask, *labelmap.shape)
        paint = (mask == 1) & (labelmap == 0)
        if not paint.any():
            return labelmap
        out = labelmap.copy() if copy else labelmap
        out[paint] = label
        return out


def _labels_present(labelmap: np.ndarray, labels: Sequence[int]) -> set:
    """The labels among ``labels`` that occur in ``labelmap``."""
    if not labels:
        return set()
    if labelmap.dtype == np.uint8:
        import cv2

        return {int(label) for label in labels
                if cv2.countNonZero(cv2.compare(labelmap, int(label), cv2.CMP_EQ))}
    values = set(int(v) for v in np.unique(labelmap))
    return {int(label) for label in labels if int(label) in values}


def _without(labelmap: np.ndarray, labels: Sequence[int], copy: bool) -> np.ndarray:
    """``labelmap`` with ``labels`` set to 0 (a copy when ``copy``; otherwise in place)."""
    out = labelmap.copy() if copy else labelmap
    if out.dtype == np.uint8:
        _clear(out, labels)
    else:
        out[np.isin(out, labels)] = 0
    return out


def _with(result, changes: Mapping, **extra):
    """A result like ``result`` (same class, frame and fields) with ``changes``; ``extra`` as fields where the
    result type has them, else as attributes."""
    names = {field.name for field in dataclasses.fields(result)}
    out = dataclasses.replace(result, **{k: v for k, v in changes.items() if k in names},
                              **{k: v for k, v in extra.items() if k in names})
    for key, value in extra.items():
        if key not in names:
            setattr(out, key, value)
    return out
