"""The image region: the part of a frame that holds the ultrasound image, and how it is found.

Frame-grabber video carries the scanner's screen: text, scales, depth marks and logos around the image. With a
region the model sees only ``frame[y:y + h, x:x + w]`` and its labelmap is put back at those pixels of the full
frame (zeros outside), so every reader downstream (scene, IGTL sender, overlays) still gets a full-frame labelmap.

A region is given (``--region X,Y,W,H``: left, top, width, height in frame pixels; in Slicer a ROI drawn on the
live view, see :func:`region_from_ras_bounds`) or found (``--region auto``):

1. **what changes** (:func:`changing_region`): over about a second of frames the ultrasound changes from frame to
   frame and the screen around it does not. Per pixel, the spread (max - min) of the frames; pixels whose spread
   passes :data:`CHANGE_THRESHOLD` grey levels; a 3x3 opening drops the flicker of compressed text edges, a closing
   joins the speckle; the largest connected area's bounding box is the region.
2. **else what is bright** (:func:`bright_region`), from one frame: the largest connected non-dark area once thin
   strokes (text, scale ticks) are opened away.
3. **else the whole frame**, with the reason logged.

Only a frame's own bright or changing pixels decide it: an image whose bottom rows are black in every frame (an
acoustic shadow reaching the bottom, or an image shorter than its window) ends where its content ends, which changes
nothing for the model (those rows would be black padding either way).

Everything here is numpy + OpenCV (``cv2`` imported when pixels are processed).
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Optional, Sequence, Tuple, Union

import numpy as np

from .placement import to_grey

log = logging.getLogger(__name__)

#: ``--region auto``.
AUTO = "auto"
#: A region narrower or shorter than this (pixels, after clipping to the frame) is refused: no ultrasound image is.
MIN_SIDE_PX = 16
#: Grey levels (of 255) a pixel must vary by over the frames collected to count as changing. Speckle varies by tens
#: of levels between frames; the edges of static text in compressed video flicker by a few.
CHANGE_THRESHOLD = 12
#: A pixel of one frame brighter than this (of 255, after a 5x5 mean) counts as image for :func:`bright_region`.
BRIGHT_THRESHOLD = 12
#: The area found must cover at least this fraction of the frame to be taken as the image.
MIN_AREA_FRACTION = 0.04
#: Auto-detection in the live path: collect frames for this long (s), and at least / at most this many frames.
AUTO_DURATION_S = 1.0
AUTO_MIN_FRAMES = 5
AUTO_MAX_FRAMES = 90

RegionChoice = Union[None, str, "Region"]

#: ``--region``'s help, the same on serve, demo and predict.
REGION_HELP = ("the part of the frame the model sees (frame-grabber video: the scanner's text, scales and logos stay "
               "out): X,Y,W,H in frame pixels (left, top, width, height), or auto: found from the first second of "
               "frames (the part that changes, else the largest bright area, else the whole frame; logged), the "
               "whole frame segmented meanwhile. Results land at the frame's own pixels, zero outside "
               "(default: the whole frame)")


class RegionError(ValueError):
    """A region that cannot be used: bad text, or outside the frame. The message names the value and what was
    expected."""


@dataclass(frozen=True)
class Region:
    """A box of frame pixels: columns ``x .. x + w - 1``, rows ``y .. y + h - 1``."""

    x: int
    y: int
    w: int
    h: int

    def __post_init__(self):
        for name in ("x", "y", "w", "h"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
                raise RegionError(f"region {name.upper()} must be a whole number of pixels, got {value!r}")
            object.__setattr__(self, name, int(value))
        if self.x < 0 or self.y < 0:
            raise RegionError(f"region {self.text()}: X and Y (left, top) must be 0 or more")
        if self.w < MIN_SIDE_PX or self.h < MIN_SIDE_PX:
            raise RegionError(f"region {self.text()}: W and H (width, height) must be at least {MIN_SIDE_PX} pixels")

    @property
    def right(self) -> int:
        return self.x + self.w

    @property
    def bottom(self) -> int:
        return self.y + self.h

    def text(self) -> str:
        """``X,Y,W,H``, as ``--region`` takes it."""
        return f"{self.x},{self.y},{self.w},{self.h}"

    def __str__(self) -> str:
        return self.text()

    def describe(self) -> str:
        return f"x {self.x}, y {self.y}, {self.w} x {self.h} pixels"

    def is_whole(self, height: int, width: int) -> bool:
        return (self.x, self.y, self.w, self.h) == (0, 0, int(width), int(height))

    def fit(self, height: int, width: int) -> "Region":
        """This region clipped to a ``height`` x ``width`` frame (itself when it lies inside). RegionError naming
        the frame size when it lies outside the frame, or keeps less than :data:`MIN_SIDE_PX` on a side."""
        height, width = int(height), int(width)
        if self.right <= width and self.bottom <= height:
            return self
        x1, y1 = min(self.right, width), min(self.bottom, height)
        if x1 - self.x < MIN_SIDE_PX or y1 - self.y < MIN_SIDE_PX:
            raise RegionError(f"region {self.text()} (X,Y,W,H) lies outside the {width} x {height} frame (width x "
                              f"height): X + W must be at most {width} and Y + H at most {height}, with at least "
                              f"{MIN_SIDE_PX} pixels inside on each side")
        return Region(self.x, self.y, x1 - self.x, y1 - self.y)

    def crop(self, image: np.ndarray) -> np.ndarray:
        """The region's pixels of ``image`` (H, W[, C]): a view, no copy."""
        return image[self.y:self.bottom, self.x:self.right]

    def place(self, labelmap: np.ndarray, height: int, width: int) -> np.ndarray:
        """A ``height`` x ``width`` array of zeros with ``labelmap`` (this region's size) at the region."""
        if labelmap.shape[:2] != (self.h, self.w):
            raise ValueError(f"labelmap of shape {labelmap.shape} does not fit region {self.text()} ({self.w} x "
                             f"{self.h} pixels)")
        out = np.zeros((int(height), int(width)) + labelmap.shape[2:], dtype=labelmap.dtype)
        out[self.y:self.bottom, self.x:self.right] = labelmap
        return out

    def place_maps(self, maps: np.ndarray, height: int, width: int, background_channel: bool = True) -> np.ndarray:
        """Per-class maps ``(C, h, w)`` of the region in a ``(C, height, width)`` frame: outside the region the
        background class (channel 0 = 1, the others 0), as for the rows the model never saw; with
        ``background_channel=False`` 0 everywhere outside."""
        if maps.ndim != 3 or maps.shape[1:] != (self.h, self.w):
            raise ValueError(f"maps of shape {maps.shape} do not fit region {self.text()} ((C, {self.h}, {self.w}))")
        out = np.zeros((maps.shape[0], int(height), int(width)), dtype=maps.dtype)
        if background_channel and maps.shape[0]:
            out[0] = 1
        out[:, self.y:self.bottom, self.x:self.right] = maps
        return out


