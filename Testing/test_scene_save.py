"""A saved live scene is a folder Slicer opens: read back with independent readers (XML, pynrrd, slicerio) and
reloaded into a fresh MRML scene."""

from __future__ import annotations

import tempfile
import xml.etree.ElementTree as ElementTree
from pathlib import Path

import nrrd
import numpy as np
import pytest
import slicerio

from NerveSegLogic.frame import ImageGeometry
from NerveSegLogic.scene import (LiveScene, load_segmentation_file, mrml, read_saved_scene,
                                 read_segmentation_sequence_items, read_sequence_file, read_volume_file, save_scene)
from NerveSegLogic.scene.nodes import volume_array

from test_scene_live import CLASSES, GEOMETRY, synthetic_result

N_FRAMES = 4


@pytest.fixture
def recorded():
    """A LiveScene after N_FRAMES applied results, and those results."""
    live = LiveScene(CLASSES, name="NerveSeg")
    results = [synthetic_result(k) for k in range(N_FRAMES)]
    for result in results:
        live.apply(result)
    yield live, results
    live.clear()


def test_save_writes_the_mrml_and_exactly_the_files_it_references(recorded, tmp_path):
    live, _ = recorded
    mrml_path = live.save(tmp_path / "scene")
    assert mrml_path == (tmp_path / "scene" / "NerveSeg.mrml").resolve()
    written = {p.name for p in (tmp_path / "scene").iterdir()}
    assert written == {"NerveSeg.mrml", "NerveSeg_image.nrrd", "NerveSeg_segmentation.seg.nrrd",
                       "NerveSeg_image_sequence.seq.nrrd", "NerveSeg_segmentation_sequence.seq.mrb"}

    root = ElementTree.parse(mrml_path).getroot()
    assert root.tag == "MRML"
    file_names = [e.get("fileName") for e in root.iter() if e.get("fileName")]
    assert all(not Path(f).is_absolute() for f in file_names), file_names  # the folder can move
    referenced = {(mrml_path.parent / f).resolve() for f in file_names}
    assert referenced == {p.resolve() for p in (tmp_path / "scene").iterdir() if p.name != "NerveSeg.mrml"}

    saved = read_saved_scene(mrml_path)
    assert set(saved.referenced_files()) == referenced
    assert saved.by_name("NerveSeg image").file.name == "NerveSeg_image.nrrd"
    assert saved.by_name("NerveSeg segmentation").file.name == "NerveSeg_segmentation.seg.nrrd"
    attributes = saved.by_name("NerveSeg segmentation sequence").attributes["attributes"]
    assert "DataNodeClassName:vtkMRMLSegmentationNode" in attributes and "NerveSeg.model:synthetic" in attributes
    browser = saved.by_tag("SequenceBrowser")
    assert len(browser) == 1 and len(browser[0].references["sequenceNodeRef0"]) == 1


def test_slicerio_reads_the_segments_names_and_label_values(recorded, tmp_path):
    live, results = recorded
    saved = read_saved_scene(live.save(tmp_path))
    seg_path = saved.by_name("NerveSeg segmentation").file
    segmentation = slicerio.read_segmentation(str(seg_path))
    by_id = {s["id"]: s for s in segmentation["segments"]}
    assert set(by_id) == {"nerve", "blood_vessel"}
    for c in CLASSES:
        segment = by_id[c.key]
        assert segment["name"] == c.name
        assert segment["labelValue"] == c.label
        np.testing.assert_allclose(segment["color"], c.color, atol=1e-5)
        assert segment["terminology"]["type"] == [c.type.scheme, c.type.value, c.type.meaning]
        assert segment["terminology"]["category"] == [c.category.scheme, c.category.value, c.category.meaning]
    # The voxels are the last applied labelmap, on the frame's grid.
    loaded = load_segmentation_file(seg_path)
    assert np.array_equal(loaded.labelmap(CLASSES), results[-1].labelmap)
    np.testing.assert_allclose(loaded.geometry.ijk_to_ras(), GEOMETRY.ijk_to_ras(), atol=1e-9)


