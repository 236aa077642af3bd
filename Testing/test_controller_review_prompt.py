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


# ------------------------------------------------------------------------------ issue 30 item 7: scene close, placing
def place_box(review, roi, corner0=(10, 8), corner1=(38, 30)):
    """What the annotator's box placement leaves in the ROI node."""
    volume = review.volume_node
    c0, c1 = np.array(ras_of(volume, *corner0)), np.array(ras_of(volume, *corner1))
    roi.SetXYZ(*((c0 + c1) / 2))
    roi.SetRadiusXYZ(*(np.abs(c1 - c0) / 2 + [0, 0, 0.5]))


def application_nodes(scene):
    """The selection and interaction nodes Slicer's application logic keeps in every scene (singletons)."""
    import slicer

    selection = scene.AddNode(slicer.vtkMRMLSelectionNode())
    interaction = scene.AddNode(slicer.vtkMRMLInteractionNode())
    return selection, interaction


def test_after_close_scene_the_prompt_markups_are_made_again_and_work(store_path, tiny):
    """File > Close Scene removes every node; the panel closes the review (onSceneStartClose). Prompting again must
    not activate the dead markups: new ones are in the scene, and clicks in them run the prompt."""
    scene = slicer_scene()
    review = ReviewController(scene, session_factory=session_factory)
    review.open(str(store_path), "ana", order="index")
    old = review.start_prompts("nerve", model=tiny)
    assert review.prompt_nodes_in_scene()

    scene.Clear(0)  # File > Close Scene
    assert not review.prompt_nodes_in_scene()
    assert all(node.GetScene() is None for node in old)
    with pytest.raises(RuntimeError, match="start the prompt tool first"):
        review.prompt_changed()  # observers of dead markups must not draw into a closed scene
    review.close()  # what the panel does on StartCloseEvent

    review.open(str(store_path), "ana", order="index")
    roi, include, exclude = new = review.start_prompts("nerve", model=tiny)
    assert review.prompt_nodes_in_scene()
    assert all(scene.IsNodePresent(node) for node in new)
    assert not any(a is b for a, b in zip(old, new))
    assert [n.GetName() for n in new] == [n.GetName() for n in old]
    include.AddControlPoint(*ras_of(review.volume_node, 20, 20))
    shown = review.prompt_changed()
    expected = FramePrompter(review.session.store, tiny).predict(review.current().frame_id, None, [(20, 20, True)])
    np.testing.assert_array_equal(shown == 1, expected)
    review.close()


def test_the_cached_markups_are_replaced_even_without_closing_the_review(store_path, tiny):
    """Prompt markups deleted by hand (or a scene cleared by a script) are re-created on the next prompt."""
    scene = slicer_scene()
    review = ReviewController(scene, session_factory=session_factory)
    review.open(str(store_path), "ana", order="index")
    roi, include, exclude = review.start_prompts("nerve", model=tiny)
    scene.RemoveNode(exclude)
    again = review.start_prompts("nerve", model=tiny)
    assert again[0] is roi and again[1] is include  # the ones still there are reused (found by name)
    assert again[2] is not exclude and scene.IsNodePresent(again[2])
    review.close()