# --------------------------------------------------------------------------------------------------- parsing
def parse_region(text: Optional[str], what: str = "--region") -> RegionChoice:
    """``None`` for an empty value (or ``none``), :data:`AUTO` for ``auto``, else the :class:`Region` of
    ``X,Y,W,H``. RegionError naming the value and what was expected."""
    if text is None:
        return None
    if isinstance(text, Region):
        return text
    raw = str(text)
    value = raw.strip().lower()
    if value in ("", "none"):
        return None
    if value == AUTO:
        return AUTO
    expected = ("expected X,Y,W,H (four whole numbers of frame pixels: left, top, width, height; e.g. 120,80,640,480)"
                " or auto")
    parts = [p.strip() for p in value.replace(" ", "").split(",")]
    if len(parts) != 4:
        raise RegionError(f"{what} {raw!r}: {expected}; got {len(parts)} value(s)")
    numbers = []
    for name, part in zip("XYWH", parts):
        try:
            numbers.append(int(part))
        except ValueError:
            raise RegionError(f"{what} {raw!r}: {name} is {part!r}, not a whole number; {expected}") from None
    try:
        return Region(*numbers)
    except RegionError as error:
        raise RegionError(f"{what} {raw!r}: {error}") from None


def region_argument(text: str) -> RegionChoice:
    """argparse ``type=`` of ``--region``: an ArgumentTypeError with :func:`parse_region`'s message."""
    import argparse

    try:
        return parse_region(text, what="")
    except RegionError as error:
        raise argparse.ArgumentTypeError(str(error).strip()) from None


