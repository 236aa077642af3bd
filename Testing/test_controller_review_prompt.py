"""The review panel's prompt tool through the ReviewController, on slicer-core's MRML (issue 15): the annotator
places a box (markups ROI) and clicks (include/exclude point lists) on the frame in RAS; the segmentation node then
shows the class's mask from the promptable model; Accept saves it as a 'prompt' version with its prompts, and the
next frame starts without prompts. The model is a tiny random LiteMedSAM (tiny_promptable.py): the test checks the
path and the pixels it moves, not the model's accuracy (benchmarks/prompted.md has that)."""

from __future__ import annotations

import numpy as np
import pytest

from NerveSegLogic.annotate.prompt import FramePrompter
from NerveSegLogic.annotate.store import AnnotationStore
from NerveSegLogic.inference.promptable import PromptableSegmenter
from NerveSegLogic.review_controller import ReviewController
from slicerlike import slicer_scene
from tiny_promptable import CountingModel, frame, install_tiny_promptable


@pytest.fixture
def store_path(tmp_path):
    path = tmp_path / "p.nsdb"
    with AnnotationStore(path) as store:
        for i in range(2):
            store.add_frame(frame(seed=i), "clip", i)
    return path


@pytest.fixture
def tiny(tmp_path, monkeypatch):
    install_tiny_promptable(tmp_path / "Resources", monkeypatch)
    return CountingModel(PromptableSegmenter.from_name("litemedsam", backend="torch", threads=1))


def session_factory(path, author, order):
    """The panel's session (the tiny model's Resources folder has no default live model to take classes from)."""
    from NerveSegLogic.annotate.session import ReviewSession

    return ReviewSession(AnnotationStore(path), author, order=order, classes={1: "nerve", 2: "blood_vessel"})


def ras_of(volume_node, i, j):
    from vtkmodules.vtkCommonMath import vtkMatrix4x4

    m = vtkMatrix4x4()
    volume_node.GetIJKToRASMatrix(m)
    return m.MultiplyPoint((float(i), float(j), 0.0, 1.0))[:3]


def test_box_and_clicks_placed_in_the_view_update_the_segment_and_accept_saves_a_prompt_version(store_path, tiny):
    review = ReviewController(slicer_scene(), session_factory=session_factory)
    review.open(str(store_path), "ana", order="index")
    first = review.current()
    roi, include, exclude = review.start_prompts("nerve", model=tiny)
    volume = review.volume_node
    corner0, corner1 = np.array(ras_of(volume, 10, 8)), np.array(ras_of(volume, 38, 30))
    roi.SetXYZ(*((corner0 + corner1) / 2))
    roi.SetRadiusXYZ(*(np.abs(corner1 - corner0) / 2 + [0, 0, 0.5]))
    include.AddControlPoint(*ras_of(volume, 20, 20))
    shown = review.prompt_changed()

    expected = FramePrompter(review.session.store, tiny).predict(first.frame_id, (10, 8, 38, 30), [(20, 20, True)])
    np.testing.assert_array_equal(shown == 1, expected)
    np.testing.assert_array_equal(review.edited_mask(), shown)  # what the segmentation node holds now
    exclude.AddControlPoint(*ras_of(volume, 30, 25))
    shown = review.prompt_changed()
    expected = FramePrompter(review.session.store, tiny).predict(
        first.frame_id, (10, 8, 38, 30), [(20, 20, True), (30, 25, False)])
    np.testing.assert_array_equal(shown == 1, expected)

    review.accept()
    store = review.session.store
    version = store.current(first.frame_id)
    assert version.origin == "prompt" and version.status == "accepted" and version.author == "ana"
    np.testing.assert_array_equal(store.version(version.id).mask, shown)
    saved = store.prompts(version.id)
    assert [list(map(round, p[:2])) + [p[2]] for p in saved["points"]] == [[20, 20, True], [30, 25, False]]
    assert review.current().frame_id != first.frame_id  # moved on
    assert roi.GetNumberOfControlPoints() == 0 and include.GetNumberOfControlPoints() == 0
    assert tiny.embeds >= 1
    review.close()


def test_painting_over_the_prompt_saves_a_corrected_version_instead(store_path, tiny):
    review = ReviewController(slicer_scene(), session_factory=session_factory)
    review.open(str(store_path), "ana", order="index")
    first = review.current()
    _, include, _ = review.start_prompts("nerve", model=tiny)
    include.AddControlPoint(*ras_of(review.volume_node, 20, 20))
    shown = review.prompt_changed()
    painted = shown.copy()
    painted[:3, :3] = 2  # the annotator paints a vessel corner with the Segment Editor
    review.show(mask=painted)
    review.accept()
    version = review.session.store.current(first.frame_id)
    assert version.origin in ("corrected", "manual") and review.session.store.prompts(version.id) is None
    review.close()
