"""Every model that ships weights still segments: loaded through the live path's own code (``Segmenter.from_name``
with backend ``auto``, as the Slicer panel's worker loads it: ONNX Runtime on a CPU), it must find the nerve on
frames it was trained on. (The INT8 graphs that ``auto`` picks in ``demo``/``serve`` are checked against float32 by
benchmarks/int8/bench_int8.py, which the cards' ``int8`` blocks record.)

The bundled sample (Resources/Sample, 24 usgra-seg frames with masks) is part of every shipped model's training
data, so the floor is low on purpose: it does not measure accuracy, it catches weights that segment nothing
(issue 12: the shipped smistad-unet predicted background on every pixel while its card claimed a nerve Dice).
"""

from __future__ import annotations

import numpy as np
import pytest

from NerveSegLogic.models import registry

#: Mean nerve Dice over the frames below that a shipped model must exceed on its own training frames.
NERVE_DICE_FLOOR = 0.3
#: Sample frames with a nerve, spread over the sample's range.
FRAMES = ("0194", "0201", "0209", "0218")


def _shipped_live_models():
    # Promptable models (LiteMedSAM) need a box or clicks and do not segment a live frame on their own. Weights that
    # are a release download are checked where present (after 'nerveseg models fetch'; benchmarks/release/
    # release_weights.py check fetches them all and runs this file).
    return [card.name for card in registry.cards() if card.has_weights]


@pytest.fixture(scope="module")
def sample_frames(sample_dir):
    """{name: (image, mask)} of FRAMES, read by the project's own reader (masks: 1 nerve, 2 blood vessel)."""
    from NerveSegLogic.datasets.readers import open_dataset

    dataset = open_dataset(sample_dir)
    assert [c.key for c in dataset.classes] == ["nerve", "blood_vessel"]
    names = dataset.names()
    return {name: (dataset[names.index(name)].image, dataset[names.index(name)].mask) for name in FRAMES}


def test_at_least_one_model_ships_weights():
    assert _shipped_live_models(), "no live model card in Resources/Models lists weights"


def test_every_card_that_lists_weights_ships_them_or_says_where_to_fetch_them():
    missing = [f"{card.path}: weights.file {card.weights['file']!r}" for card in registry.cards(tasks=None)
               if card.weights and not (card.path.parent / card.weights["file"]).is_file() and not card.weights_url]
    assert not missing, "cards list weights that are neither in the repository nor a release download: " \
        + "; ".join(missing)


def test_the_default_live_model_ships_in_the_repository():
    """``make demo`` and the tests run offline on a fresh machine: the default's weights are not a download."""
    default = registry.card(registry.default_name())
    assert (default.path.parent / default.weights["file"]).is_file(), default.path


@pytest.mark.parametrize("name", _shipped_live_models())
def test_shipped_model_segments_its_training_frames(name, sample_frames):
    from NerveSegLogic.inference.segmenter import Segmenter
    from NerveSegLogic.train.metrics import dice

    segmenter = Segmenter.from_name(name, backend="auto", device="cpu", threads=1)
    nerve = next(c.label for c in segmenter.classes if c.key == "nerve")
    scores, found = [], []
    for frame in FRAMES:
        image, mask = sample_frames[frame]
        labelmap = segmenter.segment(image).labelmap
        assert labelmap.shape == mask.shape
        truth = mask == 1
        assert truth.any(), f"sample frame {frame} has no nerve labelled"
        scores.append(dice(labelmap == nerve, truth))
        found.append(int(np.count_nonzero(labelmap)))
    mean = float(np.mean(scores))
    assert mean > NERVE_DICE_FLOOR, (
        f"{name} ({segmenter.describe()}): mean nerve Dice {mean:.3f} on its training frames {FRAMES} is not above "
        f"{NERVE_DICE_FLOOR} (per frame {[round(s, 3) for s in scores]}, foreground pixels {found}); "
        f"the shipped weights do not segment")