def region_text(choice: RegionChoice) -> str:
    """The ``--region`` value of a choice ('' for none)."""
    if choice is None:
        return ""
    return AUTO if choice == AUTO else choice.text()


def region_from_ras_bounds(bounds: Sequence[float], ijk_to_ras: np.ndarray, height: int, width: int) -> Region:
    """The frame pixels whose centres lie inside a box of RAS millimetres (a markups ROI's ``GetRASBounds``:
    xmin, xmax, ymin, ymax, zmin, zmax) on a frame of ``height`` x ``width`` pixels whose IJK-to-RAS matrix is
    ``ijk_to_ras`` (4x4; pixel ``image[j, i]`` has IJK (i, j, 0), as in :mod:`NerveSegLogic.frame`), clipped to
    the frame. The box's 8 corners are mapped to IJK, so any orientation of the frame (PLUS's flipped axes) works;
    the k axis (the box's thickness across the slice) is ignored. RegionError when it holds too few pixels."""
    b = [float(v) for v in bounds]
    if len(b) != 6 or not all(math.isfinite(v) for v in b) or b[0] > b[1] or b[2] > b[3] or b[4] > b[5]:
        raise RegionError(f"ROI bounds {bounds!r}: expected xmin, xmax, ymin, ymax, zmin, zmax in mm")
    m = np.asarray(ijk_to_ras, dtype=float)
    if m.shape != (4, 4):
        raise RegionError(f"ijk_to_ras must be 4x4, got shape {m.shape}")
    corners = np.array([[x, y, z, 1.0] for x in b[0:2] for y in b[2:4] for z in b[4:6]])
    ijk = (np.linalg.inv(m) @ corners.T)[:2]
    i0, i1 = ijk[0].min(), ijk[0].max()
    j0, j1 = ijk[1].min(), ijk[1].max()
    eps = 1e-6  # a bound exactly on a pixel centre includes that pixel
    x0, x1 = max(0, math.ceil(i0 - eps)), min(int(width) - 1, math.floor(i1 + eps))
    y0, y1 = max(0, math.ceil(j0 - eps)), min(int(height) - 1, math.floor(j1 + eps))
    if x1 - x0 + 1 < MIN_SIDE_PX or y1 - y0 + 1 < MIN_SIDE_PX:
        raise RegionError(f"the ROI covers pixels i {i0:.1f}..{i1:.1f}, j {j0:.1f}..{j1:.1f} of the {width} x "
                          f"{height} frame: fewer than {MIN_SIDE_PX} pixels inside on a side; draw it over the image")
    return Region(x0, y0, x1 - x0 + 1, y1 - y0 + 1)


# --------------------------------------------------------------------------------------------------- finding
def as_uint8(image: np.ndarray) -> np.ndarray:
    """A grey (H, W) uint8 version of a frame (grey or colour; uint8, uint16 or float as :func:`normalize` reads
    them), for finding the region."""
    image = np.asarray(image)
    if image.dtype == np.uint8 and image.ndim == 3 and image.shape[2] in (3, 4):
        import cv2  # the same weights as to_grey in fixed point, several times faster; only the region depends on it

        return cv2.cvtColor(image, cv2.COLOR_RGB2GRAY if image.shape[2] == 3 else cv2.COLOR_RGBA2GRAY)
    grey = to_grey(image)
    if grey.dtype == np.uint8:
        return grey
    if grey.dtype == np.uint16:
        return (grey >> 8).astype(np.uint8)
    values = grey.astype(np.float32)
    if values.size and float(values.max()) <= 1.5:
        values = values * 255.0
    return np.clip(values, 0, 255).astype(np.uint8)


