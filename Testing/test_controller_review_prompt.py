"""The review panel's prompt tool through the ReviewController, on slicer-core's MRML (issue 15): the annotator
places a box (markups ROI) and clicks (include/exclude point lists) on the frame in RAS; the segmentation node then
shows the class's mask from the promptable model; Accept saves it as a 'prompt' version with its prompts, and the
next frame starts without prompts. The model is a tiny random LiteMedSAM (tiny_promptable.py): the test checks the
path and the pixels it moves, not the model's accuracy (benchmarks/annotation/prompted.md has that)."""

from __future__ import annotations

import numpy as np
import pytest

from NerveSegLogic.annotate.prompt import FramePrompter
from NerveSegLogic.store.database import AnnotationStore
from NerveSegLogic.inference.promptable import PromptableSegmenter
from NerveSegLogic.annotate.review.controller import ReviewController
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


# ------------------------------------------------------------------ issue 26: refine, propagate, who labelled
def disc_store(tmp_path, centres, draft_square=False, accept_first=False):
    """One recording of disc frames; optionally a model's square pre-label on the first, or its disc accepted."""
    from tiny_promptable import disc_frame

    tmp_path.mkdir(parents=True, exist_ok=True)
    path = tmp_path / "discs.nsdb"
    with AnnotationStore(path) as store:
        ids = [store.add_frame(disc_frame(cx, cy), "clip", i).id for i, (cx, cy) in enumerate(centres)]
        if draft_square:
            square = np.zeros((40, 48), np.uint8)
            square[11:30, 11:30] = 1
            store.save_mask(ids[0], square, {1: "nerve"}, "model", "model", None, model_name="square-net",
                            model_sha256="ab" * 32)
        if accept_first:
            truth = (store.image(ids[0]) > 128).astype(np.uint8)
            v = store.save_mask(ids[0], truth, {1: "nerve"}, "ana", "manual", None)
            store.set_status(ids[0], "accepted", "ana", v.id)
    return path, ids


def test_refine_replaces_the_shown_pre_label_by_the_promptable_mask_and_shows_it(tmp_path):
    from tiny_promptable import ScriptedPromptable

    path, ids = disc_store(tmp_path, [(20, 20), (22, 20)], draft_square=True)
    review = ReviewController(slicer_scene(), session_factory=session_factory)
    review.open(str(path), "ana", order="index")
    decisions = review.refine_shown(model=ScriptedPromptable())
    assert [(d.class_key, d.replaced) for d in decisions] == [("nerve", True)]
    store = review.session.store
    version = store.current(ids[0])
    disc = store.image(ids[0]) > 128
    np.testing.assert_array_equal(version.mask == 1, disc)  # saved: the disc, not the square
    assert version.status == "draft" and version.model_name == "square-net" and version.author == "ana"
    assert version.comment.startswith("refined by scripted-sam")
    np.testing.assert_array_equal(review.edited_mask() == 1, disc)  # and shown
    review.refine_shown(model=ScriptedPromptable())  # refining again changes nothing: no new version
    assert len(store.history(ids[0])) == 2


def test_propagate_carries_the_shown_accepted_mask_and_refuses_a_draft(tmp_path):
    from NerveSegLogic.annotate.propagate import PropagationError
    from tiny_promptable import ScriptedPromptable

    path, ids = disc_store(tmp_path, [(14, 20), (15, 20), (16, 20)], accept_first=True)
    review = ReviewController(slicer_scene(), session_factory=session_factory)
    review.open(str(path), "ana", order="index")
    assert review.current().frame_id == ids[1]  # the accepted frame is not in the queue: the one after it is shown
    report = review.propagate_shown(model=ScriptedPromptable(), count=2)
    assert report.from_frame == ids[0]  # the nearest earlier accepted frame of the recording
    assert [f.frame_id for f in report.frames] == ids[1:] and "carried frame" in report.summary()
    store = review.session.store
    for frame_id in ids[1:]:
        version = store.current(frame_id)
        assert version.origin == "propagated" and version.status == "draft"
        np.testing.assert_array_equal(version.mask == 1, store.image(frame_id) > 128)
    np.testing.assert_array_equal(review.edited_mask() == 1, store.image(ids[1]) > 128)  # shown now
    assert [row[2] for row in review.queue_rows()[1:]] == ["draft", "draft"]

    path, ids = disc_store(tmp_path / "none", [(14, 20), (16, 20)])
    review.open(str(path), "ana", order="index")
    with pytest.raises(PropagationError, match=f"frame {ids[0]} has no accepted mask, and no earlier frame"):
        review.propagate_shown(model=ScriptedPromptable())


