"""The annotation panel's logic (ReviewController) on a real AnnotationStore and slicer-core MRML: frames shown in a
volume + segmentation node, edits read back and saved before every move, keys' actions, history, conflicts."""

from __future__ import annotations

import numpy as np
import pytest

from NerveSegLogic.store.database import AnnotationStore
from NerveSegLogic.classes import classes_from_mapping
from NerveSegLogic.annotate.review.controller import ReviewConflict, ReviewController
from NerveSegLogic.frame import ImageGeometry

pytest.importorskip("slicer")

CLASSES = {1: "nerve", 2: "blood_vessel"}
GEOMETRY = ImageGeometry(spacing=(0.2, 0.2, 1.0), origin=(5.0, -3.0, 0.0))


def disc(shape, centre, radius, label):
    rows, cols = np.ogrid[:shape[0], :shape[1]]
    mask = np.zeros(shape, dtype=np.uint8)
    mask[(rows - centre[0]) ** 2 + (cols - centre[1]) ** 2 <= radius ** 2] = label
    return mask


@pytest.fixture
def store_path(tmp_path):
    """Three frames: 1 and 2 pre-labelled by a model (draft), 3 unlabelled."""
    path = tmp_path / "project.db"
    rng = np.random.default_rng(3)
    with AnnotationStore(path) as store:
        for index in range(3):
            record = store.add_frame(rng.integers(0, 255, (40, 50), dtype=np.uint8), "scan-a", index,
                                     subject="S01", geometry=GEOMETRY)
            if index < 2:
                store.save_mask(record.id, disc((40, 50), (20, 25), 6, 1), CLASSES, "model", "model", None,
                                model_name="smistad-unet")
    return path


def paint(review: ReviewController, mask: np.ndarray) -> None:
    """What the annotator does in Segment Editor: change the segments of the shown segmentation node."""
    from NerveSegLogic.scene.annotation import load_frame

    item = review.current()
    load_frame(item.image, mask, GEOMETRY, classes_from_mapping(item.classes), mrml_scene=review.mrml_scene)


def new_scene():
    from NerveSegLogic.scene import mrml

    return mrml.new_scene()


def test_edits_are_saved_before_moving_and_decisions_recorded(store_path):
    review = ReviewController(new_scene())
    changes = []
    review.changed.connect(lambda r: changes.append(r.position_text()))
    review.open(str(store_path), "alice", order="index")
    first = review.current()
    assert first.record.index == 0
    assert np.array_equal(review.edited_mask(), first.mask)  # the stored mask is what is shown
    assert review.volume_node.GetSpacing() == pytest.approx(GEOMETRY.spacing)

    edited = disc((40, 50), (20, 25), 6, 1) | disc((40, 50), (8, 10), 4, 2)
    paint(review, edited)
    review.accept()  # Enter
    assert changes[-1].startswith("Frame 2 of 3")

    with AnnotationStore(store_path) as store:
        version = store.current(first.frame_id)
        assert version.status == "accepted" and version.origin == "corrected" and version.author == "alice"
        assert np.array_equal(version.mask, edited)

        second = review.current()
        review.next()  # no edit: nothing saved, just moves
        assert len(store.history(second.frame_id)) == 1

        third = review.current()
        assert third.status == "unlabelled"
        review.reject()
        assert store.current(third.frame_id).status == "rejected"

        review.previous()  # back to the third frame, which now shows alice's rejection
        assert review.current().frame_id == third.frame_id
        paint(review, disc((40, 50), (30, 30), 5, 2))
        review.previous()  # moving saves the edit first, as a draft
        saved = store.current(third.frame_id)
        assert saved.status == "draft" and np.array_equal(saved.mask, disc((40, 50), (30, 30), 5, 2))
    rows = review.history_rows()
    assert rows[0] == ("Version", "When (UTC)", "Who", "Change") and len(rows) == 2  # frame 2: the model's pre-label
    queue = review.queue_rows()
    assert [row[2] for row in queue[1:]] == ["accepted", "draft", "draft"]
    assert queue[2][0].startswith(">")  # the current frame is marked
    review.close()
    assert review.position_text() == "No store open"


def test_a_conflicting_save_keeps_the_edit_on_screen_and_a_second_accept_saves_it(store_path):
    review = ReviewController(new_scene())
    review.open(str(store_path), "alice", order="index")
    shown = review.current()
    edit = disc((40, 50), (15, 15), 7, 1)
    paint(review, edit)
    with AnnotationStore(store_path) as other:  # bob saves the same frame meanwhile
        bob = other.set_status(shown.frame_id, "needs-review", "bob", other.current(shown.frame_id).id)
    with pytest.raises(ReviewConflict, match="bob"):
        review.accept()
    assert review.current().frame_id == shown.frame_id  # did not move
    assert np.array_equal(review.edited_mask(), edit)  # alice's edit is still on screen
    review.accept()  # now based on bob's version
    with AnnotationStore(store_path) as store:
        version = store.current(shown.frame_id)
        assert version.parent_id == bob.id and version.author == "alice" and np.array_equal(version.mask, edit)
    review.close()


def test_open_needs_a_store_and_an_author(store_path):
    review = ReviewController(new_scene())
    with pytest.raises(ValueError, match="store file"):
        review.open("", "alice")
    with pytest.raises(ValueError, match="author"):
        review.open(str(store_path), "  ")
    with pytest.raises(RuntimeError, match="open an annotation store first"):
        review.accept()