def test_box_then_include_clicks_persistently_and_exclude_clicks_from_their_own_button(store_path, tiny):
    """"Box and clicks": the ROI once (place mode ends after it), then include clicks in persistent place mode (each
    click another point, no button press between); "Exclude clicks": exclude clicks, persistent too."""
    scene = slicer_scene()
    selection, interaction = application_nodes(scene)
    review = ReviewController(scene, session_factory=session_factory)
    review.open(str(store_path), "ana", order="index")
    roi, include, exclude = review.start_prompts("nerve", model=tiny)
    started = []
    # the panel observes EndPlacementEvent and calls placement_ended (deferred by a zero timer in Slicer)
    interaction.AddObserver(interaction.EndPlacementEvent,
                            lambda caller, event: started.append(review.placement_ended(selection, interaction)))

    assert review.place_prompts("auto", selection, interaction) == "box"
    assert selection.GetActivePlaceNodeID() == roi.GetID()
    assert selection.GetActivePlaceNodeClassName() == "vtkMRMLMarkupsROINode"
    assert interaction.GetCurrentInteractionMode() == interaction.Place and not interaction.GetPlaceModePersistence()

    place_box(review, roi)  # the annotator draws the box; Slicer then leaves single place mode
    interaction.SetCurrentInteractionMode(interaction.ViewTransform)
    assert started == ["include"]
    assert selection.GetActivePlaceNodeID() == include.GetID()
    assert selection.GetActivePlaceNodeClassName() == "vtkMRMLMarkupsFiducialNode"
    assert interaction.GetCurrentInteractionMode() == interaction.Place and interaction.GetPlaceModePersistence()

    for i, j in ((20, 20), (24, 18)):  # two clicks, one placement
        include.AddControlPoint(*ras_of(review.volume_node, i, j))
    interaction.SetCurrentInteractionMode(interaction.ViewTransform)  # Esc: the clicks end, nothing starts
    assert started == ["include", None] and interaction.GetCurrentInteractionMode() == interaction.ViewTransform

    assert review.place_prompts("auto", selection, interaction) == "include"  # the box is there: more clicks
    assert review.place_prompts("exclude", selection, interaction) == "exclude"
    assert selection.GetActivePlaceNodeID() == exclude.GetID() and interaction.GetPlaceModePersistence()
    exclude.AddControlPoint(*ras_of(review.volume_node, 30, 25))
    interaction.SetCurrentInteractionMode(interaction.ViewTransform)
    assert started[-1] is None

    shown = review.prompt_changed()
    box, points = review.prompts.box, review.prompts.points
    assert [p[2] for p in points] == [True, True, False]  # the exclude click reached the prompt
    expected = FramePrompter(review.session.store, tiny).predict(review.current().frame_id, box, points)
    np.testing.assert_array_equal(shown == 1, expected)
    with pytest.raises(ValueError, match="expected one of"):
        review.place_prompts("lasso", selection, interaction)
    review.close()


def test_a_cancelled_box_starts_no_clicks(store_path, tiny):
    scene = slicer_scene()
    selection, interaction = application_nodes(scene)
    review = ReviewController(scene, session_factory=session_factory)
    review.open(str(store_path), "ana", order="index")
    review.start_prompts("nerve", model=tiny)
    review.place_prompts("auto", selection, interaction)
    interaction.SetCurrentInteractionMode(interaction.ViewTransform)  # Esc before the box was drawn
    assert review.placement_ended(selection, interaction) is None
    assert interaction.GetCurrentInteractionMode() == interaction.ViewTransform and review.placing is None
    review.close()


def test_moving_to_another_frame_ends_the_prompt_placement_but_not_someone_elses(store_path, tiny):
    """After Accept/Next the panel calls end_placement: persistent include clicks must not go on into the next frame
    (its prompts start empty), and the box must not be followed by clicks there. Place mode for another markups node
    (the Markups module) is left alone."""
    import slicer

    scene = slicer_scene()
    selection, interaction = application_nodes(scene)
    review = ReviewController(scene, session_factory=session_factory)
    review.open(str(store_path), "ana", order="index")
    review.start_prompts("nerve", model=tiny)
    started = []
    interaction.AddObserver(interaction.EndPlacementEvent,
                            lambda caller, event: started.append(review.placement_ended(selection, interaction)))
    review.place_prompts("exclude", selection, interaction)
    review.next()
    assert review.end_placement(selection, interaction)
    assert interaction.GetCurrentInteractionMode() == interaction.ViewTransform
    assert not interaction.GetPlaceModePersistence() and started == [None]

    review.place_prompts("auto", selection, interaction)  # the box on the new frame, then the annotator moves on
    assert review.end_placement(selection, interaction) and started == [None, None]  # no clicks after the box

    ruler = scene.AddNewNodeByClass("vtkMRMLMarkupsLineNode")
    selection.SetReferenceActivePlaceNodeID(ruler.GetID())
    interaction.SetCurrentInteractionMode(interaction.Place)
    assert not review.end_placement(selection, interaction)
    assert interaction.GetCurrentInteractionMode() == interaction.Place
    assert isinstance(ruler, slicer.vtkMRMLMarkupsLineNode)
    review.close()
