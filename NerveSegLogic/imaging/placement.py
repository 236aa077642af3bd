"""Pre- and post-processing shared by live inference, training, evaluation and pre-labelling.

A model card's ``input`` block says how a frame becomes the model's input::

    "input": {"size": [256, 256], "channels": 1, "resize": "fit_width_pad_crop_bottom", "normalize": "unit"}

resize modes:
- ``fit_width_pad_crop_bottom`` (Smistad et al.): scale so the width equals the input width, keeping the aspect;
  a frame that comes out shorter is zero-padded at the bottom, a taller one loses its bottom (the deepest tissue).
- ``resize``: stretch to the input size (BPMSegNet resizes to 640x640).
- ``letterbox``: scale to fit inside, keeping the aspect, zero-pad right and bottom.

normalize modes: ``unit`` maps the dtype's range to 0..1 (uint8 / 255, uint16 / 65535; float input is taken as
0..255 when its maximum exceeds 1.5, else as 0..1); ``zscore`` then subtracts the frame's mean and divides by its
standard deviation.

Everything here is numpy + OpenCV; nothing imports torch.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Mapping, Optional, Sequence, Tuple

import numpy as np

from .bounds import check_image_size

#: OpenCV's interpolation codes (fixed values in every OpenCV), named here so that importing this module (the model
#: cards do) needs no OpenCV: a bare Slicer has none until the panel installs it.
INTER_NEAREST, INTER_LINEAR = 0, 1


def _cv2():
    import cv2  # imported when pixels are processed, not when the module is imported

    return cv2

RESIZE_MODES = ("fit_width_pad_crop_bottom", "resize", "letterbox")
NORMALIZE_MODES = ("unit", "zscore")

#: Smistad et al.: regions smaller than a circle of radius 7 pixels are ignored.
MIN_COMPONENT_RADIUS_PX = 7
MIN_COMPONENT_AREA_PX = int(np.ceil(np.pi * MIN_COMPONENT_RADIUS_PX ** 2))  # 154


@dataclass(frozen=True)
class InputSpec:
    """The ``input`` block of a model card."""

    height: int
    width: int
    channels: int = 1
    resize: str = "fit_width_pad_crop_bottom"
    normalize: str = "unit"

    def __post_init__(self):
        if self.height <= 0 or self.width <= 0:
            raise ValueError(f"input size must be positive, got {self.height}x{self.width}")
        if self.channels not in (1, 3):
            raise ValueError(f"input channels must be 1 or 3, got {self.channels}")
        if self.resize not in RESIZE_MODES:
            raise ValueError(f"input.resize {self.resize!r} unknown; expected one of {RESIZE_MODES}")
        if self.normalize not in NORMALIZE_MODES:
            raise ValueError(f"input.normalize {self.normalize!r} unknown; expected one of {NORMALIZE_MODES}")

    @classmethod
    def from_card(cls, block: Mapping) -> "InputSpec":
        """From a card's ``input`` mapping; KeyError/ValueError name the missing or bad field."""
        try:
            height, width = (int(v) for v in block["size"])
        except KeyError:
            raise KeyError("model card 'input' block has no 'size' [height, width]") from None
        return cls(height=height, width=width, channels=int(block.get("channels", 1)),
                   resize=str(block.get("resize", "fit_width_pad_crop_bottom")),
                   normalize=str(block.get("normalize", "unit")))


@dataclass(frozen=True)
class Placement:
    """Where the scaled frame sits inside the model input, so outputs can be mapped back.

    The frame (``src_h`` x ``src_w``) was scaled to ``scaled_h`` x ``scaled_w`` and its top-left
    ``valid_h`` x ``valid_w`` part copied to the top-left of the input (the rest of the input is zero).
    """

    src_h: int
    src_w: int
    scaled_h: int
    scaled_w: int
    valid_h: int
    valid_w: int


