"""load_frame / read_mask: a stored frame goes into MRML for Segment Editor, and what was painted comes back out
on the frame's pixel grid, whatever layers and extents the editor left."""

from __future__ import annotations

import numpy as np
import pytest

from NerveSegLogic.frame import ImageGeometry
from NerveSegLogic.scene import load_frame, load_segmentation_file, mrml, read_mask, save_scene
from NerveSegLogic.scene.nodes import volume_array

from test_scene_live import CLASSES, circle

H, W = 90, 120
GEOMETRY = ImageGeometry(spacing=(0.2, 0.3, 1.0), origin=(4.0, -5.0, 6.0))


@pytest.fixture
def scene():
    s = mrml.new_scene()
    yield s
    s.Clear(True)


def frame_and_mask():
    image = np.random.default_rng(3).integers(0, 4000, (H, W)).astype(np.uint16)
    mask = np.zeros((H, W), dtype=np.uint8)
    mask[circle((H, W), (30, 40), 12)] = 1
    mask[circle((H, W), (85, 50), 15)] = 2
    return image, mask


def segment_voxels(segmentation_node, segment_id):
    return mrml.scalars_view(segmentation_node.GetSegmentation().GetSegment(segment_id).GetRepresentation(
        mrml.BINARY_LABELMAP))


def test_load_frame_then_read_mask_gives_the_mask_back(scene):
    image, mask = frame_and_mask()
    volume, segmentation = load_frame(image, mask, GEOMETRY, CLASSES, mrml_scene=scene)
    assert np.array_equal(volume_array(volume), image)
    np.testing.assert_allclose(volume.GetSpacing(), GEOMETRY.spacing)
    names = [segmentation.GetSegmentation().GetNthSegment(i).GetName() for i in range(2)]
    assert names == ["Nerve", "Blood vessel"]
    assert np.array_equal(read_mask(segmentation, volume, CLASSES), mask)


def test_the_next_frame_reuses_the_annotation_nodes_and_drops_the_previous_mask(scene):
    image, mask = frame_and_mask()
    volume, segmentation = load_frame(image, mask, GEOMETRY, CLASSES, mrml_scene=scene)
    count = scene.GetNumberOfNodes()
    volume2, segmentation2 = load_frame(image[::-1].copy(), np.zeros_like(mask), GEOMETRY, CLASSES,
                                        mrml_scene=scene)
    assert volume2 is volume and segmentation2 is segmentation
    assert scene.GetNumberOfNodes() == count
    assert not read_mask(segmentation, volume, CLASSES).any()
    assert segmentation.GetSegmentation().GetNumberOfSegments() == len(CLASSES)


def test_read_mask_picks_up_painting_in_separate_layers_and_resolves_overlap_by_class_order(scene):
    image, mask = frame_and_mask()
    volume, segmentation = load_frame(image, mask, GEOMETRY, CLASSES, mrml_scene=scene)
    # What Segment Editor does with "allow overlap": each segment in its own layer.
    segmentation.GetSegmentation().SeparateSegmentLabelmap("nerve")
    segmentation.GetSegmentation().SeparateSegmentLabelmap("blood_vessel")
    assert segmentation.GetSegmentation().GetNumberOfLayers() == 2
    nerve = segment_voxels(segmentation, "nerve")
    nerve[40:50, 80:90] = 1  # paint nerve over part of the vessel (vessel circle is centred at i=85, j=50)
    segmentation.GetSegmentation().GetSegment("nerve").GetRepresentation(mrml.BINARY_LABELMAP).Modified()
    expected = mask.copy()
    expected[40:50, 80:90] = 1  # nerve is listed first, so it wins where both are painted
    assert np.array_equal(read_mask(segmentation, volume, CLASSES), expected)
    # Listing the vessel first gives the vessel priority instead.
    reversed_classes = tuple(reversed(CLASSES))
    expected_vessel_first = mask.copy()
    expected_vessel_first[40:50, 80:90] = np.where(mask[40:50, 80:90] == 2, 2, 1)
    assert np.array_equal(read_mask(segmentation, volume, reversed_classes), expected_vessel_first)


def test_read_mask_resamples_a_segment_with_its_own_extent_onto_the_frame_grid(scene):
    image, mask = frame_and_mask()
    volume, segmentation = load_frame(image, np.zeros_like(mask), GEOMETRY, CLASSES, mrml_scene=scene)
    slicer = mrml.slicer_module()
    # A labelmap covering only a window of the frame, as the editor leaves after cropping to the effective extent.
    window = slicer.vtkOrientedImageData()
    window.SetExtent(20, 39, 10, 24, 0, 0)
    window.AllocateScalars(3, 1)  # VTK_UNSIGNED_CHAR
    window.SetImageToWorldMatrix(mrml.vtk_matrix(GEOMETRY.ijk_to_ras()))
    voxels = mrml.scalars_view_of_slice(window, 0)
    voxels[...] = 0
    voxels[2:5, 3:8] = 1  # j 12..14, i 23..27
    segmentation.GetSegmentation().RemoveSegment("blood_vessel")
    segmentation.GetSegmentation().RemoveSegment("nerve")
    segment = mrml.new_segment(CLASSES[1])
    segment.SetLabelValue(1)
    segment.AddRepresentation(mrml.BINARY_LABELMAP, window)
    segmentation.GetSegmentation().AddSegment(segment, "blood_vessel")
    expected = np.zeros((H, W), dtype=np.uint8)
    expected[12:15, 23:28] = 2
    assert np.array_equal(read_mask(segmentation, volume, CLASSES), expected)


