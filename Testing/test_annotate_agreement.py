"""Agreement between annotators: Dice per class per frame and per class, within a store and between two stores."""

from __future__ import annotations

import json

import numpy as np
import pytest

from NerveSegLogic.annotate.agreement import agreement, agreement_between_stores
from NerveSegLogic.store.database import AnnotationStore

SHAPE = (6, 6)


def _mask(nerve=(), vessel=()):
    m = np.zeros(SHAPE, np.uint8)
    for r, c in nerve:
        m[r, c] = 1
    for r, c in vessel:
        m[r, c] = 2
    return m


def test_dice_per_class_between_annotators_in_one_store(tmp_path):
    with AnnotationStore(tmp_path / "a.nsdb") as store:
        frame = store.add_frame(np.zeros(SHAPE, np.uint8), "s", 0)
        model = store.save_mask(frame.id, _mask(nerve=[(0, 0)]), {1: "nerve"}, "runner", "model", None,
                                model_name="m")
        # alice: 4 nerve pixels, 2 vessel pixels
        alice = store.save_mask(frame.id, _mask(nerve=[(0, 0), (0, 1), (1, 0), (1, 1)], vessel=[(4, 4), (4, 5)]),
                                {1: "nerve", 2: "blood_vessel"}, "alice", "corrected", model.id)
        # bob keeps 2 of alice's nerve pixels, vessel numbered 3 ("vessel" is an alias of blood_vessel)
        bob_mask = _mask(nerve=[(0, 0), (0, 1)])
        bob_mask[4, 4] = 3
        bob = store.save_mask(frame.id, bob_mask, {1: "nerve", 3: "vessel"}, "bob", "corrected", alice.id)
        store.set_status(frame.id, "accepted", "carol", bob.id)  # carol accepts bob's mask: it is hers too
        other = store.add_frame(np.ones(SHAPE, np.uint8), "s", 1)  # model only: not compared
        store.save_mask(other.id, _mask(), {1: "nerve"}, "runner", "model", None, model_name="m")

        report = agreement(store)
    pairs = {f.raters: f.dice for f in report.frames}
    assert set(pairs) == {("alice", "bob"), ("alice", "carol"), ("bob", "carol")}
    # nerve: 2*2 / (4 + 2) = 0.667; vessel: 2*1 / (2 + 1) = 0.667
    assert pairs[("alice", "bob")] == pytest.approx({"blood_vessel": 2 / 3, "nerve": 2 / 3})
    assert pairs[("bob", "carol")] == pytest.approx({"blood_vessel": 1.0, "nerve": 1.0})
    summary = report.per_class()
    assert summary["nerve"]["frames"] == 3 and summary["nerve"]["mean"] == pytest.approx((2 / 3 + 2 / 3 + 1) / 3)
    table = report.table()
    assert "alice vs bob" in table and "0.667" in table and "mean" in table
    assert json.loads(report.to_json())["frames_compared"] == 3


def test_a_rejection_withdraws_that_annotators_label(tmp_path):
    with AnnotationStore(tmp_path / "a.nsdb") as store:
        frame = store.add_frame(np.zeros(SHAPE, np.uint8), "s", 0)
        a = store.save_mask(frame.id, _mask(nerve=[(0, 0)]), {1: "nerve"}, "alice", "manual", None)
        b = store.save_mask(frame.id, _mask(nerve=[(0, 0)]), {1: "nerve"}, "bob", "corrected", a.id)
        store.set_status(frame.id, "rejected", "alice", b.id)
        assert agreement(store).frames == []


def test_agreement_between_two_annotators_stores_matches_frames_by_pixels(tmp_path):
    image = np.arange(36, dtype=np.uint8).reshape(SHAPE)
    with AnnotationStore(tmp_path / "alice.nsdb") as sa, AnnotationStore(tmp_path / "bob.nsdb") as sb:
        sa.add_frame(np.zeros(SHAPE, np.uint8), "filler", 0)  # ids differ between the stores
        fa = sa.add_frame(image, "clip", 3)
        fb = sb.add_frame(image.copy(), "clip", 3)
        sa.save_mask(fa.id, _mask(nerve=[(1, 1), (1, 2)]), {1: "nerve"}, "alice", "manual", None)
        sb.save_mask(fb.id, _mask(nerve=[(1, 1)]), {1: "nerve"}, "bob", "manual", None)
        report = agreement_between_stores(sa, sb)
    assert len(report.frames) == 1 and report.frames[0].frame_id == fa.id
    assert report.frames[0].raters == ("alice@alice.nsdb", "bob@bob.nsdb")
    assert report.frames[0].dice == {"nerve": pytest.approx(2 / 3)}  # 2*1 / (2 + 1)
