"""LiveScene on the real MRML library (slicer-core): results reach a volume node and a segmentation node in place,
with named, coloured, coded segments, and are recorded one sequence item per applied frame."""

from __future__ import annotations

import numpy as np
import pytest

from NerveSegLogic.classes import USGRA_SEG_MAPPING, classes_from_mapping
from NerveSegLogic.frame import Frame, ImageGeometry, SegmentationResult
from NerveSegLogic.scene import LiveScene, mrml
from NerveSegLogic.scene.nodes import volume_array

H, W = 420, 580
CLASSES = classes_from_mapping(USGRA_SEG_MAPPING)  # 1 nerve, 2 blood vessel
# Non-trivial geometry: anisotropic spacing, an offset origin, and the image flipped left-right and up-down
# (as a probe held the other way round gives).
GEOMETRY = ImageGeometry(spacing=(0.11, 0.13, 1.0), origin=(-31.5, 22.25, 7.0),
                         directions=((-1.0, 0.0, 0.0), (0.0, -1.0, 0.0), (0.0, 0.0, 1.0)))


def circle(shape, centre_ij, radius):
    jj, ii = np.mgrid[: shape[0], : shape[1]]
    return (ii - centre_ij[0]) ** 2 + (jj - centre_ij[1]) ** 2 <= radius ** 2


def synthetic_result(k: int, geometry: ImageGeometry = GEOMETRY, shape=(H, W), received=None) -> SegmentationResult:
    """Frame k: a gradient image shifted by k, a nerve circle moving right, a vessel circle fixed."""
    h, w = shape
    image = ((np.arange(w)[np.newaxis, :] + 3 * k + np.arange(h)[:, np.newaxis]) % 251).astype(np.uint8)
    labelmap = np.zeros(shape, dtype=np.uint8)
    labelmap[circle(shape, (150 + 5 * k, 200), 40)] = 1
    labelmap[circle(shape, (420, 120), 30)] = 2
    frame = Frame(image=image, geometry=geometry, frame_id=100 + 2 * k)
    frame.stamp("received", 50.0 + 0.04 * k if received is None else received)
    return SegmentationResult(frame=frame, labelmap=labelmap, model_name="synthetic", classes=CLASSES)


@pytest.fixture
def live():
    scene = LiveScene(CLASSES, name="NerveSeg")
    yield scene
    scene.clear()


def shared_labelmap(segmentation_node, segment_id):
    segment = segmentation_node.GetSegmentation().GetSegment(segment_id)
    return mrml.scalars_view(segment.GetRepresentation(mrml.BINARY_LABELMAP))


def test_volume_node_takes_the_frame_image_and_geometry(live):
    result = synthetic_result(0)
    live.apply(result)
    volume = live.volume_node
    assert np.array_equal(volume_array(volume), result.frame.image)
    np.testing.assert_allclose(volume.GetSpacing(), GEOMETRY.spacing)
    np.testing.assert_allclose(volume.GetOrigin(), GEOMETRY.origin)
    np.testing.assert_allclose(mrml.volume_geometry(volume).ijk_to_ras(), GEOMETRY.ijk_to_ras())


def test_segments_are_named_coloured_and_coded_with_class_key_ids(live):
    live.apply(synthetic_result(0))
    segmentation = live.segmentation_node.GetSegmentation()
    assert [segmentation.GetNthSegmentID(i) for i in range(segmentation.GetNumberOfSegments())] == \
        ["nerve", "blood_vessel"]
    for c in CLASSES:
        segment = segmentation.GetSegment(c.key)
        assert segment.GetName() == c.name
        np.testing.assert_allclose(segment.GetColor(), c.color, atol=1e-6)
        assert segment.GetLabelValue() == c.label
        assert mrml.get_terminology(segment) == c.terminology()
    assert "119410002" in mrml.get_terminology(segmentation.GetSegment("nerve"))  # SNOMED CT Nerve


def test_segment_voxels_equal_the_labelmap_for_every_frame(live):
    for k in range(4):
        result = synthetic_result(k)
        live.apply(result)
        for c in CLASSES:
            voxels = shared_labelmap(live.segmentation_node, c.key)
            assert np.array_equal(voxels == c.label, result.labelmap == c.label), (k, c.key)
        # The labelmap lies on the frame's grid: same geometry as the volume.
        labelmap_image = live.segmentation_node.GetSegmentation().GetSegment("nerve").GetRepresentation(
            mrml.BINARY_LABELMAP)
        np.testing.assert_allclose(labelmap_image.GetSpacing(), GEOMETRY.spacing)
        np.testing.assert_allclose(labelmap_image.GetOrigin(), GEOMETRY.origin)