def test_volume_nrrd_has_the_frame_spacing_origin_and_pixels(recorded, tmp_path):
    live, results = recorded
    saved = read_saved_scene(live.save(tmp_path))
    path = saved.by_name("NerveSeg image").file
    header = nrrd.read_header(str(path))
    np.testing.assert_allclose(np.linalg.norm(header["space directions"], axis=1), GEOMETRY.spacing)
    image, geometry = read_volume_file(path)
    assert np.array_equal(image, results[-1].frame.image)
    np.testing.assert_allclose(geometry.ijk_to_ras(), GEOMETRY.ijk_to_ras(), atol=1e-9)


def test_sequence_files_hold_one_item_per_applied_frame(recorded, tmp_path):
    live, results = recorded
    saved = read_saved_scene(live.save(tmp_path))
    image_sequence = read_sequence_file(saved.by_name("NerveSeg image sequence").file)
    segmentation_sequence = read_sequence_file(saved.by_name("NerveSeg segmentation sequence").file)
    assert image_sequence.item_count == segmentation_sequence.item_count == live.applied_count == N_FRAMES
    assert image_sequence.index_values == segmentation_sequence.index_values == \
        ["0.000", "0.040", "0.080", "0.120"]
    assert (image_sequence.index_name, image_sequence.index_unit) == ("time", "s")
    assert segmentation_sequence.data_node_class == "vtkMRMLSegmentationNode"

    frames = slicerio.read_volume(str(image_sequence.path))
    assert slicerio.number_of_frames(frames) == N_FRAMES
    for k, result in enumerate(results):
        frame = slicerio.sequence_frame(frames, k)["voxels"]
        assert np.array_equal(frame[:, :, 0].T, result.frame.image), k
    items = read_segmentation_sequence_items(segmentation_sequence.path)
    for k, (item, result) in enumerate(zip(items, results)):
        assert [s.name for s in item.segments] == [c.name for c in CLASSES]
        assert np.array_equal(item.labelmap(CLASSES), result.labelmap), k


def test_saved_scene_loads_back_into_mrml(recorded, tmp_path):
    """What Slicer does on File > Load scene, with the same MRML library: every node and its data come back."""
    live, results = recorded
    mrml_path = live.save(tmp_path)
    slicer = mrml.slicer_module()
    scene = mrml.new_scene()
    # Bundles (.seq.mrb) unpack into the cache directory that Slicer's application provides.
    with tempfile.TemporaryDirectory() as cache:
        cache_manager = slicer.vtkCacheManager()
        cache_manager.SetRemoteCacheDirectory(cache)
        io_manager = slicer.vtkDataIOManager()
        io_manager.SetCacheManager(cache_manager)
        scene.SetCacheManager(cache_manager)
        scene.SetDataIOManager(io_manager)
        scene.SetURL(str(mrml_path))
        try:
            assert scene.Connect() == 1
            volume = scene.GetFirstNodeByName("NerveSeg image")
            np.testing.assert_allclose(volume.GetSpacing(), GEOMETRY.spacing)
            assert np.array_equal(volume_array(volume), results[-1].frame.image)
            segmentation = scene.GetFirstNodeByName("NerveSeg segmentation").GetSegmentation()
            assert [segmentation.GetNthSegment(i).GetName() for i in range(segmentation.GetNumberOfSegments())] \
                == [c.name for c in CLASSES]
            for name in ("NerveSeg image sequence", "NerveSeg segmentation sequence"):
                assert scene.GetFirstNodeByName(name).GetNumberOfDataNodes() == N_FRAMES, name
            item = scene.GetFirstNodeByName("NerveSeg segmentation sequence").GetNthDataNode(2)
            voxels = mrml.scalars_view(item.GetSegmentation().GetSegment("nerve").GetRepresentation(
                mrml.BINARY_LABELMAP))
            assert np.array_equal(voxels, results[2].labelmap)
            browser = scene.GetFirstNodeByClass("vtkMRMLSequenceBrowserNode")
            assert browser.GetNumberOfSynchronizedSequenceNodes(True) == 2
        finally:
            scene.Clear(True)


