"""Scoring promptable models as the annotation benchmarks do: a simulated annotator and LiteMedSAM's fold models.

The simulated annotator works on one structure at a time (a connected region of a class in the reference mask,
:func:`structures`): a box around it with each side moved by a random share of its size (:func:`jittered_box`),
then clicks at the interior of the largest error region (:func:`next_click`), each mask scored by :func:`dice`.

The fold models are the cross-validation of benchmarks/release/tune_litemedsam.py: LiteMedSAM's prompt encoder and
mask decoder tuned on four of the five contiguous blocks of usgra-seg (:func:`folds_of`), one run per fold under
``runs/litemedsam/fold<i>`` (:data:`TUNED_RUNS`), the frames' image embeddings cached once
(:func:`embedding_file`); the semantic model of the same fold is the default recipe's base run
(``runs/adapt/base/fold<i>``, benchmarks/accuracy/adaptation.py; :func:`semantic_model`).

Used by benchmarks/annotation (bench_prompted.py, refine_prelabel.py, propagate_usgra.py, annotation_effort.py)
and benchmarks/release/tune_litemedsam.py.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import List

import numpy as np

from ..imaging import overlap
from ..inference.promptable import PromptableSegmenter
from ..inference.segmenter import Segmenter
from ..models import registry
from .data import block_folds

#: The promptable model the fold runs tune (its released weights are the start).
BASE = "litemedsam"
#: tune_litemedsam.py's default --out: embeddings and one run per fold.
TUNED_RUNS = Path("runs/litemedsam")
#: The semantic model's base runs of the same folds (adaptation.py's --base-runs).
SEMANTIC_RUNS = Path("runs/adapt/base")


# ------------------------------------------------------------------------------------------ simulated annotator
def read_pair(images: Path, masks: Path, name: str):
    """(grey image, class-index mask) of the frame ``name`` of an images/ + masks/ data set (usgra-seg's layout)."""
    import cv2
    from PIL import Image

    image = cv2.imread(str(images / name), cv2.IMREAD_UNCHANGED)
    if image is None:
        raise SystemExit(f"{images / name}: not a readable image")
    if image.ndim == 3:
        image = cv2.cvtColor(image[..., :3], cv2.COLOR_BGR2GRAY)
    mask = np.array(Image.open(masks / name))  # palette PNG: the class index per pixel
    if mask.shape != image.shape:
        raise SystemExit(f"{masks / name}: mask shape {mask.shape} differs from its image's {image.shape}")
    return image, mask


def structures(mask: np.ndarray, label: int, min_area: int):
    """Each connected region (8-connected) of class ``label`` of at least ``min_area`` pixels, as a boolean mask."""
    import cv2

    count, components, stats, _ = cv2.connectedComponentsWithStats((mask == label).astype(np.uint8), connectivity=8)
    for index in range(1, count):
        if stats[index, cv2.CC_STAT_AREA] >= min_area:
            yield components == index


def jittered_box(region: np.ndarray, rng: np.random.Generator, fraction: float, shape):
    """(x0, y0, x1, y1): the region's tight box with each side moved outward or inward by a random 0-``fraction``
    of the region's width (left, right) or height (top, bottom), clipped to the frame of ``shape``."""
    ys, xs = np.nonzero(region)
    x0, x1, y0, y1 = xs.min(), xs.max(), ys.min(), ys.max()
    w, h = x1 - x0 + 1, y1 - y0 + 1
    shift = rng.uniform(0, fraction, 4) * rng.choice([-1, 1], 4)
    box = [x0 - shift[0] * w, y0 - shift[1] * h, x1 + shift[2] * w, y1 + shift[3] * h]
    height, width = shape
    box = [min(max(box[0], 0), width - 1), min(max(box[1], 0), height - 1),
           min(max(box[2], 0), width - 1), min(max(box[3], 0), height - 1)]
    return (min(box[0], box[2]), min(box[1], box[3]), max(box[0], box[2]), max(box[1], box[3]))


def dice(prediction: np.ndarray, reference: np.ndarray) -> float:
    """Dice of two boolean masks (:func:`NerveSegLogic.imaging.overlap.dice`), 1.0 when both are empty: the simulated
    annotator has nothing left to fix."""
    value = overlap.dice(prediction, reference)
    return 1.0 if math.isnan(value) else value


def next_click(prediction: np.ndarray, reference: np.ndarray):
    """(x, y, include) at the interior of the largest error region, or None when there is no error."""
    import cv2

    best = None
    for errors, include in ((reference & ~prediction, True), (prediction & ~reference, False)):
        count, components, stats, _ = cv2.connectedComponentsWithStats(errors.astype(np.uint8), connectivity=8)
        if count > 1:
            index = 1 + int(np.argmax(stats[1:, cv2.CC_STAT_AREA]))
            area = int(stats[index, cv2.CC_STAT_AREA])
            if best is None or area > best[0]:
                best = (area, components == index, include)
    if best is None:
        return None
    region = np.pad(best[1], 1).astype(np.uint8)  # padded: the frame's edge counts as the region's border
    distance = cv2.distanceTransform(region, cv2.DIST_L2, 5)[1:-1, 1:-1]
    y, x = np.unravel_index(int(np.argmax(distance)), distance.shape)
    return float(x), float(y), best[2]


# ------------------------------------------------------------------------------------------------- fold models
def frame_names(data: Path) -> List[str]:
    """The frame names of an images/ + masks/ data set, sorted."""
    return sorted(p.name for p in (data / "images").glob("*.png"))


def folds_of(names: List[str], folds: int) -> List[List[int]]:
    """The project's contiguous blocks (NerveSegLogic/train/data.py block_folds): the same as the semantic models'."""
    return block_folds(names, folds)


def embedding_file(out: Path, name: str, sha: str) -> Path:
    """Where the image embedding of frame ``name`` by the encoder with weights ``sha`` is cached under ``out``."""
    return out / "embeddings" / f"{Path(name).stem}-{sha[:12]}.npy"


def tuned_model(weights: Path):
    """The released LiteMedSAM with the tuned parts from ``weights`` (float32), eval mode."""
    from safetensors.torch import load_file

    model = registry.load(BASE)
    state = model.state_dict()
    state.update(load_file(str(weights)))
    model.load_state_dict(state, strict=True)
    return model.eval()


def fold_segmenter(weights: Path, card=None):
    """A PromptableSegmenter (torch) of the released model with the tuned parts from ``weights``, prompted as the
    tuned card prompts it (clicks as tokens, chained through the previous mask)."""
    segmenter = PromptableSegmenter.from_module(card or registry.card(BASE), tuned_model(weights), "0" * 64,
                                                click_mode="model")
    segmenter.mask_prompt = True
    return segmenter


_RELEASED = []


def released_module():
    """The released LiteMedSAM module, loaded once per process."""
    if not _RELEASED:
        _RELEASED.append(registry.load(BASE))
    return _RELEASED[0]


def semantic_model(fold: int, threads: int, runs: Path = SEMANTIC_RUNS):
    """The fold's effnet2-unet (``<runs>/fold<fold>``) as a Segmenter (weights checked against its run card's
    sha256), or None when the run is missing."""
    run = runs / f"fold{fold}"
    weights, card_file = run / "effnet2-unet.safetensors", run / "card.json"
    if not weights.is_file() or not card_file.is_file():
        return None
    sha = json.loads(card_file.read_text())["weights"]["sha256"]
    card = registry.card("effnet2-unet")
    module = registry.load_from_card(card, weights_path=weights, sha256=sha)
    return Segmenter.from_module(card, module, threads=threads)
