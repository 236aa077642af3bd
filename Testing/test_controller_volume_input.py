"""Frames taken from a volume node that something else updates (as SlicerOpenIGTLink updates its image node), on
slicer-core's real MRML: each update is segmented once, with the node's geometry; RGB becomes grey; removing the
node stops the run. The model is the default one with RANDOM weights when no trained weights ship (see
test_controller_live_replay.py)."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest

from NerveSegLogic.live.controller import LiveController
from NerveSegLogic.live.runs import frame_from_volume_node
from NerveSegLogic.live.selftest import segmenter_with_random_fallback
from NerveSegLogic.models import registry

torch = pytest.importorskip("torch")
slicer = pytest.importorskip("slicer")


def make_scene():
    from NerveSegLogic.scene import mrml

    return mrml.new_scene()


def write_volume(node, pixels: np.ndarray, spacing=(0.2, 0.3, 1.0), origin=(-10.0, 5.0, 2.0)) -> None:
    """What an image receiver does to its node: new pixels in place, geometry on the node (written here with VTK
    directly, so this test does not depend on scene/'s own writer)."""
    from vtkmodules.util import numpy_support
    from vtkmodules.vtkCommonDataModel import vtkImageData

    height, width = pixels.shape[:2]
    components = 1 if pixels.ndim == 2 else pixels.shape[2]
    image_data = node.GetImageData()
    if image_data is None or image_data.GetDimensions() != (width, height, 1) \
            or image_data.GetNumberOfScalarComponents() != components:
        image_data = vtkImageData()
        image_data.SetDimensions(width, height, 1)
        image_data.AllocateScalars(numpy_support.get_vtk_array_type(pixels.dtype), components)
        node.SetAndObserveImageData(image_data)
    view = numpy_support.vtk_to_numpy(image_data.GetPointData().GetScalars())
    view[...] = pixels.reshape(view.shape)
    image_data.GetPointData().GetScalars().Modified()
    image_data.Modified()
    node.SetSpacing(*spacing)
    node.SetOrigin(*origin)


def tick_until(controller, predicate, timeout=60.0):
    deadline = time.monotonic() + timeout
    while not predicate():
        controller.tick()
        assert time.monotonic() < deadline, controller.status().text()
        time.sleep(0.002)


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread():
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def test_each_update_of_the_input_volume_is_segmented_once_with_its_geometry():
    scene = make_scene()
    source = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "Image_Reference")
    rng = np.random.default_rng(0)
    write_volume(source, rng.integers(0, 255, (60, 80), dtype=np.uint8))
    threads_before = {t.ident for t in threading.enumerate()}

    controller = LiveController(scene, segmenter_factory=segmenter_with_random_fallback)
    controller.use_volume_node(source)
    controller.select_model(registry.default_name(), "torch", "auto")  # the panel's default compute choice
    applied = []
    controller.result_applied.connect(applied.append)
    controller.start()
    try:
        tick_until(controller, lambda: len(applied) == 1)
        for update in range(2):
            pixels = rng.integers(0, 255, (60, 80), dtype=np.uint8)
            write_volume(source, pixels)
            tick_until(controller, lambda: len(applied) == update + 2)
            assert np.array_equal(applied[-1].frame.image, pixels)
        # nothing changed: ticking reads no new frame
        for _ in range(50):
            controller.tick()
        assert controller._run.volume_input.frames_read == 3
        assert controller.status().connected is None  # no connection to report for a volume input
    finally:
        controller.stop()
    assert len(applied) == 3
    geometry = applied[-1].frame.geometry
    assert geometry.spacing == pytest.approx((0.2, 0.3, 1.0))
    assert geometry.origin == pytest.approx((-10.0, 5.0, 2.0))
    assert [r.frame.frame_id for r in applied] == [1, 2, 3]
    assert controller.scene.recorded_count == 3
    assert {t.ident for t in threading.enumerate()} == threads_before
    with pytest.raises(ValueError, match="own output volume"):
        controller.use_volume_node(controller.volume_node)
    controller.scene.clear()


def test_removing_the_input_volume_stops_the_run_with_a_message():
    scene = make_scene()
    source = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "Image_Reference")
    write_volume(source, np.zeros((32, 32), dtype=np.uint8))
    controller = LiveController(scene, segmenter_factory=segmenter_with_random_fallback)
    controller.use_volume_node(source)
    controller.select_model(registry.default_name())
    controller.start()
    scene.RemoveNode(source)
    controller.tick()
    assert not controller.running
    assert "was removed" in controller.status().text()
    with pytest.raises(ValueError, match="no longer in the scene"):
        controller.start()
    controller.scene.clear()


def test_rgb_volume_becomes_a_grey_frame_and_3d_volumes_are_refused():
    scene = make_scene()
    node = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "Video")
    rgb = np.zeros((10, 12, 3), dtype=np.uint8)
    rgb[..., 0] = 200  # pure red
    write_volume(node, rgb)
    frame = frame_from_volume_node(node, 5)
    assert frame.image.shape == (10, 12) and frame.frame_id == 5 and frame.device_name == "Video"
    assert 0 < int(frame.image[0, 0]) < 200  # luminance of red, not a channel copied through
    assert "received" in frame.timestamps

    from vtkmodules.vtkCommonDataModel import vtkImageData

    volume = vtkImageData()
    volume.SetDimensions(4, 4, 3)
    volume.AllocateScalars(3, 1)  # VTK_UNSIGNED_CHAR
    node.SetAndObserveImageData(volume)
    with pytest.raises(ValueError, match="2D frames"):
        frame_from_volume_node(node, 6)
    empty = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "Empty")
    with pytest.raises(ValueError, match="no image yet"):
        frame_from_volume_node(empty, 7)
