"""The review panel's prompt tool (NerveSegLogic.annotate.review.prompts): box and clicks on the session's frame give the
new labelmap; Accept saves a 'prompt' version through the session's store and moves on; frames ahead are embedded
in the background."""

import numpy as np
import pytest

from NerveSegLogic.annotate.prompt import FramePrompter
from NerveSegLogic.annotate.session import ReviewSession
from NerveSegLogic.store.database import AnnotationStore, ConflictError
from NerveSegLogic.inference.promptable import PromptableSegmenter
from NerveSegLogic.annotate.review.prompts import ReviewPrompt
from tiny_promptable import CountingModel, frame, install_tiny_promptable


@pytest.fixture
def tiny(tmp_path, monkeypatch):
    install_tiny_promptable(tmp_path / "Resources", monkeypatch)
    return CountingModel(PromptableSegmenter.from_name("litemedsam", backend="torch", threads=1))


@pytest.fixture
def session(tmp_path):
    with AnnotationStore(tmp_path / "p.nsdb") as store:
        ids = [store.add_frame(frame(seed=i), "clip", i).id for i in range(3)]
        mask = np.zeros((40, 48), np.uint8)
        mask[:4, :4] = 2
        store.save_mask(ids[0], mask, {2: "blood_vessel"}, "model-bot", "model", None, model_name="unet")
        yield ReviewSession(store, "ana", order="index", classes={1: "nerve", 2: "blood_vessel"})


def expected_region(session, model, box=None, points=()):
    return FramePrompter(session.store, model).predict(session.current().frame_id, box, points)


def test_box_and_clicks_return_the_shown_mask_with_the_class_replaced(session, tiny):
    prompts = ReviewPrompt(session, tiny, class_key="nerve", prefetch=0)
    shown = session.current()
    assert prompts.frame_id == shown.frame_id and prompts.preview is None
    labelmap = prompts.set_box(38, 30, 10, 8)  # an ROI dragged past its corner: normalised
    assert prompts.box == (10, 8, 38, 30)
    region = expected_region(session, tiny, (10, 8, 38, 30))
    np.testing.assert_array_equal(labelmap == 1, region)
    np.testing.assert_array_equal(labelmap[~region], shown.mask[~region])  # the vessel stays where not drawn over
    index, labelmap = prompts.add_point(20, 20, include=True)
    assert index == 0 and prompts.points == [(20.0, 20.0, True)]
    np.testing.assert_array_equal(labelmap == 1, expected_region(session, tiny, (10, 8, 38, 30), [(20, 20, True)]))
    labelmap = prompts.move_point(0, 25, 22, include=False)
    np.testing.assert_array_equal(labelmap == 1,
                                  expected_region(session, tiny, (10, 8, 38, 30), [(25, 22, False)]))
    labelmap = prompts.remove_point(0)
    np.testing.assert_array_equal(labelmap == 1, region)
    with pytest.raises(IndexError, match="no click 3"):
        prompts.move_point(3, 1, 1)
    assert prompts.clear_box() is None and prompts.preview is None  # nothing usable left: no preview
    assert prompts.add_point(5, 5, include=False)[1] is None  # an exclude click alone draws nothing
    assert tiny.embeds == 1  # every call after the first ran the decoder only


def test_accept_saves_a_prompt_version_and_moves_to_the_next_frame(session, tiny):
    prompts = ReviewPrompt(session, tiny, class_key="blood_vessel", prefetch=0)
    first = session.current()
    labelmap = prompts.set_box(10, 8, 38, 30)
    prompts.add_point(20, 20, include=True)
    version = prompts.accept(comment="vessel from a box")
    assert version.origin == "prompt" and version.status == "accepted" and version.author == "ana"
    assert version.parent_id == first.version.id and version.comment == "vessel from a box"
    np.testing.assert_array_equal(version.mask, prompts.session.store.version(version.id).mask)
    assert session.store.prompts(version.id)["points"] == [[20.0, 20.0, True]]
    assert session.position == 1 and prompts.frame_id == session.current().frame_id
    assert prompts.box is None and prompts.points == []  # a new frame starts without prompts
    assert labelmap is not None


def test_save_stays_on_the_frame_and_a_stale_frame_is_a_conflict(session, tiny):
    prompts = ReviewPrompt(session, tiny, class_key="nerve", prefetch=0)
    with pytest.raises(ValueError, match="place a box or an include click"):
        prompts.save()
    prompts.set_box(10, 8, 38, 30)
    saved = prompts.save()
    assert saved.status == "draft" and session.current().version.id == saved.id and session.position == 0
    # Someone else saves the frame meanwhile: this panel's next save is refused, nothing is lost.
    other = session.store.set_status(saved.frame_id, "needs-review", "bob", saved.id)
    prompts.set_box(0, 0, 47, 39)  # a new box: a different mask
    with pytest.raises(ConflictError):
        prompts.save()
    assert session.store.current(saved.frame_id).id == other.id


def test_frames_ahead_are_embedded_in_the_background(session, tiny):
    prompts = ReviewPrompt(session, tiny, class_key="nerve", prefetch=2)
    thread = prompts._background[0]
    thread.join(timeout=60)
    assert all(prompts.prompter.cached(frame_id) for frame_id in session.frame_ids[:3])
    prompts.set_box(10, 8, 38, 30)
    prompts.close()
    assert tiny.embeds == 3  # the three frames once each, the prompt on the first reused its embedding
