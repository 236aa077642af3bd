"""Overlay pictures: a grey frame with coloured, outlined, labelled class regions, as a person checks them.

Used by the demo (PNGs and the overlay video), evaluation reports and annotation tools. numpy + OpenCV only.
"""

from __future__ import annotations

from typing import Iterable, Optional, Sequence

import cv2
import numpy as np

from ..classes import SegmentClass
from .placement import normalize, to_grey


def grey_to_rgb8(image: np.ndarray) -> np.ndarray:
    """(H, W, 3) uint8 from any grey or colour frame (uint8, uint16 or float)."""
    grey = to_grey(image)
    if grey.dtype != np.uint8:
        grey = np.clip(normalize(grey, "unit") * 255.0 + 0.5, 0, 255).astype(np.uint8)
    return cv2.cvtColor(grey, cv2.COLOR_GRAY2RGB)


def render_overlay(image: np.ndarray, labelmap: np.ndarray, classes: Iterable[SegmentClass], alpha: float = 0.4,
                   outline: bool = True, names: bool = True, caption: Optional[str] = None) -> np.ndarray:
    """RGB uint8 picture of ``image`` with each class of ``labelmap`` filled (``alpha``), outlined and named.

    Names are written at each region's centroid (regions of one class share one name per component).
    """
    if labelmap.shape != image.shape[:2]:
        raise ValueError(f"labelmap shape {labelmap.shape} differs from image shape {image.shape[:2]}")
    rgb = grey_to_rgb8(image).astype(np.float32)
    scale = max(image.shape[:2]) / 512.0
    thickness = max(1, int(round(2 * scale)))
    out = rgb.copy()
    label_positions = []
    for cls in classes:
        region = labelmap == cls.label
        if not region.any():
            continue
        color = np.array(cls.color_uint8(), dtype=np.float32)
        out[region] = (1.0 - alpha) * out[region] + alpha * color
        if outline or names:
            contours, _ = cv2.findContours(region.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
            if outline:
                canvas = out.astype(np.uint8)
                cv2.drawContours(canvas, contours, -1, tuple(int(c) for c in color), thickness, cv2.LINE_AA)
                out = canvas.astype(np.float32)
            if names:
                for contour in contours:
                    m = cv2.moments(contour)
                    if m["m00"] > 0:
                        label_positions.append((cls, int(m["m10"] / m["m00"]), int(m["m01"] / m["m00"])))
    canvas = np.clip(out, 0, 255).astype(np.uint8)
    font_scale = 0.5 * scale
    for cls, x, y in label_positions:
        _put_text(canvas, cls.name, (x, y), font_scale, cls.color_uint8(), centred=True)
    if caption:
        _put_text(canvas, caption, (int(8 * scale), int(20 * scale)), font_scale, (255, 255, 255))
    return canvas


def _put_text(canvas: np.ndarray, text: str, origin, font_scale: float, color, centred: bool = False) -> None:
    font = cv2.FONT_HERSHEY_SIMPLEX
    thickness = max(1, int(round(font_scale * 2)))
    (w, h), baseline = cv2.getTextSize(text, font, font_scale, thickness)
    x, y = origin
    if centred:
        x, y = x - w // 2, y + h // 2
    x = int(np.clip(x, 0, max(0, canvas.shape[1] - w)))
    y = int(np.clip(y, h, canvas.shape[0] - 1))
    # A darkened box keeps the label readable on bright tissue. (A thicker black copy of the text as a halo does
    # not work with OpenCV 5, whose fonts change weight, not outline, with the thickness.)
    pad = max(1, thickness)
    top, bottom = max(0, y - h - pad), min(canvas.shape[0], y + baseline + pad)
    left, right = max(0, x - pad), min(canvas.shape[1], x + w + pad)
    canvas[top:bottom, left:right] = (canvas[top:bottom, left:right] * 0.35).astype(canvas.dtype)
    cv2.putText(canvas, text, (x, y), font, font_scale, tuple(int(c) for c in color), thickness, cv2.LINE_AA)


def contact_sheet(pictures: Sequence[np.ndarray], columns: int = 4, width: int = 320) -> np.ndarray:
    """One RGB picture tiling ``pictures`` (each scaled to ``width`` px wide) in rows of ``columns``."""
    if not pictures:
        raise ValueError("contact_sheet needs at least one picture")
    tiles = []
    for pic in pictures:
        h = int(round(pic.shape[0] * width / pic.shape[1]))
        tiles.append(cv2.resize(pic, (width, h), interpolation=cv2.INTER_AREA))
    tile_h = max(t.shape[0] for t in tiles)
    rows = []
    for start in range(0, len(tiles), columns):
        row = [np.pad(t, ((0, tile_h - t.shape[0]), (0, 0), (0, 0))) for t in tiles[start:start + columns]]
        row += [np.zeros((tile_h, width, 3), np.uint8)] * (columns - len(row))
        rows.append(np.concatenate(row, axis=1))
    return np.concatenate(rows, axis=0)
