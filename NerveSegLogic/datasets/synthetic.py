"""Synthetic ultrasound-like frames with known masks, for tests and benchmarks (no patient data needed).

A frame is a black screen with a fan-shaped (curvilinear) or rectangular (linear) sector of speckle, a bright
textured nerve ellipse (label 1), a dark anechoic vessel (label 2) and, optionally, burned-in text in the
margin outside the sector the way scanners print names and dates.
"""

from __future__ import annotations

from typing import Tuple

import numpy as np

from ..frame import ImageGeometry

BURNED_IN_TEXT = ("DOE^JANE 1957-03-02", "ID 123456 14:32")


def sector_mask(height: int, width: int, shape: str = "fan") -> np.ndarray:
    """(H, W) bool: a fan with its apex above the top edge (half-angle 30 degrees), or a linear probe's rectangle."""
    if shape == "linear":
        mask = np.zeros((height, width), bool)
        mask[int(0.12 * height):int(0.95 * height), int(0.2 * width):int(0.8 * width)] = True
        return mask
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    apex_x, apex_y = width / 2.0, -0.15 * height
    radius = np.hypot(x - apex_x, y - apex_y)
    angle = np.degrees(np.arctan2(x - apex_x, y - apex_y))
    return (radius >= 0.35 * height) & (radius <= 1.05 * height) & (np.abs(angle) <= 30.0)


def synthetic_frame(rng: np.random.Generator, height: int = 420, width: int = 580, shape: str = "fan",
                    text: bool = True, vessel: bool = True) -> Tuple[np.ndarray, np.ndarray]:
    """(image (H, W) uint8, mask (H, W) uint8 with 0 background, 1 nerve, 2 vessel); structures inside the sector,
    burned-in text (when ``text``) only outside it."""
    import cv2

    sector = sector_mask(height, width, shape)
    speckle = rng.gamma(2.0, 35.0, size=(height, width)).astype(np.float32)
    image = cv2.GaussianBlur(speckle, (3, 3), 0)
    mask = np.zeros((height, width), np.uint8)
    ys, xs = np.nonzero(sector)
    centre_y = int(np.clip(rng.normal(0.55, 0.08) * height, ys.min() + 40, ys.max() - 40))
    row = xs[ys == centre_y]
    centre_x = int(rng.integers(row.min() + 40, row.max() - 40))
    axes = (int(rng.integers(18, 40)), int(rng.integers(12, 26)))
    cv2.ellipse(mask, (centre_x, centre_y), axes, float(rng.uniform(0, 180)), 0, 360, 1, -1)
    if vessel:
        vx = int(np.clip(centre_x + rng.choice([-1, 1]) * rng.integers(60, 90), row.min() + 25, row.max() - 25))
        cv2.circle(mask, (vx, centre_y + int(rng.integers(-20, 20))), int(rng.integers(12, 22)), 2, -1)
    mask[~sector] = 0
    image = np.where(mask == 1, image * 1.6 + 30, image)
    image = np.where(mask == 2, image * 0.08, image)
    image = np.where(sector, np.clip(image, 0, 255), 0).astype(np.uint8)
    if text:
        layer = np.zeros_like(image)
        cv2.putText(layer, BURNED_IN_TEXT[0], (6, 16), cv2.FONT_HERSHEY_SIMPLEX, 0.45, 255, 1, cv2.LINE_AA)
        cv2.putText(layer, BURNED_IN_TEXT[1], (width - 150, 16), cv2.FONT_HERSHEY_SIMPLEX, 0.45, 255, 1,
                    cv2.LINE_AA)
        layer[sector] = 0  # text lives in the margin only
        image = np.maximum(image, layer)
    return image, mask


def text_pixels(height: int = 420, width: int = 580, shape: str = "fan") -> np.ndarray:
    """(H, W) bool: where :func:`synthetic_frame` draws its burned-in text."""
    image, _ = synthetic_frame(np.random.default_rng(0), height, width, shape, text=True)
    plain, _ = synthetic_frame(np.random.default_rng(0), height, width, shape, text=False)
    return image != plain


#: Metadata a synthetic frame carries; ``operator`` and ``patient_name`` must never survive de-identification.
def _metadata(subject_no: int, region: str) -> dict:
    return {"region": region, "scanner": "Synthetic S1", "probe": "C5-2", "patient_name": f"Patient {subject_no}",
            "operator": "Dr Example", "acquired": "2024-05-01T10:00:00"}


def fill_store(store, n_frames: int, n_subjects: int = 10, seed: int = 0, height: int = 420, width: int = 580,
               regions: Tuple[str, ...] = ("femoral", "axillary", "interscalene"),
               statuses: Tuple[str, ...] = ("accepted",), spacing_mm: float = 0.1,
               classes: Tuple[Tuple[int, str], ...] = ((1, "nerve"), (2, "blood_vessel"))) -> list:
    """Add ``n_frames`` synthetic frames to an AnnotationStore, spread over ``n_subjects`` subjects (named like
    people, ``Subject Name NN``, so de-identification has something to remove), each with one saved version
    whose status cycles through ``statuses``. Returns the FrameRecords."""
    rng = np.random.default_rng(seed)
    records = []
    for n in range(n_frames):
        subject_no = n * n_subjects // n_frames
        image, mask = synthetic_frame(rng, height, width, shape="fan" if subject_no % 2 == 0 else "linear")
        region = regions[subject_no % len(regions)]
        record = store.add_frame(image, source=f"/scans/Subject Name {subject_no:02d}/clip.mha", index=n,
                                 subject=f"Subject Name {subject_no:02d}",
                                 geometry=ImageGeometry(spacing=(spacing_mm, spacing_mm, 1.0)),
                                 metadata=_metadata(subject_no, region))
        store.save_mask(record.id, mask, dict(classes), author="annotator-a", origin="manual", parent_id=None,
                        status=statuses[n % len(statuses)], model_name="smistad-unet", model_sha256="ab" * 32)
        records.append(record)
    return records