def test_applying_frames_creates_no_nodes(live):
    live.apply(synthetic_result(0))
    nodes_after_first = live.scene.GetNumberOfNodes()
    volume, segmentation = live.volume_node, live.segmentation_node
    for k in range(1, 6):
        live.apply(synthetic_result(k))
    assert live.scene.GetNumberOfNodes() == nodes_after_first
    assert live.volume_node is volume and live.segmentation_node is segmentation
    assert len(mrml.nodes_by_class(live.scene, "vtkMRMLSegmentationNode")) == 1
    assert len(mrml.nodes_by_class(live.scene, "vtkMRMLScalarVolumeNode")) == 1


def test_empty_labelmap_keeps_every_segment_empty(live):
    result = synthetic_result(0)
    result.labelmap[:] = 0
    live.apply(result)
    segmentation = live.segmentation_node.GetSegmentation()
    assert segmentation.GetNumberOfSegments() == len(CLASSES)
    for c in CLASSES:
        assert segmentation.GetSegment(c.key).GetName() == c.name
        assert not np.any(shared_labelmap(live.segmentation_node, c.key) == c.label)


def test_label_values_of_no_class_become_background(live):
    result = synthetic_result(0)
    result.labelmap[:10, :10] = 7
    live.apply(result)
    voxels = shared_labelmap(live.segmentation_node, "nerve")
    assert not np.any(voxels[:10, :10])
    assert set(np.unique(voxels)) <= {0, 1, 2}


def test_recording_has_one_item_per_applied_frame_with_its_content(live):
    results = [synthetic_result(k) for k in range(5)]
    for result in results:
        live.apply(result)
    assert live.applied_count == 5 == live.recorded_count
    assert live.segmentation_sequence_node.GetNumberOfDataNodes() == 5
    assert live.recorded_frame_ids == [r.frame_id for r in results]
    # Index: seconds since the first frame's "received" stamp (0.04 s apart here).
    index = [float(live.image_sequence_node.GetNthIndexValue(i)) for i in range(5)]
    np.testing.assert_allclose(index, [0.0, 0.04, 0.08, 0.12, 0.16], atol=1e-9)
    assert live.image_sequence_node.GetIndexName() == "time" and live.image_sequence_node.GetIndexUnit() == "s"
    # Each item is a copy of its own frame, not a view of the live buffer.
    for i, result in enumerate(results):
        image_item = live.image_sequence_node.GetNthDataNode(i)
        assert np.array_equal(volume_array(image_item), result.frame.image), i
        segmentation_item = live.segmentation_sequence_node.GetNthDataNode(i)
        voxels = shared_labelmap(segmentation_item, "nerve")
        assert np.array_equal(voxels, result.labelmap), i
    # One browser plays both, with the live nodes as its proxies.
    browser = live.sequence_browser_node
    assert browser.GetMasterSequenceNode() is live.image_sequence_node
    assert browser.GetProxyNode(live.image_sequence_node) is live.volume_node
    assert browser.GetProxyNode(live.segmentation_sequence_node) is live.segmentation_node


def test_frames_stamped_at_the_same_time_still_get_distinct_items(live):
    for k in range(3):
        live.apply(synthetic_result(k, received=10.0))
    values = [live.image_sequence_node.GetNthIndexValue(i) for i in range(3)]
    assert values == ["0.000", "0.002", "0.004"]  # 2 ms apart: MRML merges index values within 1 ms
    assert live.recorded_count == 3


def test_stop_recording_keeps_what_was_recorded_and_stops_appending(live):
    live.apply(synthetic_result(0))
    live.apply(synthetic_result(1))
    live.stop_recording()
    live.apply(synthetic_result(2))
    assert live.applied_count == 3 and live.recorded_count == 2
    live.start_recording()
    live.apply(synthetic_result(3))
    assert live.recorded_count == 3


def test_without_recording_no_sequence_nodes_exist():
    scene = LiveScene(CLASSES, record=False)
    try:
        scene.apply(synthetic_result(0))
        assert scene.sequence_browser_node is None and scene.recorded_count == 0
        assert mrml.nodes_by_class(scene.scene, "vtkMRMLSequenceNode") == []
    finally:
        scene.clear()


def test_apply_stamps_the_frame_as_applied(live):
    result = synthetic_result(0)
    live.apply(result)
    assert "applied" in result.frame.timestamps
    assert result.stage_latencies_ms()["total"] >= 0


def test_geometry_and_size_changes_are_followed(live):
    live.apply(synthetic_result(0))
    deeper = ImageGeometry(spacing=(0.2, 0.2, 1.0), origin=(1.0, 2.0, 3.0))
    result = synthetic_result(1, geometry=deeper, shape=(300, 500))
    live.apply(result)
    np.testing.assert_allclose(live.volume_node.GetSpacing(), deeper.spacing)
    assert volume_array(live.volume_node).shape == (300, 500)
    assert np.array_equal(shared_labelmap(live.segmentation_node, "nerve"), result.labelmap)
    reference = live.segmentation_node.GetSegmentation().GetConversionParameter("Reference image geometry")
    assert reference.startswith("0.2;0;0;1;")  # reference geometry follows the frame (spacing, origin)


