"""Server loss and remote mode, over real loopback sockets.

- The input server (the replay server standing in for PLUS) goes away mid-run: the status says the connection was
  lost, tick() raises nothing, and stop() leaves no thread behind.
- Remote mode: a ``nerveseg serve`` (SegmentationServer) segments the replayed stream and sends NerveSegLabel
  labelmaps back; the controller pairs each with its frame by IGTL timestamp. The server's segmenter here is a
  fixed threshold (label 1 above 128, 2 above 200), so every applied labelmap can be checked against the frame it
  was paired with: a wrong pairing would not match. Then the server goes away: the status says so.
"""

from __future__ import annotations

import os
import threading
import time

import numpy as np
import pytest

from NerveSegLogic.classes import classes_from_mapping
from NerveSegLogic.live.controller import LiveController
from NerveSegLogic.live.selftest import segmenter_with_random_fallback
from NerveSegLogic.frame import SegmentationResult
from NerveSegLogic.models import registry
from NerveSegLogic.stream.replay import ReplayServer


def open_sockets() -> int:
    """Sockets this process holds (Linux /proc), or -1 where /proc is not available."""
    if not os.path.isdir("/proc/self/fd"):
        return -1
    count = 0
    for fd in os.listdir("/proc/self/fd"):
        try:
            count += os.readlink(f"/proc/self/fd/{fd}").startswith("socket:")
        except OSError:
            pass
    return count


def tick_until(controller, predicate, timeout=60.0):
    """Tick like the panel's timer until ``predicate()``; fails with the status after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while not predicate():
        controller.tick()
        assert time.monotonic() < deadline, controller.status().text()
        time.sleep(0.002)


def threshold_labelmap(image: np.ndarray) -> np.ndarray:
    return ((image > 128).astype(np.uint8) + (image > 200).astype(np.uint8)).astype(np.uint8)


class ThresholdSegmenter:
    """A stand-in model for the server: deterministic, so pairings can be checked."""

    classes = classes_from_mapping({1: "nerve", 2: "blood_vessel"})

    def warm_up(self, *args) -> None:
        pass

    def segment(self, image, frame=None) -> SegmentationResult:
        frame.stamp("preprocessed")
        frame.stamp("inferred")
        frame.stamp("postprocessed")
        return SegmentationResult(frame=frame, labelmap=threshold_labelmap(frame.image), model_name="threshold",
                                  classes=self.classes)

    def describe(self) -> str:
        return "threshold stand-in"


def test_input_server_lost_mid_run_is_reported_and_nothing_raises():
    torch = pytest.importorskip("torch")
    torch.set_num_threads(1)
    threads_before = {t.ident for t in threading.enumerate()}
    replay = ReplayServer(None, fps=20.0, loop=True, wait_for_client=True)
    replay.start()
    controller = LiveController(segmenter_factory=segmenter_with_random_fallback)
    controller.connect("127.0.0.1", replay.port)
    controller.select_model(registry.default_name())
    statuses = []
    controller.status_changed.connect(statuses.append)
    try:
        controller.start()
        tick_until(controller, lambda: controller.status().frames_applied >= 2)
        assert controller.status().connected is True
        replay.stop()  # PLUS goes away
        tick_until(controller, lambda: controller.status().input_lost)
        for _ in range(20):
            controller.tick()  # keeps ticking, without raising, while the receiver reconnects
        status = controller.status()
        assert status.running and status.connected is False
        assert "CONNECTION LOST to 127.0.0.1" in status.text()
    finally:
        controller.stop()
        replay.stop()
    assert not controller.running
    assert statuses[-1].running is False  # stop() reported
    assert {t.ident for t in threading.enumerate()} == threads_before
    controller.scene.clear()


def test_remote_labelmaps_are_shown_on_the_frames_they_were_computed_from():
    from NerveSegLogic.live.serve import ServeOptions, SegmentationServer

    threads_before = {t.ident for t in threading.enumerate()}
    sockets_before = open_sockets()
    replay = ReplayServer(None, fps=15.0, loop=True, wait_for_client=True)
    replay.start()
    server = SegmentationServer(ServeOptions(input_host="127.0.0.1", input_port=replay.port, port=0,
                                             host="127.0.0.1", device_name="Image_Reference"),
                                segmenter=ThresholdSegmenter())
    server.start()
    serving = threading.Thread(target=server.serve_forever, name="test-serve", daemon=True)
    serving.start()

    def no_model_here(*args):
        raise AssertionError("remote mode must not load a model on this machine")

    controller = LiveController(segmenter_factory=no_model_here)
    controller.connect("127.0.0.1", replay.port, "Image_Reference")
    controller.select_model(registry.default_name())  # its classes name the labels: nerve 1, blood vessel 2
    controller.connect_remote("127.0.0.1", server.port)
    applied = []
    controller.result_applied.connect(applied.append)
    try:
        controller.start("remote")
        tick_until(controller, lambda: len(applied) >= 6)
        status = controller.status()
        assert status.connected and status.remote_connected
        for result in applied:
            assert np.array_equal(result.labelmap, threshold_labelmap(result.frame.image)), result.frame_id
            assert result.model_name.endswith("(remote)")
        assert len({r.frame.igtl_timestamp for r in applied}) == len(applied)
        assert controller.scene.recorded_count == len(applied)
        segmentation = controller.segmentation_node.GetSegmentation()
        assert [segmentation.GetNthSegmentID(i) for i in range(segmentation.GetNumberOfSegments())] == \
            ["nerve", "blood_vessel"]

        server.stop()  # the GPU box goes away
        serving.join(10)
        server.close()
        tick_until(controller, lambda: controller.status().remote_lost)
        assert "SERVER LOST 127.0.0.1" in controller.status().text()
    finally:
        controller.stop()
        server.stop()
        serving.join(10)
        server.close()
        replay.stop()
    assert {t.ident for t in threading.enumerate()} == threads_before
    assert open_sockets() == sockets_before
    controller.scene.clear()


def test_remote_mode_needs_the_images_over_openigtlink():
    slicer = pytest.importorskip("slicer")
    from NerveSegLogic.scene import mrml

    scene = mrml.new_scene()
    node = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "Image_Reference")
    controller = LiveController(scene)
    controller.use_volume_node(node)
    controller.select_model(registry.default_name())
    controller.connect_remote("127.0.0.1", 18945)
    with pytest.raises(ValueError, match="needs the images over OpenIGTLink"):
        controller.start("remote")
    assert not controller.running