def test_saving_does_not_disturb_the_live_nodes(recorded, tmp_path):
    live, results = recorded
    before_image = volume_array(live.volume_node)
    nodes_before = {live.scene.GetNthNode(i).GetID() for i in range(live.scene.GetNumberOfNodes())}
    live.save(tmp_path / "first")
    assert np.array_equal(volume_array(live.volume_node), before_image)
    assert live.recorded_count == N_FRAMES
    # Only storage nodes were added, and applying goes on.
    added = {live.scene.GetNthNode(i).GetID() for i in range(live.scene.GetNumberOfNodes())} - nodes_before
    assert all("Storage" in node_id for node_id in added), added
    live.apply(synthetic_result(N_FRAMES))
    assert live.recorded_count == N_FRAMES + 1
    second = read_saved_scene(live.save(tmp_path / "second"))
    assert read_sequence_file(second.by_name("NerveSeg image sequence").file).item_count == N_FRAMES + 1
    # The first save is untouched by the second.
    first = read_saved_scene(tmp_path / "first" / "NerveSeg.mrml")
    assert read_sequence_file(first.by_name("NerveSeg image sequence").file).item_count == N_FRAMES


def test_frames_of_changing_size_are_saved_as_a_bundle_with_every_geometry(tmp_path):
    live = LiveScene(CLASSES, name="NerveSeg")
    try:
        live.apply(synthetic_result(0, shape=(200, 300)))
        live.save(tmp_path / "a")
        deeper = ImageGeometry(spacing=(0.2, 0.25, 1.0))
        live.apply(synthetic_result(1, shape=(240, 300), geometry=deeper))
        saved = read_saved_scene(live.save(tmp_path / "b"))
        image_sequence = saved.by_name("NerveSeg image sequence").file
        # A .seq.nrrd holds one geometry for all frames; MRML switches to a .seq.mrb bundle, and so does save().
        assert image_sequence.name.endswith(".seq.mrb")
        assert read_sequence_file(image_sequence).item_count == 2
    finally:
        live.clear()


def test_save_of_a_shared_scene_writes_every_node_it_references(tmp_path):
    shared = mrml.new_scene()
    other = shared.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "prior scan")
    from NerveSegLogic.scene.nodes import update_volume

    update_volume(other, np.full((20, 30), 9, np.uint8), ImageGeometry())
    empty = shared.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "no image yet")
    live = LiveScene(CLASSES, mrml_scene=shared, record=False)
    try:
        live.apply(synthetic_result(0))
        mrml_path = save_scene(shared, tmp_path, "Session")
        saved = read_saved_scene(mrml_path)
        on_disk = {p.resolve() for p in tmp_path.iterdir() if p.suffix != ".mrml"}
        assert set(saved.referenced_files()) == on_disk
        assert saved.by_name("prior scan").file.name == "prior_scan.nrrd"
        assert "no image yet" not in [n.name for n in saved.nodes]  # nothing to write, so not referenced
        assert empty.GetSaveWithScene()  # and left as it was
    finally:
        live.clear()
        shared.Clear(True)


def test_read_saved_scene_names_the_file_it_cannot_read(tmp_path):
    bad = tmp_path / "broken.mrml"
    bad.write_text("<MRML><Volume id='x'")
    with pytest.raises(ValueError, match="broken.mrml"):
        read_saved_scene(bad)
    with pytest.raises(FileNotFoundError):
        read_saved_scene(tmp_path / "missing.mrml")


def test_a_failed_save_names_the_node_and_leaves_the_earlier_save_as_it_was(tmp_path):
    from vtkmodules.vtkCommonDataModel import vtkImageData

    from NerveSegLogic.scene.nodes import update_volume

    scene = mrml.new_scene()
    try:
        good = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "good")
        update_volume(good, np.full((10, 12), 3, np.uint8), ImageGeometry())
        save_scene(scene, tmp_path, "Session")
        before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
        update_volume(good, np.full((10, 12), 4, np.uint8), ImageGeometry())
        broken = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "broken")
        broken.SetAndObserveImageData(vtkImageData())  # no voxels: its storage node cannot write it
        with pytest.raises(OSError, match="'broken'"):
            save_scene(scene, tmp_path, "Session")
        assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before  # no staging folder left either
    finally:
        scene.Clear(True)
