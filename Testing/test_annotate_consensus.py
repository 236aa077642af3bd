"""Consensus of several annotators (issue 26 item 4): the latest accepted masks of different authors merged per
class (STAPLE or majority) into an accepted 'consensus' version that names its sources; each annotator's
sensitivity and specificity against it; frames with one author listed and left alone; export --prefer consensus.
Checked on the masks SAVED and exported."""

from __future__ import annotations

import numpy as np
import pytest

from NerveSegLogic.annotate.consensus import consensus, consensus_sources, merge
from NerveSegLogic.store.database import AnnotationStore

H, W = 30, 40


def square(x0, y0, x1, y1, label=1):
    mask = np.zeros((H, W), np.uint8)
    mask[y0:y1, x0:x1] = label
    return mask


def label(store, frame_id, author, mask, classes=None):
    """``author`` saves ``mask`` and accepts it (on top of whatever the frame holds)."""
    head = store.current(frame_id)
    version = store.save_mask(frame_id, mask, classes or {1: "nerve"}, author, "manual",
                              None if head is None else head.id)
    return store.set_status(frame_id, "accepted", author, version.id)


@pytest.fixture
def store(tmp_path):
    with AnnotationStore(tmp_path / "p.nsdb") as s:
        yield s


def frame(store, seed):
    return store.add_frame(np.random.default_rng(seed).integers(0, 255, (H, W), dtype=np.uint8), "scan", seed).id


def test_majority_merges_three_authors_and_records_its_sources(store):
    f = frame(store, 0)
    a = label(store, f, "alice", square(10, 10, 20, 20))
    b = label(store, f, "bob", square(12, 10, 22, 20))
    c = label(store, f, "carol", square(14, 10, 24, 20))
    report = consensus(store, "lead", method="majority")
    version = store.current(f)
    np.testing.assert_array_equal(version.mask, square(12, 10, 22, 20))  # pixels two of three drew
    assert version.origin == "consensus" and version.status == "accepted" and version.author == "lead"
    assert version.classes == {1: "nerve"}
    assert consensus_sources(version) == {"method": "majority", "sources": [
        {"author": "alice", "version": a.id}, {"author": "bob", "version": b.id}, {"author": "carol", "version": c.id}]}
    assert [(m.frame_id, m.version_id) for m in report.merged] == [(f, version.id)]
    scores = report.rater_scores()
    assert scores["bob"]["nerve"]["sensitivity"] == 1.0 and scores["bob"]["nerve"]["specificity"] == 1.0
    # alice: 80 of the consensus's 100 pixels; 20 false among the 1100 background pixels
    assert scores["alice"]["nerve"]["sensitivity"] == pytest.approx(0.8)
    assert scores["alice"]["nerve"]["specificity"] == pytest.approx(1 - 20 / (H * W - 100))


def test_staple_keeps_what_the_reliable_raters_agree_on(store):
    f = frame(store, 1)
    label(store, f, "alice", square(10, 10, 20, 20))
    label(store, f, "bob", square(10, 10, 20, 20) | square(25, 5, 28, 8))
    label(store, f, "carol", square(10, 10, 20, 20) | square(2, 2, 5, 5))
    report = consensus(store, "lead", method="staple")
    np.testing.assert_array_equal(store.current(f).mask, square(10, 10, 20, 20))
    estimates = report.merged[0].staple["nerve"]
    assert len(estimates["sensitivity"]) == 3 and min(estimates["sensitivity"]) > 0.9  # STAPLE's own estimates
    assert consensus_sources(store.current(f))["method"] == "staple"


def test_classes_merge_by_key_and_a_second_class_is_kept(store):
    f = frame(store, 2)
    label(store, f, "alice", square(5, 5, 15, 15, 1) + square(25, 5, 35, 15, 2), {1: "nerve", 2: "blood_vessel"})
    label(store, f, "bob", square(5, 5, 15, 15, 2) + square(25, 5, 35, 15, 1), {2: "nerve", 1: "blood_vessel"})
    consensus(store, "lead", method="majority")
    version = store.current(f)
    assert version.classes == {1: "nerve", 2: "blood_vessel"}  # the first author's numbering
    np.testing.assert_array_equal(version.mask, square(5, 5, 15, 15, 1) + square(25, 5, 35, 15, 2))