def to_grey(image: np.ndarray) -> np.ndarray:
    """(H, W) from (H, W), (H, W, 1), (H, W, 3) or (H, W, 4); colour by luminance (ITU-R BT.601), dtype kept."""
    if image.ndim == 2:
        return image
    if image.ndim == 3 and image.shape[2] == 1:
        return image[:, :, 0]
    if image.ndim == 3 and image.shape[2] in (3, 4):
        rgb = image[:, :, :3].astype(np.float32)
        grey = rgb @ np.array([0.299, 0.587, 0.114], dtype=np.float32)
        if np.issubdtype(image.dtype, np.integer):
            return np.clip(np.rint(grey), 0, np.iinfo(image.dtype).max).astype(image.dtype)
        return grey.astype(image.dtype)
    raise ValueError(f"expected a grey or RGB image (H, W[, 1|3|4]), got shape {image.shape}")


#: uint8 value -> float32 value / 255, each entry computed exactly as ``image.astype(np.float32) / 255.0`` computes it
#: per pixel, so a lookup gives the same floats in one pass (see :func:`normalize`).
_UNIT_OF_UINT8 = np.arange(256, dtype=np.float32) / 255.0


def normalize(image: np.ndarray, mode: str = "unit") -> np.ndarray:
    """float32 image in 0..1 (``unit``) or zero mean, unit variance (``zscore``).

    A grey uint8 frame (the live case) goes through a 256-entry table with ``cv2.LUT``: the same floats as
    converting and dividing, in one pass instead of two and without the intermediate array (timed in
    benchmarks/speed/serve_overhead.md).
    """
    if image.dtype == np.uint8 and image.ndim == 2 and image.size:
        out = _cv2().LUT(image, _UNIT_OF_UINT8)
    elif image.dtype == np.uint8:
        out = image.astype(np.float32) / 255.0
    elif image.dtype == np.uint16:
        out = image.astype(np.float32) / 65535.0
    elif np.issubdtype(image.dtype, np.floating):
        out = image.astype(np.float32)
        if out.size and float(out.max()) > 1.5:
            out = out / 255.0
    else:
        raise ValueError(f"unsupported image dtype {image.dtype}; expected uint8, uint16 or float")
    if mode == "zscore":
        out = (out - out.mean()) / max(float(out.std()), 1e-6)
    elif mode != "unit":
        raise ValueError(f"normalize mode {mode!r} unknown; expected one of {NORMALIZE_MODES}")
    return out


def place(image: np.ndarray, spec: InputSpec, interpolation: int = INTER_LINEAR) -> Tuple[np.ndarray, Placement]:
    """Scale ``image`` (H, W) or (H, W, C) into a zero canvas of the input size; return it and its placement.

    Raises ValueError for an empty image and ImageTooLarge (a ValueError) for one outside the bounds of
    :mod:`NerveSegLogic.imaging.bounds`, before anything is allocated (scaling a 1-pixel-wide frame to the input width
    would multiply its height by the input width).
    """
    src_h, src_w = image.shape[:2]
    if src_h == 0 or src_w == 0:
        raise ValueError(f"cannot preprocess an empty image of shape {image.shape}")
    check_image_size(src_h, src_w, f"frame of shape {image.shape}")
    if spec.resize == "resize":
        scaled_h, scaled_w = spec.height, spec.width
    elif spec.resize == "fit_width_pad_crop_bottom":
        scaled_w = spec.width
        scaled_h = max(1, int(round(src_h * spec.width / src_w)))
    else:  # letterbox
        factor = min(spec.height / src_h, spec.width / src_w)
        scaled_h, scaled_w = max(1, int(round(src_h * factor))), max(1, int(round(src_w * factor)))
    cv2 = _cv2()
    scaled = image if (scaled_h, scaled_w) == (src_h, src_w) else cv2.resize(
        image, (scaled_w, scaled_h), interpolation=interpolation)
    valid_h, valid_w = min(scaled_h, spec.height), min(scaled_w, spec.width)
    canvas = np.zeros((spec.height, spec.width) + image.shape[2:], dtype=scaled.dtype)
    canvas[:valid_h, :valid_w] = scaled[:valid_h, :valid_w]
    return canvas, Placement(src_h, src_w, scaled_h, scaled_w, valid_h, valid_w)