def test_a_class_without_a_segment_stays_background_and_a_segment_with_another_id_is_found_by_name(scene):
    image, mask = frame_and_mask()
    volume, segmentation = load_frame(image, mask, GEOMETRY, CLASSES, mrml_scene=scene)
    segmentation.GetSegmentation().RemoveSegment("blood_vessel")
    nerve_only = np.where(mask == 1, 1, 0).astype(np.uint8)
    assert np.array_equal(read_mask(segmentation, volume, CLASSES), nerve_only)
    # A person adds "Nerve" by hand in Segment Editor: it gets an id like Segment_1, found by its name.
    segmentation.GetSegmentation().RemoveSegment("nerve")
    slicer = mrml.slicer_module()
    painted = slicer.vtkOrientedImageData()
    voxels = mrml.allocate_image(painted, W, H, np.uint8)
    voxels[...] = 0
    voxels[5:9, 5:9] = 1
    painted.SetImageToWorldMatrix(mrml.vtk_matrix(GEOMETRY.ijk_to_ras()))
    segment = slicer.vtkSegment()
    segment.SetName("Nerve")
    segment.AddRepresentation(mrml.BINARY_LABELMAP, painted)
    segmentation.GetSegmentation().AddSegment(segment, "Segment_1")
    expected = np.zeros((H, W), dtype=np.uint8)
    expected[5:9, 5:9] = 1
    assert np.array_equal(read_mask(segmentation, volume, CLASSES), expected)


def test_without_a_scene_the_nodes_live_in_one_kept_standalone_scene():
    from NerveSegLogic.scene.annotation import annotation_scene

    image, mask = frame_and_mask()
    try:
        volume, segmentation = load_frame(image, mask, GEOMETRY, CLASSES)
        volume2, _ = load_frame(image, mask, GEOMETRY, CLASSES)
        assert volume.GetScene() is annotation_scene() and volume2 is volume
        assert np.array_equal(read_mask(segmentation, volume, CLASSES), mask)
    finally:
        annotation_scene().Clear(True)


def test_an_annotation_saved_as_seg_nrrd_reads_back_as_the_same_labelmap(scene, tmp_path):
    image, mask = frame_and_mask()
    _, segmentation = load_frame(image, mask, GEOMETRY, CLASSES, mrml_scene=scene)
    saved = save_scene(scene, tmp_path, "Annotation")
    assert saved.exists()
    loaded = load_segmentation_file(tmp_path / "NerveSeg_annotation_segmentation.seg.nrrd")
    assert np.array_equal(loaded.labelmap(CLASSES), mask)
    assert np.array_equal(loaded.mask("nerve"), mask == 1)
    with pytest.raises(KeyError, match="nerve"):
        loaded.mask("bone")


def test_mismatched_image_and_mask_are_refused(scene):
    image, mask = frame_and_mask()
    with pytest.raises(ValueError, match="shape"):
        load_frame(image, mask[:-1], GEOMETRY, CLASSES, mrml_scene=scene)
    volume, segmentation = load_frame(image, mask, GEOMETRY, CLASSES, mrml_scene=scene)
    empty = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "empty")
    with pytest.raises(ValueError, match="reference volume"):
        read_mask(segmentation, empty, CLASSES)


def test_read_mask_refuses_transformed_nodes(scene):
    image, mask = frame_and_mask()
    volume, segmentation = load_frame(image, mask, GEOMETRY, CLASSES, mrml_scene=scene)
    transform = scene.AddNewNodeByClass("vtkMRMLLinearTransformNode", "probe to world")
    segmentation.SetAndObserveTransformNodeID(transform.GetID())
    with pytest.raises(ValueError, match="under a transform"):
        read_mask(segmentation, volume, CLASSES)


def test_looking_nodes_up_by_name_does_not_keep_them_alive(scene):
    """vtkMRMLScene.GetNodesByClassByName returns a new collection its caller owns (issue 30 item 8): unreleased,
    every look-up would keep the nodes it found alive for good, so a node removed from the scene, or a closed
    scene's nodes, would never be freed. mrml releases it (as slicer.util.getNodesByClass does)."""
    import gc

    from vtkmodules.vtkCommonCore import vtkCommand

    node = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "NerveSeg annotation image")
    other = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "other")
    references = node.GetReferenceCount()
    for _ in range(5):
        assert mrml.first_node_by_name(scene, "NerveSeg annotation image", "vtkMRMLScalarVolumeNode") is node
        assert mrml.first_node_by_name(scene, "missing", "vtkMRMLScalarVolumeNode") is None
        assert mrml.nodes_by_class(scene, "vtkMRMLScalarVolumeNode") == [node, other]
        assert mrml.nodes_by_class(scene, "vtkMRMLScalarVolumeNode", "other") == [other]
    assert node.GetReferenceCount() == references

    deleted = []
    node.AddObserver(vtkCommand.DeleteEvent, lambda caller, event: deleted.append(event))
    other.AddObserver(vtkCommand.DeleteEvent, lambda caller, event: deleted.append(event))
    scene.RemoveNode(node)
    del node
    gc.collect()
    assert len(deleted) == 1, "the removed node is still pinned by a look-up's collection"
    scene.Clear(0)  # a closed scene's nodes go too
    del other
    gc.collect()
    assert len(deleted) == 2


def test_a_collection_python_already_owns_alone_is_left_alone():
    from vtkmodules.vtkCommonCore import vtkCollection

    owned = vtkCollection()  # made in Python: one reference, Python's
    mrml.release_collection(owned)
    assert owned.GetReferenceCount() == 1 and owned.GetNumberOfItems() == 0
    mrml.release_collection(None)