def _kernel(size: int):
    """A square kernel of an odd side (an even one is anchored off centre, and its closing shifts a pixel)."""
    import cv2

    size = int(size) | 1
    return cv2.getStructuringElement(cv2.MORPH_RECT, (size, size))


def _largest_area(mask: np.ndarray) -> Tuple[Optional[Tuple[int, int, int, int]], int]:
    """((x, y, w, h), area) of the largest 8-connected non-zero area of a uint8 mask; (None, 0) when none."""
    import cv2

    count, _, stats, _ = cv2.connectedComponentsWithStats(mask, connectivity=8)
    if count <= 1:
        return None, 0
    best = 1 + int(np.argmax(stats[1:, cv2.CC_STAT_AREA]))
    x, y, w, h, area = (int(v) for v in stats[best])
    return (x, y, w, h), area


def _accept(box, area: int, height: int, width: int, what: str) -> Tuple[Optional[Region], str]:
    if box is None:
        return None, f"no {what} area"
    if area < MIN_AREA_FRACTION * height * width or box[2] < MIN_SIDE_PX or box[3] < MIN_SIDE_PX:
        return None, (f"the largest {what} area ({area} pixels, {box[2]} x {box[3]}) is under "
                      f"{MIN_AREA_FRACTION:.0%} of the {width} x {height} frame")
    return Region(*box), f"the largest {what} area ({area} pixels)"


