"""ReviewSession (the annotation panel's controller): every edit is in the store before the session moves."""

from __future__ import annotations

import numpy as np
import pytest

from NerveSegLogic.annotate.session import ReviewSession
from NerveSegLogic.store.database import AnnotationStore, ConflictError

SHAPE = (8, 10)
CLASSES = {1: "nerve", 2: "blood_vessel"}


@pytest.fixture
def store(tmp_path):
    with AnnotationStore(tmp_path / "review.nsdb") as s:
        yield s


def _prelabelled(store, n=3):
    ids = []
    for i in range(n):
        frame = store.add_frame(np.full(SHAPE, i + 1, np.uint8), "clip", i, subject="S1")
        mask = np.zeros(SHAPE, np.uint8)
        mask[1:3, 1:3] = 1
        store.save_mask(frame.id, mask, CLASSES, "runner", "model", None, model_name="smistad-unet",
                        uncertainty=0.1 * (i + 1))
        ids.append(frame.id)
    return ids


def test_session_follows_the_queue_and_shows_image_mask_geometry_and_history(store):
    ids = _prelabelled(store)
    session = ReviewSession(store, "alice")
    assert session.frame_ids == ids[::-1]  # most uncertain first
    shown = session.current()
    assert shown.frame_id == ids[2] and shown.position == 0 and shown.total == 3
    assert np.array_equal(shown.image, store.image(ids[2])) and shown.classes == CLASSES
    assert shown.status == "draft" and shown.geometry is None
    assert [h.author for h in shown.history] == ["runner"]
    assert "smistad-unet pre-label" in shown.history[0].describe()


def test_accept_with_an_edited_mask_saves_a_corrected_accepted_version_before_moving(store):
    ids = _prelabelled(store)
    session = ReviewSession(store, "alice", order="index")
    shown = session.current()
    edited = shown.mask.copy()
    edited[5:7, 5:8] = 2
    version = session.accept(edited)
    saved = store.current(ids[0])
    assert saved.id == version.id and (saved.origin, saved.status, saved.author) == ("corrected", "accepted", "alice")
    assert np.array_equal(saved.mask, edited) and saved.parent_id == shown.version.id
    assert session.current().frame_id == ids[1]
    # Unchanged accept: a status version on the same mask.
    plain = session.accept()
    assert (plain.origin, plain.status) == ("model", "accepted")
    assert session.current().frame_id == ids[2]


def test_every_move_saves_an_edit_first_and_unchanged_moves_save_nothing(store):
    ids = _prelabelled(store)
    session = ReviewSession(store, "bob", order="index")
    edited = session.current().mask.copy()
    edited[0, 0] = 1
    session.next(edited)  # next with an edit: saved as a draft before moving
    first = store.current(ids[0])
    assert (first.origin, first.status, first.author) == ("corrected", "draft", "bob")
    before = len(store.summaries())
    session.next()  # nothing changed: nothing written
    assert len(store.summaries()) == before and session.current().frame_id == ids[2]
    back = session.previous(session.current().mask.copy())
    assert back.frame_id == ids[1] and len(store.summaries()) == before
    skipped = back.mask.copy()
    skipped[7, 9] = 2
    session.skip(skipped)  # skipping does not drop the edit either
    assert np.array_equal(store.current(ids[1]).mask, skipped) and store.current(ids[1]).status == "draft"
    rejected = session.reject(comment="probe slipped")
    assert rejected.status == "rejected" and rejected.comment == "probe slipped"
    assert session.done and session.current() is None
    assert session.previous().frame_id == ids[2]


def test_unlabelled_frames_are_drawn_from_scratch_as_manual(store):
    frame = store.add_frame(np.zeros(SHAPE, np.uint8), "clip", 0)
    session = ReviewSession(store, "carol", classes={1: "nerve"})
    shown = session.current()
    assert shown.status == "unlabelled" and not shown.mask.any() and shown.classes == {1: "nerve"}
    drawn = shown.mask.copy()
    drawn[2:4, 2:4] = 1
    version = session.accept(drawn)
    assert (version.origin, version.status, version.parent_id) == ("manual", "accepted", None)
    assert store.current(frame.id).classes == {1: "nerve"}


def test_a_conflicting_save_keeps_the_session_on_the_frame_with_the_edit_in_hand(store):
    ids = _prelabelled(store, n=1)
    session = ReviewSession(store, "alice")
    shown = session.current()
    other = store.set_status(ids[0], "needs-review", "bob", shown.version.id, comment="check the vein")
    edited = shown.mask.copy()
    edited[6, 6] = 1
    with pytest.raises(ConflictError, match="bob") as caught:
        session.accept(edited)
    assert np.array_equal(caught.value.mask, edited)
    assert session.position == 0 and store.current(ids[0]).id == other.id
    reloaded = session.reload()
    assert reloaded.version.id == other.id and reloaded.history[-1].author == "bob"
    assert session.accept(edited).parent_id == other.id  # re-applied on top of bob's version
