"""The live controller on slicer-core: a replay server over loopback, the real receiver, inference engine and
LiveScene, driven by tick() as the Slicer panel's timer does.

Model: the registry's default model with its shipped weights when the card ships some; otherwise the SAME
architecture with RANDOM weights (``segmenter_with_random_fallback``). Random weights test the path (threads, shapes,
classes, MRML, recording), not the masks; the test prints which one it used.
"""

from __future__ import annotations

import os
import threading

import pytest

from NerveSegLogic.live.controller import LiveController
from NerveSegLogic.live.selftest import run_sample_replay, segmenter_with_random_fallback
from NerveSegLogic.models import registry

torch = pytest.importorskip("torch")  # the in-process path runs the model; remote mode has its own test


def open_sockets() -> int:
    """Sockets this process holds (Linux /proc)."""
    fds = os.listdir("/proc/self/fd")
    count = 0
    for fd in fds:
        try:
            count += os.readlink(f"/proc/self/fd/{fd}").startswith("socket:")
        except OSError:
            pass
    return count


needs_proc = pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="socket count needs Linux /proc")


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread():
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="module")
def model_name() -> str:
    name = registry.default_name()
    card = registry.card(name)
    print(f"model {name}: {'shipped weights' if card.has_weights else 'RANDOM weights (no trained weights shipped)'}")
    return name


@needs_proc
def test_replayed_sample_is_segmented_recorded_once_per_frame_and_leaves_nothing_running(model_name):
    threads_before = {t.ident for t in threading.enumerate()}
    sockets_before = open_sockets()
    controller = LiveController(segmenter_factory=segmenter_with_random_fallback)
    applied = []
    controller.result_applied.connect(applied.append)

    report = run_sample_replay(controller, frames=8, fps=20.0, model=model_name, timeout_s=120)

    card = registry.card(model_name)
    assert report.segment_ids == tuple(c.key for c in card.classes)
    assert report.segment_names == tuple(c.name for c in card.classes)
    assert report.frames_sent == 8 and report.frames_received == 8
    assert report.errors == 0, report.status
    assert report.applied >= 1
    assert report.applied + report.dropped == report.frames_received, report.status
    # one recorded item per applied frame, item for item
    assert report.recorded == report.applied == len(applied)
    assert controller.scene.recorded_frame_ids == [r.frame_id for r in applied]
    assert controller.scene.image_sequence_node.GetNumberOfDataNodes() == len(applied)
    assert controller.scene.segmentation_sequence_node.GetNumberOfDataNodes() == len(applied)
    # the live nodes show the last applied frame, at its geometry
    last = applied[-1]
    assert controller.volume_node.GetSpacing() == pytest.approx(last.frame.geometry.spacing)
    assert not controller.running
    assert {t.ident for t in threading.enumerate()} == threads_before
    assert open_sockets() == sockets_before
    controller.cleanup()
    controller.scene.clear()


def test_stop_twice_and_start_again_work(model_name):
    from NerveSegLogic.stream.replay import ReplayServer

    controller = LiveController(segmenter_factory=segmenter_with_random_fallback)
    controller.stop()  # nothing running: nothing happens
    first = run_sample_replay(controller, frames=3, fps=20.0, model=model_name)
    controller.stop()
    second = run_sample_replay(controller, frames=3, fps=20.0)
    assert first.applied >= 1 and second.applied >= 1
    # the same scene keeps recording across runs
    assert controller.scene.recorded_count == first.applied + second.applied
    # start() while running in the same mode does nothing; stop() twice is harmless
    replay = ReplayServer(None, fps=20.0, max_frames=2, wait_for_client=True)
    replay.start()
    try:
        controller.connect("127.0.0.1", replay.port)
        controller.start()
        run = controller._run
        controller.start()
        assert controller._run is run
    finally:
        controller.stop()
        controller.stop()
        replay.stop()
    assert not controller.running
    controller.scene.clear()


def test_start_with_unloadable_model_leaves_nothing_running():
    threads_before = {t.ident for t in threading.enumerate()}

    def broken(name, backend, device):
        raise ImportError("No module named 'torch' (stand-in for a Slicer without PyTorch)")

    controller = LiveController(segmenter_factory=broken)
    controller.connect("127.0.0.1", 18944)
    controller.select_model(registry.default_name())
    with pytest.raises(ImportError, match="torch"):
        controller.start()
    assert not controller.running
    assert controller.status().running is False
    assert {t.ident for t in threading.enumerate()} == threads_before