def changing_region(low: np.ndarray, high: np.ndarray, threshold: int = CHANGE_THRESHOLD
                    ) -> Tuple[Optional[Region], str]:
    """(region, why) from the per-pixel minimum and maximum (uint8, H x W) of several frames: the bounding box of
    the largest area whose pixels varied by more than ``threshold`` grey levels (see the module's docstring);
    (None, why not) when no area is clear."""
    import cv2

    height, width = low.shape
    spread = cv2.subtract(high, low)
    _, mask = cv2.threshold(spread, threshold, 255, cv2.THRESH_BINARY)
    mask = cv2.morphologyEx(mask, cv2.MORPH_OPEN, _kernel(3))
    mask = cv2.morphologyEx(mask, cv2.MORPH_CLOSE, _kernel(max(3, min(height, width) // 50)))
    box, area = _largest_area(mask)
    return _accept(box, area, height, width, "changing")


def bright_region(image: np.ndarray, threshold: int = BRIGHT_THRESHOLD) -> Tuple[Optional[Region], str]:
    """(region, why) from one frame: the bounding box of the largest non-dark area once thin strokes (text, scale
    ticks, thin lines) are opened away; (None, why not) when no area is clear."""
    import cv2

    grey = as_uint8(image)
    height, width = grey.shape
    smooth = cv2.blur(grey, (5, 5))
    _, mask = cv2.threshold(smooth, threshold, 255, cv2.THRESH_BINARY)
    side = max(3, min(height, width) // 40)
    mask = cv2.morphologyEx(mask, cv2.MORPH_OPEN, _kernel(side))
    mask = cv2.morphologyEx(mask, cv2.MORPH_CLOSE, _kernel(side))
    box, area = _largest_area(mask)
    return _accept(box, area, height, width, "bright")


class AutoRegion:
    """Finds the region from the first frames of a stream (``--region auto`` in the live path and ``predict``).

    ``add(image, t)`` keeps only the running per-pixel minimum and maximum (two frame-sized uint8 arrays, no frame
    list); once ``duration_s`` seconds (of ``t``) and ``min_frames`` frames are in, or ``max_frames``, it decides
    (:func:`changing_region`, else :func:`bright_region` of the newest frame, else the whole frame), logs the region
    once and returns it from then on. Until then ``add`` returns None (the caller segments the whole frame). A frame
    of another size starts over. ``finish()`` decides at once with what was collected (a folder of images).
    """

    def __init__(self, duration_s: float = AUTO_DURATION_S, min_frames: int = AUTO_MIN_FRAMES,
                 max_frames: int = AUTO_MAX_FRAMES):
        self.duration_s = float(duration_s)
        self.min_frames = max(1, int(min_frames))
        self.max_frames = max(self.min_frames, int(max_frames))
        self.region: Optional[Region] = None
        self.reason = ""
        self.shape: Optional[Tuple[int, int]] = None
        self._reset()

    def _reset(self) -> None:
        self.region = None
        self.reason = ""
        self._low = self._high = self._last = None
        self._frames = 0
        self._first_t: Optional[float] = None
        self._last_t: Optional[float] = None
        self._timed = False  # whether frames came with their times (a live stream) or not (files)

    @property
    def frames(self) -> int:
        """Frames collected towards the decision so far."""
        return self._frames

    def add(self, image: np.ndarray, t: Optional[float] = None) -> Optional[Region]:
        """Take one frame (grey or colour; ``t`` its time in seconds, None: one frame per 1/30 s); returns the
        region once decided, else None."""
        import cv2

        shape = tuple(int(v) for v in np.asarray(image).shape[:2])
        if shape != self.shape:
            if self.shape is not None:
                log.info("frame size changed from %d x %d to %d x %d: finding the image region again",
                         self.shape[1], self.shape[0], shape[1], shape[0])
            self.shape = shape
            self._reset()
        if self.region is not None:
            return self.region
        grey = as_uint8(image)
        if self._low is None:
            self._low, self._high = grey.copy(), grey.copy()
        else:
            cv2.min(self._low, grey, dst=self._low)
            cv2.max(self._high, grey, dst=self._high)
        self._last = grey
        self._frames += 1
        self._timed = self._timed or t is not None
        t = self._frames / 30.0 if t is None else float(t)
        self._first_t = t if self._first_t is None else self._first_t
        self._last_t = t
        enough_time = self._last_t - self._first_t >= self.duration_s and self._frames >= self.min_frames
        if enough_time or self._frames >= self.max_frames:
            self.finish()
        return self.region

    def finish(self) -> Optional[Region]:
        """Decide now with the frames collected (None when there were none); logs the region and why."""
        if self.region is not None or self._low is None:
            return self.region
        height, width = self.shape
        seconds = (self._last_t or 0.0) - (self._first_t or 0.0)
        over = f"{self._frames} frame(s)" + (f" over {seconds:.1f} s" if self._timed else "")
        region, why = (None, "one frame only") if self._frames < 2 else changing_region(self._low, self._high)
        if region is not None:
            self.reason = f"{why} of {over}"
        else:
            bright, why_bright = bright_region(self._last)
            if bright is not None:
                region = bright
                self.reason = f"nothing clear changed ({why}, {over}); {why_bright} of the newest frame"
            else:
                region = Region(0, 0, width, height)
                self.reason = (f"nothing clear changed ({why}, {over}) and nothing clear is bright ({why_bright}): "
                               "segmenting the whole frame")
        self.region = region
        self._low = self._high = self._last = None  # the frames are not needed any more
        log.info("image region %s (%s) of the %d x %d frame: %s", region.text(), region.describe(), width, height,
                 self.reason)
        return region


def find_region(frames: Sequence[np.ndarray]) -> Tuple[Region, str]:
    """(region, why) from a series of same-size frames (a folder of images taken as time): as :class:`AutoRegion`
    with all of them (at most :data:`AUTO_MAX_FRAMES`, spread over the series). ValueError when there are none or
    their sizes differ."""
    if not len(frames):
        raise ValueError("no frames to find the image region in")
    shapes = {tuple(np.asarray(f).shape[:2]) for f in frames}
    if len(shapes) != 1:
        raise ValueError(f"frames of several sizes {sorted(shapes)}: find the region of each size separately")
    chosen = np.unique(np.linspace(0, len(frames) - 1, min(len(frames), AUTO_MAX_FRAMES)).astype(int))
    finder = AutoRegion(duration_s=math.inf, max_frames=len(chosen) + 1)
    for index in chosen:
        finder.add(frames[index])
    return finder.finish(), finder.reason