_scratch = threading.local()


def _unit_for_placing(grey: np.ndarray) -> np.ndarray:
    """``normalize(grey, "unit")`` for :func:`place` to read, written into a per-thread buffer reused from frame to
    frame when ``grey`` is a 2D uint8 frame (the live case). The full-size float frame is only an intermediate
    (place() resizes it into a new canvas, so the buffer never leaves), and a fresh frame-sized array for every frame
    costs page faults in a long-running process (benchmarks/speed/serve_overhead.md, "Cuts")."""
    if grey.dtype != np.uint8 or grey.ndim != 2 or not grey.size:
        return normalize(grey, "unit")
    buffer = getattr(_scratch, "unit", None)
    if buffer is None or buffer.shape != grey.shape:
        buffer = _scratch.unit = np.empty(grey.shape, dtype=np.float32)
    return _cv2().LUT(grey, _UNIT_OF_UINT8, dst=buffer)


def preprocess(image: np.ndarray, spec: InputSpec) -> Tuple[np.ndarray, Placement]:
    """Model input ``(channels, height, width)`` float32 for one frame, and the placement to undo it (a new array
    for every call: callers may keep it)."""
    grey = to_grey(image)
    canvas, placement = place(_unit_for_placing(grey), spec)
    if spec.normalize == "zscore":
        valid = canvas[:placement.valid_h, :placement.valid_w]
        canvas = (canvas - valid.mean()) / max(float(valid.std()), 1e-6)
    tensor = canvas[np.newaxis].astype(np.float32, copy=False)
    if spec.channels == 3:
        tensor = np.repeat(tensor, 3, axis=0)
    return tensor, placement


def place_mask(mask: np.ndarray, spec: InputSpec) -> np.ndarray:
    """A label mask (H, W) placed like its image (nearest neighbour), for training targets."""
    canvas, _ = place(mask, spec, interpolation=INTER_NEAREST)
    return canvas


def restore(maps: np.ndarray, placement: Placement, interpolation: int = INTER_LINEAR,
            background_channel: bool = True) -> np.ndarray:
    """Undo :func:`place` for per-class maps ``(C, h, w)`` in input size: ``(C, src_h, src_w)`` float32.

    Rows that were cropped away (below the input's bottom) get the background class: probability 1 for channel 0
    and 0 elsewhere, so nothing is claimed in tissue the model never saw. With ``background_channel=False``
    (e.g. per-instance masks) they get 0 in every channel.
    """
    if maps.ndim != 3:
        raise ValueError(f"expected (C, H, W) maps, got shape {maps.shape}")
    channels = maps.shape[0]
    scaled = np.zeros((channels, placement.scaled_h, placement.scaled_w), dtype=np.float32)
    if background_channel:
        scaled[0] = 1.0
    scaled[:, :placement.valid_h, :placement.valid_w] = maps[:, :placement.valid_h, :placement.valid_w]
    # OpenCV resizes up to 512 channels at once when they are last.
    hwc = np.ascontiguousarray(scaled.transpose(1, 2, 0))
    out = _cv2().resize(hwc, (placement.src_w, placement.src_h), interpolation=interpolation)
    if out.ndim == 2:
        out = out[:, :, np.newaxis]
    return np.ascontiguousarray(out.transpose(2, 0, 1))


def restore_mask(mask: np.ndarray, placement: Placement) -> np.ndarray:
    """Undo :func:`place` for an (h, w) mask (nearest neighbour); cropped rows become 0."""
    scaled = np.zeros((placement.scaled_h, placement.scaled_w), dtype=mask.dtype)
    scaled[:placement.valid_h, :placement.valid_w] = mask[:placement.valid_h, :placement.valid_w]
    return _cv2().resize(scaled, (placement.src_w, placement.src_h), interpolation=INTER_NEAREST)


