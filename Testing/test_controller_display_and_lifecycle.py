"""Display and recording settings reach the segmentation's MRML display node (set before or during a run), and
scene close / module cleanup stop everything. slicer-core MRML; frames come from a volume node (no sockets); the
model is the default one with RANDOM weights when no trained weights ship."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest

from NerveSegLogic.live.controller import LiveController
from NerveSegLogic.live.selftest import segmenter_with_random_fallback
from NerveSegLogic.models import registry

torch = pytest.importorskip("torch")
pytest.importorskip("slicer")


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread():
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def volume_source(scene):
    from NerveSegLogic.scene.nodes import update_volume
    from NerveSegLogic.frame import ImageGeometry

    node = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "Image_Reference")

    def show(seed: int) -> None:
        image = np.random.default_rng(seed).integers(0, 255, (48, 64), dtype=np.uint8)
        update_volume(node, image, ImageGeometry(spacing=(0.15, 0.15, 1.0)))

    show(0)
    return node, show


def tick_until(controller, predicate, timeout=60.0):
    deadline = time.monotonic() + timeout
    while not predicate():
        controller.tick()
        assert time.monotonic() < deadline, controller.status().text()
        time.sleep(0.002)


def started_controller():
    from NerveSegLogic.scene import mrml

    scene = mrml.new_scene()
    node, show = volume_source(scene)
    controller = LiveController(scene, segmenter_factory=segmenter_with_random_fallback)
    controller.use_volume_node(node)
    controller.select_model(registry.default_name())
    return controller, show


def test_display_settings_made_before_and_during_a_run_reach_the_display_node():
    from NerveSegLogic.scene import display

    controller, show = started_controller()
    controller.set_class_visible("nerve", False)
    controller.set_fill_outline(False, True)
    controller.set_names_visible(True)
    controller.set_opacity(0.3)
    with pytest.raises(KeyError, match="classes: nerve, blood_vessel"):
        controller.set_class_visible("muscle", True)
    with pytest.raises(ValueError, match="between 0 and 1"):
        controller.set_opacity(1.5)
    controller.start()
    try:
        segmentation = controller.segmentation_node
        assert display.segment_visible(segmentation, "nerve") is False
        assert display.segment_visible(segmentation, "blood_vessel") is True
        assert display.fill_outline(segmentation) == (False, True)
        assert controller.scene.region_names.visible is True
        assert display.segment_opacity(segmentation, "nerve") == pytest.approx(0.3)

        controller.set_class_opacity("blood_vessel", 0.8)  # as Slicer's segments table would
        controller.set_opacity(0.3)  # the panel passing the unchanged slider value on again: no effect
        assert display.segment_opacity(segmentation, "blood_vessel") == pytest.approx(0.8)
        controller.set_opacity(0.6)
        assert display.segment_opacity(segmentation, "blood_vessel") == pytest.approx(0.6)
        controller.set_fill_outline(True, False)
        controller.set_names_visible(False)
        assert display.fill_outline(segmentation) == (True, False)
        assert controller.scene.region_names.visible is False
    finally:
        controller.stop()
    controller.scene.clear()


def test_recording_can_be_paused_and_resumed_during_a_run():
    controller, show = started_controller()
    applied = []
    controller.result_applied.connect(applied.append)
    controller.start()
    try:
        tick_until(controller, lambda: len(applied) == 1)
        assert controller.recording and controller.scene.recorded_count == 1
        controller.set_recording(False)
        show(1)
        tick_until(controller, lambda: len(applied) == 2)
        assert controller.scene.recorded_count == 1  # shown, not recorded
        controller.set_recording(True)
        show(2)
        tick_until(controller, lambda: len(applied) == 3)
        assert controller.scene.recorded_count == 2
        assert controller.scene.recorded_frame_ids == [applied[0].frame_id, applied[2].frame_id]
    finally:
        controller.stop()
    controller.scene.clear()


def test_scene_close_and_cleanup_stop_everything_and_forget_the_scene():
    threads_before = {t.ident for t in threading.enumerate()}
    controller, show = started_controller()
    running = []
    controller.running_changed.connect(running.append)
    controller.start()
    assert controller.running and threading.active_count() > len(threads_before)
    controller.on_scene_close()
    assert not controller.running and running == [True, False]
    assert controller.scene is None and controller.input is None  # the input volume goes with the scene
    assert {t.ident for t in threading.enumerate()} == threads_before
    with pytest.raises(ValueError, match="choose an input first"):
        controller.start()
    controller.cleanup()
    assert len(controller.running_changed) == 0 and len(controller.status_changed) == 0
    controller.cleanup()  # twice is harmless
