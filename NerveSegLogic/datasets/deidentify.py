"""De-identification of exported frames: pseudonymous subject ids, allow-listed metadata, the ultrasound sector.

- Subject ids (and recording names) become ``HMAC-SHA256(salt, id)`` pseudonyms. The salt is a secret file kept
  OUTSIDE the export (created with ``secrets.token_bytes`` when missing, readable by its owner only): the same
  salt gives the same pseudonyms across exports, so cohorts can be merged, while nobody without it can test a
  guessed name against a pseudonym (a plain hash could be reversed by hashing a list of names).
- Metadata pass an allow-list (:data:`METADATA_ALLOW_LIST`); everything else is dropped.
- Scanners burn names, dates and settings into the screen margin. :func:`find_sector` finds the ultrasound
  sector automatically (OpenCV: smooth, threshold, open away thin strokes such as text, keep the largest region,
  take its convex hull), and :func:`apply_sector` blanks everything outside it or crops to it. A contact sheet of
  the found sectors (:func:`write_sector_sheets`) is written beside the export for a person to check; it shows
  the original frames (margins tinted, not removed), so it stays private like the store.

Known limit: deep tissue that is as dark as the screen's black (strong attenuation, under about 3/255 after
smoothing) is outside the found region; the convex hull takes most of it back on fan-shaped sectors, but on linear
probes a dark bottom corner can be blanked. The check picture shows where.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np

#: Frame metadata that may leave the machine: acquisition settings and anatomy, nothing about the person.
METADATA_ALLOW_LIST = ("region", "block", "side", "view", "scanner", "probe", "preset", "depth_mm",
                       "frequency_mhz", "gain_db", "dataset")

SALT_BYTES = 32
SECTOR_MODES = ("none", "blank", "crop")


class SectorNotFound(ValueError):
    """No ultrasound sector could be told apart from the screen margin in a frame."""


def load_or_create_salt(path: Path) -> bytes:
    """The secret salt in ``path``; a new random one (32 bytes, file mode 0600) when the file does not exist.

    Raises ValueError for a salt file that is too short to be secret (< 16 bytes)."""
    path = Path(path)
    if path.exists():
        salt = path.read_bytes()
        if len(salt) < 16:
            raise ValueError(f"{path}: salt file holds {len(salt)} bytes; expected at least 16 random bytes")
        return salt
    path.parent.mkdir(parents=True, exist_ok=True)
    salt = secrets.token_bytes(SALT_BYTES)
    fd = os.open(str(path), os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(salt)
    return salt


def pseudonym(value: str, salt: bytes, prefix: str = "sub-") -> str:
    """``prefix`` + the first 16 hex digits (64 bits) of HMAC-SHA256(salt, value): stable for one salt."""
    digest = hmac.new(salt, str(value).encode("utf-8"), hashlib.sha256).hexdigest()
    return f"{prefix}{digest[:16]}"


def allowed_metadata(metadata: Mapping, allow: Sequence[str] = METADATA_ALLOW_LIST) -> Dict:
    """The allow-listed part of ``metadata`` (values kept only when they are plain numbers or short strings)."""
    kept = {}
    for key in allow:
        value = metadata.get(key)
        if isinstance(value, bool) or value is None:
            continue
        if isinstance(value, (int, float)) or (isinstance(value, str) and len(value) <= 64):
            kept[key] = value
    return kept


# -- the ultrasound sector -------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Sector:
    """The ultrasound sector of a frame: ``mask`` (H, W) bool, its ``hull`` polygon (N, 2) in (x, y) pixels and
    its bounding box ``(x, y, w, h)`` in pixels."""

    mask: np.ndarray
    hull: np.ndarray
    box: Tuple[int, int, int, int]

    @property
    def fraction(self) -> float:
        return float(self.mask.mean())


def _as_uint8(image: np.ndarray) -> np.ndarray:
    if image.dtype == np.uint8:
        return image
    top = float(image.max()) or 1.0
    return np.clip(image.astype(np.float32) * (255.0 / top), 0, 255).astype(np.uint8)


def find_sector(image: np.ndarray, threshold: Optional[int] = None, min_fraction: float = 0.05) -> Sector:
    """Find the ultrasound sector of a grey frame (H, W).

    Steps (OpenCV): a box blur (about 2 % of the frame's smaller side) so speckle and dim deep tissue become one
    region; threshold at ``threshold`` (of 255; default: 3 above the darkest 1 % of the blurred frame, i.e. just
    above the screen's black);
    a morphological opening whose disc (about 2 % of the frame's smaller side, at least 7 px) removes thin strokes:
    burned-in text, tick marks and calipers; the largest connected region; its convex hull (sectors are convex, and
    the hull also takes back dark anatomy, such as anechoic vessels, that touch the edge).

    Raises SectorNotFound when the largest region covers less than ``min_fraction`` of the frame."""
    import cv2

    grey = _as_uint8(image)
    height, width = grey.shape
    small = min(height, width)
    blur = max(5, (small // 50) | 1)
    smooth = cv2.blur(grey, (blur, blur))
    if threshold is None:
        threshold = int(np.percentile(smooth, 1)) + 3
    bright = (smooth > threshold).astype(np.uint8)
    disc = max(7, (small // 50) | 1)
    kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (disc, disc))
    opened = cv2.morphologyEx(bright, cv2.MORPH_OPEN, kernel)
    count, labels, stats, _ = cv2.connectedComponentsWithStats(opened, connectivity=8)
    if count <= 1:
        raise SectorNotFound(f"no bright region above {threshold}/255 in a {width}x{height} frame")
    largest = 1 + int(np.argmax(stats[1:, cv2.CC_STAT_AREA]))
    if stats[largest, cv2.CC_STAT_AREA] < min_fraction * height * width:
        share = stats[largest, cv2.CC_STAT_AREA] / (height * width)
        raise SectorNotFound(f"largest bright region covers only {share:.1%} of the {width}x{height} frame "
                             f"(expected at least {min_fraction:.0%})")
    contours, _ = cv2.findContours((labels == largest).astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    hull = cv2.convexHull(np.concatenate(contours)).reshape(-1, 2)
    mask = np.zeros((height, width), np.uint8)
    cv2.fillPoly(mask, [hull.astype(np.int32)], 1)
    x, y, w, h = cv2.boundingRect(hull.astype(np.int32))
    return Sector(mask=mask.astype(bool), hull=hull, box=(int(x), int(y), int(w), int(h)))


def apply_sector(image: np.ndarray, mask: np.ndarray, sector: Sector, mode: str
                 ) -> Tuple[np.ndarray, np.ndarray, Tuple[int, int]]:
    """(image, mask, (x0, y0) offset of the result in the original frame) after ``mode``:

    ``blank``: pixels outside the sector set to 0, size kept; the mask is unchanged.
    ``crop``: blank, then cut to the sector's bounding box (image and mask alike).
    ``none``: unchanged."""
    if mode == "none":
        return image, mask, (0, 0)
    if mode not in SECTOR_MODES:
        raise ValueError(f"sector mode {mode!r} unknown; expected one of {SECTOR_MODES}")
    blanked = np.where(sector.mask, image, 0).astype(image.dtype)
    if mode == "blank":
        return blanked, mask, (0, 0)
    x, y, w, h = sector.box
    return (np.ascontiguousarray(blanked[y:y + h, x:x + w]), np.ascontiguousarray(mask[y:y + h, x:x + w]), (x, y))


def sector_thumbnail(image: np.ndarray, sector: Sector, caption: str, width: int = 192) -> np.ndarray:
    """An RGB thumbnail ``width`` px wide: the frame, outside the sector tinted red, the hull outlined in green, a
    caption. Scaled down first, so it costs about a millisecond."""
    import cv2

    grey = _as_uint8(image)
    scale = width / grey.shape[1]
    size = (width, max(1, int(round(grey.shape[0] * scale))))
    small = cv2.resize(grey, size, interpolation=cv2.INTER_AREA)
    inside = cv2.resize(sector.mask.astype(np.uint8), size, interpolation=cv2.INTER_NEAREST).astype(bool)
    rgb = np.dstack([small] * 3)
    tinted = (rgb.astype(np.float32) * 0.4 + np.array([96.0, 0.0, 0.0], np.float32)).astype(np.uint8)
    rgb = np.where(inside[:, :, np.newaxis], rgb, tinted)
    hull = np.round(sector.hull.astype(np.float64) * scale).astype(np.int32)
    cv2.polylines(rgb, [hull], True, (0, 255, 0), 1)
    cv2.putText(rgb, caption[:28], (3, 12), cv2.FONT_HERSHEY_SIMPLEX, 0.35, (255, 255, 0), 1, cv2.LINE_AA)
    return rgb


def write_sector_sheets(thumbnails: Sequence[np.ndarray], first_path: Path, columns: int = 6,
                        per_sheet: int = 48) -> List[Path]:
    """Contact sheets of ``thumbnails`` (``per_sheet`` each); the first at ``first_path``, the next ones with
    ``-2``, ``-3``... before the suffix. Returns the paths written."""
    from PIL import Image

    paths = []
    first_path = Path(first_path)
    for page, start in enumerate(range(0, len(thumbnails), per_sheet), start=1):
        chunk = thumbnails[start:start + per_sheet]
        cell_w = max(t.shape[1] for t in chunk)
        cell_h = max(t.shape[0] for t in chunk)
        rows = (len(chunk) + columns - 1) // columns
        sheet = np.full((rows * (cell_h + 4), min(columns, len(chunk)) * (cell_w + 4), 3), 40, np.uint8)
        for n, thumb in enumerate(chunk):
            r, c = divmod(n, columns)
            y, x = r * (cell_h + 4) + 2, c * (cell_w + 4) + 2
            sheet[y:y + thumb.shape[0], x:x + thumb.shape[1]] = thumb
        name = first_path if page == 1 else first_path.with_name(
            first_path.name.replace(".png", f"-{page}.png"))
        Image.fromarray(sheet).save(name)
        paths.append(name)
    return paths