#: Small regions cleared one by one, inside their own boxes, up to this many per label; more are cleared through one
#: lookup over the label's box (a pass over the whole box costs about as much as a few dozen small boxes).
_FEW_SMALL_REGIONS = 16


def remove_small_components(labelmap: np.ndarray, min_area: int = MIN_COMPONENT_AREA_PX,
                            labels: Sequence[int] = (), in_place: bool = False,
                            within: Optional[Tuple[int, int, int, int]] = None) -> np.ndarray:
    """Labelmap with every connected region (8-connected, per label) smaller than ``min_area`` pixels set to 0.

    Each label's regions are found only inside the box around its pixels (a region never leaves that box, so the
    answer is the full frame's), and small ones are cleared through a lookup of component numbers (timed in
    benchmarks/speed/serve_overhead.md, "Cuts").

    Cheaper still, with the same pixels cleared (benchmarks/speed/serve_overhead.md, "Cuts"): the labels' boxes are
    looked for inside the box of all foreground (found in one pass), so no frame-sized mask is made per label; the
    regions are numbered in 16 bits where the box cannot hold more than 65535 of them (OpenCV labels a uint16 image
    in about half the time of an int32 one); a few small regions are cleared inside their own boxes rather than by
    a lookup over the label's whole box. ``in_place``: clear them in ``labelmap`` itself (its owner's choice) and
    return it, instead of a copy. ``within`` = (top, bottom, left, right): the caller knows that every labelled
    pixel lies in ``labelmap[top:bottom, left:right]`` (the segmenter wrote only there), so the frame is not
    scanned for the foreground's box; the same pixels are cleared.
    """
    cv2 = _cv2()
    out = labelmap if in_place else labelmap.copy()
    present = labels or [int(v) for v in np.unique(labelmap) if v != 0]
    if not present:
        return out
    if within is not None:
        top, bottom, left, right = (int(v) for v in within)
        foreground = labelmap[top:bottom, left:right]
    else:
        rows = np.flatnonzero(labelmap.any(axis=1))
        if rows.size == 0:
            return out
        top = int(rows[0])
        cols = np.flatnonzero(labelmap[top:int(rows[-1]) + 1].any(axis=0))
        left = int(cols[0])
        foreground = labelmap[top:int(rows[-1]) + 1, left:int(cols[-1]) + 1]
    for value in present:
        # the label's pixels (non-zero) and their box, in OpenCV: 374 -> 326 us for both labels of a 580x420
        # labelmap with the memory cold, against numpy's compare and row / column scans (serve_overhead.md)
        binary = cv2.compare(foreground, value, cv2.CMP_EQ) if foreground.dtype == np.uint8 else \
            (foreground == value).view(np.uint8)
        c0, r0, width, height = cv2.boundingRect(binary)
        if width == 0:
            continue
        r1, c1 = r0 + height, c0 + width
        crop = binary[r0:r1, c0:c1]
        # 8-connected regions are at least one pixel apart: at most ceil(h / 2) * ceil(w / 2) of them, plus background
        most = ((r1 - r0 + 1) // 2) * ((c1 - c0 + 1) // 2) + 1
        label_type = cv2.CV_16U if most <= 0xFFFF else cv2.CV_32S
        _, components, stats, _ = cv2.connectedComponentsWithStatsWithAlgorithm(crop, 8, label_type,
                                                                                cv2.CCL_DEFAULT)
        small = stats[:, cv2.CC_STAT_AREA] < min_area
        small[0] = False  # component 0 is the background of the crop
        indices = np.flatnonzero(small)
        if indices.size == 0:
            continue
        region = out[top + r0:top + r1, left + c0:left + c1]
        if indices.size > _FEW_SMALL_REGIONS:
            region[small[components]] = 0
            continue
        for index in indices:
            x, y, w, h = (int(v) for v in stats[index, :4])
            region[y:y + h, x:x + w][components[y:y + h, x:x + w] == index] = 0
    return out
