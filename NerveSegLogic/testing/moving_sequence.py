"""A moving probe made from one labelled frame: the frame slid and zoomed smoothly over time, with speckle-like
noise and gain changes, and its mask moved identically, so a segmentation's steadiness can be measured without a
recorded sweep (benchmarks/accuracy/steady_overlay.py; benchmarks/speed/bench_live_path.py ``--frames probe``).
"""

from __future__ import annotations

import math
from typing import Iterator, Tuple

import numpy as np


def moving_sequence(image: np.ndarray, mask: np.ndarray, length: int, seed: int, fast: bool,
                    speckle: float = 0.2, amplitude: float = 20.0) -> Iterator[Tuple[np.ndarray, np.ndarray, tuple]]:
    """(frame uint8, truth labelmap, (dx, dy, scale)) for each of ``length`` frames: ``image`` shifted and zoomed
    smoothly, with per-frame speckle-like noise and gain changes; ``mask`` moved identically (nearest).

    ``fast``: a sideways sweep takes 18 to 30 frames (else 80 to 120); ``amplitude``: the largest shift across in
    pixels (0.6 of it in depth); the zoom moves between 0.9 and 1.1 about the centre, borders reflected."""
    import cv2

    rng = np.random.default_rng(seed)
    height, width = image.shape
    phase_x, phase_y, phase_s, phase_g = rng.uniform(0, 2 * math.pi, 4)
    if fast:
        period_x, period_y, period_s = rng.uniform(18, 30), rng.uniform(24, 40), rng.uniform(40, 60)
    else:
        period_x, period_y, period_s = rng.uniform(80, 120), rng.uniform(60, 100), rng.uniform(90, 130)
    base = image.astype(np.float32)
    for t in range(length):
        dx = amplitude * math.sin(2 * math.pi * t / period_x + phase_x)
        dy = 0.6 * amplitude * math.sin(2 * math.pi * t / period_y + phase_y)
        scale = 1.0 + 0.1 * math.sin(2 * math.pi * t / period_s + phase_s)
        matrix = np.array([[scale, 0, (1 - scale) * width / 2 + dx], [0, scale, (1 - scale) * height / 2 + dy]],
                          np.float32)
        moved = cv2.warpAffine(base, matrix, (width, height), flags=cv2.INTER_LINEAR,
                               borderMode=cv2.BORDER_REFLECT101)
        truth = cv2.warpAffine(mask, matrix, (width, height), flags=cv2.INTER_NEAREST,
                               borderMode=cv2.BORDER_REFLECT101)
        noise = cv2.GaussianBlur(rng.standard_normal((height, width)).astype(np.float32), (0, 0), 1.2)
        noise *= 1.0 / max(float(noise.std()), 1e-6)
        gain = 1.0 + 0.08 * math.sin(2 * math.pi * t / 37.0 + phase_g) + rng.normal(0.0, 0.03)
        frame = moved * gain * np.clip(1.0 + speckle * noise, 0.0, None)
        yield np.clip(frame, 0, 255).astype(np.uint8), truth, (dx, dy, scale)