def test_results_that_cannot_be_shown_are_refused_with_the_reason(live):
    bad = synthetic_result(0)
    bad.labelmap = bad.labelmap.astype(np.float32)
    with pytest.raises(ValueError, match="integer"):
        live.apply(bad)
    rgb = synthetic_result(0)
    rgb.frame.image = rgb.frame.image.astype(np.int64)
    with pytest.raises(ValueError, match="uint8, uint16 or float32"):
        live.apply(rgb)


def test_display_helpers_set_visibility_opacity_fill_outline_and_names(live):
    live.apply(synthetic_result(0))
    node = live.segmentation_node.GetDisplayNode()
    live.set_class_visible("nerve", False)
    assert not node.GetSegmentVisibility("nerve") and node.GetSegmentVisibility("blood_vessel")
    live.set_class_opacity("blood_vessel", 0.25)
    assert node.GetSegmentOpacity2DFill("blood_vessel") == pytest.approx(0.25)
    assert node.GetSegmentOpacity2DOutline("blood_vessel") == pytest.approx(0.25)
    live.set_fill_outline(fill=False, outline=True)
    assert not node.GetVisibility2DFill() and node.GetVisibility2DOutline()
    live.set_names_visible(False)
    assert not live.region_names.visible
    assert not any(n.GetDisplayNode().GetVisibility() for n in live.region_names.nodes.values())
    live.set_names_visible(True)
    assert all(n.GetDisplayNode().GetVisibility() for n in live.region_names.nodes.values())
    with pytest.raises(KeyError, match="nerve"):
        live.set_class_visible("bone", True)
    with pytest.raises(ValueError):
        live.set_class_opacity("nerve", 1.5)


def test_clear_removes_only_its_own_nodes_from_a_shared_scene():
    shared = mrml.new_scene()
    other = shared.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "someone else's volume")
    live = LiveScene(CLASSES, mrml_scene=shared)
    live.apply(synthetic_result(0))
    live.set_names_visible(True)
    assert shared.GetNumberOfNodes() > 1
    live.clear()
    remaining = [shared.GetNthNode(i) for i in range(shared.GetNumberOfNodes())]
    assert other in remaining
    assert not any(n.IsA("vtkMRMLSegmentationNode") or n.IsA("vtkMRMLSequenceNode") for n in remaining)
    assert [n.GetName() for n in remaining if n.IsA("vtkMRMLVolumeNode")] == ["someone else's volume"]
    live.clear()  # idempotent


def test_the_model_is_named_on_the_segmentation_and_its_recording(live):
    live.apply(synthetic_result(0))
    for node in (live.segmentation_node, live.segmentation_sequence_node):
        assert node.GetAttribute("NerveSeg.model") == "synthetic"
    live.set_model_identity("synthetic", "ab" * 32)
    live.apply(synthetic_result(1))
    assert live.segmentation_sequence_node.GetAttribute("NerveSeg.modelSha256") == "ab" * 32
    # Each recorded item carries the model it came from.
    assert live.segmentation_sequence_node.GetNthDataNode(1).GetAttribute("NerveSeg.modelSha256") == "ab" * 32
    other = synthetic_result(2)
    other.model_name = "sa-unet"
    live.apply(other)
    assert live.segmentation_node.GetAttribute("NerveSeg.model") == "sa-unet"
    assert live.segmentation_node.GetAttribute("NerveSeg.modelSha256") is None  # not known for the new model


def test_class_names_stand_at_each_region_centroid_and_follow_every_frame(live):
    """What the clinician reads on the view: 'Nerve' at the nerve, 'Blood vessel' at the vessel, in RAS mm."""
    for k in (0, 3):
        result = synthetic_result(k)
        live.apply(result)
        ras = GEOMETRY.ijk_to_ras()
        for label, (ci, cj) in ((1, (150 + 5 * k, 200)), (2, (420, 120))):
            (name, position), = live.region_names.positions(label)
            assert name == {1: "Nerve", 2: "Blood vessel"}[label]
            expected = ras @ np.array([ci, cj, 0.0, 1.0])
            np.testing.assert_allclose(position, expected[:3], atol=0.05)  # the circle's centroid, 0.05 mm
        node = live.region_names.nodes[1]
        assert node.GetLocked() and node.GetDisplayNode().GetColor() == pytest.approx(CLASSES[0].color)
    empty = synthetic_result(4)
    empty.labelmap[:] = 0
    live.apply(empty)
    assert live.region_names.positions(1) == [] and live.region_names.positions(2) == []


def test_region_name_points_are_labelled_with_the_current_markups_api(live):
    """SetMarkupLabelFormat is deprecated in Slicer 5 (SetControlPointLabelFormat replaced it): new points of a class
    are labelled with the class name."""
    from pathlib import Path

    for c in CLASSES:
        assert live.region_names.nodes[int(c.label)].GetControlPointLabelFormat() == c.name
    source = (Path(__file__).resolve().parent.parent / "NerveSegLogic" / "scene" / "display.py").read_text()
    assert "SetMarkupLabelFormat" not in source