def test_frames_with_one_author_are_listed_and_left_alone_and_a_rerun_adds_nothing(store):
    single, double = frame(store, 3), frame(store, 4)
    kept = label(store, single, "alice", square(10, 10, 20, 20))
    label(store, double, "alice", square(10, 10, 20, 20))
    label(store, double, "bob", square(10, 10, 20, 21))
    report = consensus(store, "lead")
    assert report.single_author == [(single, "alice")]
    assert store.current(single).id == kept.id  # untouched
    first = store.current(double)
    again = consensus(store, "lead")
    assert store.current(double).id == first.id and again.merged[0].version_id is None  # already up to date
    assert "1 already up to date" in again.table() and "one author, left alone" in again.table()
    label(store, double, "carol", square(0, 0, 5, 5))  # a new label: the consensus is made again
    third = consensus(store, "lead", method="majority")
    assert third.merged[0].version_id is not None
    assert [a for a, _ in third.merged[0].sources] == ["alice", "bob", "carol"]


def test_drafts_models_and_withdrawn_labels_are_not_sources(store):
    f = frame(store, 5)
    label(store, f, "alice", square(10, 10, 20, 20))
    head = store.current(f)
    store.save_mask(f, square(0, 0, 30, 30), {1: "nerve"}, "bob", "manual", head.id)  # bob's draft: not accepted
    rejected = label(store, f, "carol", square(0, 0, 5, 5))
    store.set_status(f, "rejected", "carol", rejected.id)  # carol withdraws hers
    report = consensus(store, "lead")
    assert report.merged == [] and report.single_author == [(f, "alice")]


def test_export_prefer_consensus_takes_the_consensus_over_a_later_accept(store, tmp_path):
    from NerveSegLogic.datasets.export import frames_from_store

    f = frame(store, 6)
    label(store, f, "alice", square(10, 10, 20, 20))
    label(store, f, "bob", square(12, 10, 22, 20))
    consensus(store, "lead", method="majority")
    merged = store.current(f)
    label(store, f, "alice", square(0, 0, 8, 8))  # alice accepts her own new mask afterwards
    (plain,) = frames_from_store(store)
    (preferred,) = frames_from_store(store, prefer="consensus")
    np.testing.assert_array_equal(plain.load()[1], square(0, 0, 8, 8))
    np.testing.assert_array_equal(preferred.load()[1], merged.mask)
    assert preferred.version_id == merged.id and preferred.origin == "consensus"
    with pytest.raises(ValueError, match="--prefer 'newest' unknown"):
        frames_from_store(store, prefer="newest")


def test_cli_consensus_and_export_prefer(tmp_path, capsys):
    from NerveSegLogic.cli import main

    path = tmp_path / "p.nsdb"
    with AnnotationStore(path) as s:
        f = frame(s, 7)
        label(s, f, "alice", square(10, 10, 20, 20))
        label(s, f, "bob", square(12, 10, 22, 20))
        g = frame(s, 8)
        label(s, g, "alice", square(1, 1, 9, 9))
    assert main(["annotate", "consensus", "--store", str(path), "--method", "majority", "--author", "lead"]) == 0
    out = capsys.readouterr().out
    assert "majority consensus: 1 frame(s) merged" in out and f"{g} (alice)" in out and "sensitivity" in out
    with AnnotationStore(path) as s:
        expected = s.current(f).mask
        label(s, f, "bob", square(0, 0, 4, 4))
    out_dir = tmp_path / "export"
    assert main(["export", "--store", str(path), "--format", "masks", "--out", str(out_dir), "--prefer", "consensus",
                 "--split", "100,0,0", "--no-progress"]) == 0
    import json

    manifest = json.loads((out_dir / "manifest.json").read_text())
    entries = {e["frame_id"]: e for e in manifest["frames"]}
    assert entries[f]["origin"] == "consensus"
    from PIL import Image

    (mask_file,) = [out_dir / name for name in entries[f]["files"] if "/masks/" in name]
    np.testing.assert_array_equal(np.array(Image.open(mask_file)) > 0, expected > 0)  # not bob's later mask


def test_merge_refuses_one_mask_and_an_unknown_method():
    with pytest.raises(ValueError, match="at least two masks"):
        merge([square(1, 1, 3, 3)], [{1: "nerve"}])
    with pytest.raises(ValueError, match="method 'mean' unknown"):
        merge([square(1, 1, 3, 3)] * 2, [{1: "nerve"}] * 2, method="mean")