def test_the_panel_says_who_labelled_the_frame_and_how_much_they_agree(tmp_path):
    from NerveSegLogic.annotate.consensus import consensus

    path, ids = disc_store(tmp_path, [(20, 20)])
    with AnnotationStore(path) as store:
        a = np.zeros((40, 48), np.uint8)
        a[10:20, 10:20] = 1
        b = np.zeros((40, 48), np.uint8)
        b[10:20, 12:22] = 1
        v = store.save_mask(ids[0], a, {1: "nerve"}, "alice", "manual", None)
        v = store.set_status(ids[0], "accepted", "alice", v.id)
        store.save_mask(ids[0], b, {1: "nerve"}, "bob", "manual", v.id)  # bob's draft: in the review queue
    review = ReviewController(slicer_scene(), session_factory=session_factory)
    review.open(str(path), "lead", order="index")
    rows = review.labelled_by_rows()
    assert rows[0] == ("Who", "Version", "Status", "Dice with the others")
    assert [(r[0], r[2], r[3]) for r in rows[1:]] == [("alice", "accepted", "0.800"), ("bob", "draft", "0.800")]
    assert review.agreement_text() == "Labelled by alice, bob; mean Dice between them: nerve 0.80"
    review.close()
    with AnnotationStore(path) as store:
        store.set_status(ids[0], "accepted", "bob", store.current(ids[0]).id)
        consensus(store, "lead", method="majority")
        store.set_status(ids[0], "needs-review", "lead", store.current(ids[0]).id)  # back into the queue
    review.open(str(path), "lead", order="index")
    rows = review.labelled_by_rows()
    assert [r[0] for r in rows[1:]] == ["alice", "bob", "consensus (majority)"] and rows[-1][3] == "of 2 authors"
    review.close()
    path, ids = disc_store(tmp_path / "one", [(20, 20)], draft_square=True)
    review.open(str(path), "lead", order="index")
    assert review.agreement_text() == "No annotator's label yet"  # a model's draft is nobody's label


def test_merge_button_saves_the_consensus_of_the_shown_frame_only(tmp_path):
    path, ids = disc_store(tmp_path, [(20, 20), (24, 20)])
    a = np.zeros((40, 48), np.uint8)
    a[10:20, 10:20] = 1
    b = np.zeros((40, 48), np.uint8)
    b[10:20, 12:22] = 1
    c = np.zeros((40, 48), np.uint8)
    c[10:20, 11:21] = 1
    with AnnotationStore(path) as store:
        for frame_id in ids:  # two frames, each labelled and accepted by alice, bob and carol in turn
            parent = None
            for author, mask in (("alice", a), ("bob", b), ("carol", c)):
                v = store.save_mask(frame_id, mask, {1: "nerve"}, author, "manual", parent)
                parent = store.set_status(frame_id, "accepted", author, v.id).id
            store.set_status(frame_id, "needs-review", "lead", parent)  # into the lead's queue
    review = ReviewController(slicer_scene(), session_factory=session_factory)
    review.open(str(path), "lead", order="index")
    shown = review.current().frame_id
    report = review.merge_authors("majority")
    assert [f.frame_id for f in report.merged] == [shown]
    store = review.session.store
    merged = store.current(shown)
    assert merged.origin == "consensus" and merged.status == "accepted" and merged.author == "lead"
    expected = ((a + b + c) >= 2).astype(np.uint8)  # two of three: columns 11..20
    np.testing.assert_array_equal(merged.mask, expected)
    other = [i for i in ids if i != shown][0]
    assert store.current(other).origin == "manual"  # the other frame was not touched
    scores = report.rater_scores()
    assert scores["alice"]["nerve"]["sensitivity"] == pytest.approx(0.9)  # 90 of the 100 consensus pixels
    assert scores["carol"]["nerve"]["sensitivity"] == pytest.approx(1.0)
    assert "alice" in report.table() and "consensus" in report.table()
    review.close()
