"""The review queue puts the most uncertain frames first, by entropies and Dice worked out by hand."""

from __future__ import annotations

import math
from types import SimpleNamespace

import numpy as np
import pytest

from NerveSegLogic.annotate.prelabel import prelabel
from NerveSegLogic.annotate.queue import dice, review_queue
from NerveSegLogic.store.database import AnnotationStore
from NerveSegLogic.classes import classes_from_mapping

SHAPE = (4, 4)


class FixedProbabilities:
    """Stands in for a Segmenter: gives a prepared probability map per frame (keyed by the image's first pixel)."""

    def __init__(self, maps, name="stand-in"):
        self.maps = maps
        self.classes = classes_from_mapping({1: "nerve", 2: "blood_vessel"})
        self.card = SimpleNamespace(name=name)
        self.card_sha256 = "0" * 64

    def segment(self, image):
        p = self.maps[int(image[0, 0])]
        return SimpleNamespace(labelmap=p.argmax(axis=0).astype(np.uint8), probabilities=p,
                               model_name=self.card.name)


def _constant(*probabilities):
    return np.stack([np.full(SHAPE, v, dtype=np.float32) for v in probabilities])


def test_queue_orders_by_hand_computed_mean_entropy(tmp_path):
    half = _constant(1.0, 0.0, 0.0)
    half[:, 2:, :] = 1.0 / 3.0  # bottom half uniform over 3 classes
    maps = {
        10: _constant(0.5, 0.5, 0.0),  # H = ln 2 = 0.693147 everywhere
        20: half,  # H = (0 + ln 3) / 2 = 0.549306
        30: _constant(0.8, 0.1, 0.1),  # H = -(0.8 ln 0.8 + 2 * 0.1 ln 0.1) = 0.639032
    }
    expected = {10: 0.693147, 20: 0.549306, 30: 0.639032}
    with AnnotationStore(tmp_path / "q.nsdb") as store:
        ids = {level: store.add_frame(np.full(SHAPE, level, np.uint8), "clip", i).id
               for i, level in enumerate((10, 20, 30))}
        prelabel(store, FixedProbabilities(maps), author="runner", progress=False)
        unlabelled = store.add_frame(np.full(SHAPE, 40, np.uint8), "clip", 3).id
        decided = store.add_frame(np.full(SHAPE, 50, np.uint8), "clip", 4).id
        v = store.save_mask(decided, np.zeros(SHAPE, np.uint8), {1: "nerve"}, "a", "manual", None)
        store.set_status(decided, "accepted", "b", v.id)

        queue = review_queue(store)
        assert [e.frame_id for e in queue] == [ids[10], ids[30], ids[20], unlabelled]  # accepted frame left out
        for e in queue[:3]:
            level = next(k for k, i in ids.items() if i == e.frame_id)
            assert e.uncertainty == pytest.approx(expected[level], abs=1e-6)
            assert e.score == pytest.approx(expected[level] / math.log(3), abs=1e-6)  # 3 classes with background
            assert e.status == "draft" and e.disagreement is None
        assert queue[-1].status == "unlabelled" and queue[-1].score is None
        by_index = review_queue(store, order="index")
        assert [e.index for e in by_index] == [0, 1, 2, 3]
        with pytest.raises(ValueError, match="order"):
            review_queue(store, order="random")


def test_two_models_rank_a_frame_by_their_disagreement(tmp_path):
    a = np.zeros(SHAPE, np.uint8)
    a[0, :] = 1  # 4 nerve pixels
    b = np.zeros(SHAPE, np.uint8)
    b[0, :2] = 1  # 2 of them: Dice = 2*2 / (4 + 2) = 2/3
    with AnnotationStore(tmp_path / "q.nsdb") as store:
        confident = store.add_frame(np.full(SHAPE, 1, np.uint8), "clip", 0).id
        store.save_mask(confident, a, {1: "nerve"}, "r", "model", None, model_name="m1", uncertainty=0.11)
        disputed = store.add_frame(np.full(SHAPE, 2, np.uint8), "clip", 1).id
        first = store.save_mask(disputed, a, {1: "nerve"}, "r", "model", None, model_name="m1", uncertainty=0.01)
        store.save_mask(disputed, b, {1: "nerve"}, "r", "model", first.id, model_name="m2", uncertainty=0.01)
        queue = review_queue(store)
        assert [e.frame_id for e in queue] == [disputed, confident]
        assert queue[0].disagreement == pytest.approx(1 / 3)
        assert queue[0].score == pytest.approx(1 / 3)
        assert queue[1].score == pytest.approx(0.11 / math.log(2))


def test_dice_over_classes_present():
    x = np.array([[1, 1, 2, 0]])
    y = np.array([[1, 0, 2, 2]])
    # nerve: 2*1/(2+1) = 2/3; vessel: 2*1/(1+2) = 2/3
    assert dice(x, y) == pytest.approx(2 / 3)
    assert dice(np.zeros((2, 2)), np.zeros((2, 2))) == 1.0
