"""The steady overlay and the confidence display wired into the live path (issue 25, items 4 and 5), run the way 3D
Slicer runs it (slicerlike.py: Slicer's Sequences logic on the scene, the worker process):

- inside the segmenter the filter gives exactly what ``SteadyOverlay.apply`` after it gives, with one labelmap made;
- off (``--no-steady``) the live engine's labelmaps are the segmenter's own, bit for bit, each with its presence;
- a real worker process sends each class's presence and state (and the image region) to the parent;
- the controller's status shows the confidence; ``set_steady`` restarts a running worker with the new setting;
- on the slicer-core segmentation node an uncertain class is an outline only and a hidden class is not drawn, and a
  segment's display changes only when its state does;
- ``nerveseg serve`` sends presence and state in the labelmap's IGTL metadata, and the panel's remote mode reads
  them back.

The model is the default effnet2-unet (its weights ship); the bundled sample's 24 frames are unrelated views, so a
moving probe is made by shifting one of them.
"""

from __future__ import annotations

import threading
import time

import cv2
import numpy as np
import pytest

from NerveSegLogic import cli
from NerveSegLogic.live.controller import LiveController
from NerveSegLogic.live.selftest import run_sample_replay
from NerveSegLogic.frame import Frame, SegmentationResult
from NerveSegLogic.inference.steady import SteadyOptions, SteadyOverlay
from NerveSegLogic.live.status import ClassConfidence, LiveStatus
from NerveSegLogic.models import registry
from NerveSegLogic.resources import sample_dir
from NerveSegLogic.scene import display
from NerveSegLogic.scene.live import LiveScene
from slicerlike import slicer_scene

STATES = {"shown", "uncertain", "hidden"}


@pytest.fixture(scope="module")
def segmenter():
    from NerveSegLogic.inference.segmenter import load_segmenter

    return load_segmenter(registry.default_name(), backend="auto", threads=1)


def sample_images(count=24):
    files = sorted((sample_dir() / "images").glob("*.png"))[:count]
    return [cv2.imread(str(path), cv2.IMREAD_GRAYSCALE) for path in files]


def moving_probe(image, count=12, step=3.0, seed=0):
    """``image`` slid sideways ``step`` px per frame (borders reflected), with a little per-frame noise."""
    rng = np.random.default_rng(seed)
    height, width = image.shape
    out = []
    for t in range(count):
        matrix = np.float32([[1, 0, step * t], [0, 1, 0.5 * step * t]])
        moved = cv2.warpAffine(image.astype(np.float32), matrix, (width, height), borderMode=cv2.BORDER_REFLECT101)
        noisy = moved * (1.0 + 0.08 * rng.standard_normal(moved.shape).astype(np.float32))
        out.append(np.clip(noisy, 0, 255).astype(np.uint8))
    return out


def tick_until(controller, predicate, timeout=120.0):
    deadline = time.monotonic() + timeout
    while not predicate():
        controller.tick()
        assert time.monotonic() < deadline, controller.status().text()
        time.sleep(0.003)


# ---------------------------------------------------------------------------------------------------- segmenter
def test_inside_the_segmenter_equals_apply_after_it_and_steadies_a_moving_probe(segmenter):
    inside = SteadyOverlay.for_segmenter(segmenter, SteadyOptions())
    after = SteadyOverlay.for_segmenter(segmenter, SteadyOptions())
    changed = 0
    for k, image in enumerate(moving_probe(sample_images(1)[0])):
        frame = Frame(image=image, frame_id=k)
        steadied = segmenter.segment(image, frame, steady=inside)
        plain = segmenter.segment(image)
        applied = after.apply(segmenter.segment(image))
        assert steadied.frame is frame and "postprocessed" in frame.timestamps  # this frame's own result
        assert np.array_equal(steadied.labelmap, applied.labelmap), f"frame {k}"
        assert steadied.presence == applied.presence and steadied.states == applied.states
        assert set(steadied.presence) == {c.key for c in segmenter.classes}
        assert set(steadied.states.values()) <= STATES
        changed += not np.array_equal(steadied.labelmap, plain.labelmap)
    assert inside.resets == 0, "a probe sliding 3 px a frame is one stream, not a cut"
    assert changed >= 5, f"the steadied labelmap differs from the per-frame one in only {changed} of 12 frames"


def test_no_steady_engine_gives_todays_labelmaps_bit_for_bit_each_with_its_presence(segmenter):
    """The live engine with the overlay off (``--no-steady``) on the bundled sample and on a moving probe: every
    labelmap is the segmenter's plain answer, and every result says how sure it is."""
    from NerveSegLogic.live.engine import InferenceEngine
    from NerveSegLogic.slot import NewestSlot

    frames = NewestSlot()
    engine = InferenceEngine(segmenter, frames, steady=False)
    assert engine.steady_options == SteadyOptions.off()
    engine.start()
    try:
        for k, image in enumerate(sample_images(8) + moving_probe(sample_images(1)[0], count=6)):
            frame = Frame(image=image, frame_id=k)
            frame.stamp("received")
            frames.put(frame)
            result = engine.results.take(timeout=60)
            assert result is not None and result.frame is frame
            assert np.array_equal(result.labelmap, segmenter.segment(image).labelmap), f"frame {k}"
            assert set(result.presence) == {c.key for c in segmenter.classes}
            assert all(0.0 <= p <= 1.0 for p in result.presence.values())
            # a card without thresholds: shown exactly where the labelmap holds the class
            for c in segmenter.classes:
                assert result.states[c.key] == ("shown" if (result.labelmap == c.label).any() else "hidden")
    finally:
        engine.stop()
    assert engine.counters()["errors"] == 0


def test_demo_and_serve_take_steady_and_no_steady_and_serve_no_metadata():
    parser = cli.build_parser()
    assert parser.parse_args(["demo"]).steady is True
    assert parser.parse_args(["demo", "--no-steady"]).steady is False
    assert parser.parse_args(["serve", "--input", "127.0.0.1:18944"]).steady is True
    assert parser.parse_args(["serve", "--input", "127.0.0.1:18944", "--no-steady"]).steady is False
    assert parser.parse_args(["serve", "--input", "127.0.0.1:18944"]).metadata is True
    assert parser.parse_args(["serve", "--input", "127.0.0.1:18944", "--no-metadata"]).metadata is False


# ---------------------------------------------------------------------------------------------------- status
def test_the_status_line_shows_each_class_confidence():
    confidence = (ClassConfidence("nerve", "Nerve", 0.93, "shown"),
                  ClassConfidence("blood_vessel", "Blood vessel", 0.41, "uncertain"))
    status = LiveStatus(running=True, model="m", connected=True, source="127.0.0.1:18944", confidence=confidence)
    assert status.confidence_text() == "Nerve 93 % | Blood vessel 41 % (uncertain)"
    assert "| Nerve 93 % | Blood vessel 41 % (uncertain)" in status.text()
    assert "Nerve" not in status.text(confidence=False)  # the panel shows it in a label of its own
    hidden = ClassConfidence("nerve", "Nerve", 0.04, "hidden")
    assert hidden.text() == "Nerve 4 % (not drawn)"
    assert LiveStatus(running=True).confidence_text() == ""


# ---------------------------------------------------------------------------------------------------- worker
def test_the_worker_sends_presence_states_and_region_and_the_status_shows_them():
    """A real worker process (the panel's default mode) on the replayed sample with an image region: every result
    the parent applies carries each class's presence and state and the region; the status line shows them; a change
    of the steady setting restarts the worker with it."""
    from NerveSegLogic.imaging.region import Region

    controller = LiveController(slicer_scene())
    results = []
    controller.result_applied.connect(results.append)
    controller.set_region("20,16,480,470")
    assert controller.steady
    report = run_sample_replay(controller, frames=6, fps=10.0, mode="child-process", timeout_s=180)
    assert report.applied >= 3 and report.errors == 0, report.status
    classes = {c.key for c in registry.card(registry.default_name()).classes}
    for result in results:
        assert set(result.presence) == classes and set(result.states) == classes
        assert all(0.0 <= p <= 1.0 for p in result.presence.values())
        assert set(result.states.values()) <= STATES
        assert result.region == Region(20, 16, 480, 470)
        assert not result.labelmap[:16].any() and not result.labelmap[:, :20].any()  # nothing outside the region
        for c in result.classes:  # a hidden class is not in the labelmap
            if result.states[c.key] == "hidden":
                assert not (result.labelmap == c.label).any()
    assert "Nerve " in report.confidence and "%" in report.confidence, report.confidence
    # stopped: every class drawn as shown again, for browsing the recording
    assert set(controller.scene.class_states.values()) == {"shown"}

    # switched off while running: the worker restarts with --steady off
    controller.connect("127.0.0.1", 9)  # nothing listens: the worker just waits
    controller.start("child-process")
    try:
        assert controller._run.worker_args[controller._run.worker_args.index("--steady") + 1] == "on"
        assert controller.set_steady(False).endswith("off (each frame on its own)")
        assert controller.running
        assert controller._run.worker_args[controller._run.worker_args.index("--steady") + 1] == "off"
        assert controller.status().steady is False
    finally:
        controller.stop()
    controller.scene.clear()


# ---------------------------------------------------------------------------------------------------- scene
def result_with(classes, labelmap, states, presence=None):
    frame = Frame(image=np.full(labelmap.shape, 80, np.uint8), frame_id=1)
    frame.stamp("received")
    return SegmentationResult(frame=frame, labelmap=labelmap, model_name="m", classes=classes,
                              presence=presence or {k: 0.5 for k in states}, states=states)


def test_an_uncertain_class_is_an_outline_and_a_hidden_class_is_not_drawn_on_the_segmentation_node():
    classes = registry.card(registry.default_name()).classes
    scene = LiveScene(classes, mrml_scene=slicer_scene(), record=False)
    node = scene.segmentation_node
    display_node = node.GetDisplayNode()
    labelmap = np.zeros((64, 80), np.uint8)
    labelmap[10:30, 10:30] = 1  # the nerve; the vessel was hidden by the filter, so none of it is here
    scene.apply(result_with(classes, labelmap, {"nerve": "uncertain", "blood_vessel": "hidden"}))
    assert display.segment_fill_outline(node, "nerve") == (False, True)  # outline only
    assert display.segment_fill_outline(node, "blood_vessel") == (False, False)  # not drawn
    assert display.segment_visible(node, "nerve")  # what the user sets (segments table) is left alone
    changes, mtime = scene.state_changes, display_node.GetMTime()
    for _ in range(3):  # the same states again: the display node is not touched
        scene.apply(result_with(classes, labelmap, {"nerve": "uncertain", "blood_vessel": "hidden"}))
    assert scene.state_changes == changes and display_node.GetMTime() == mtime
    scene.apply(result_with(classes, labelmap, {"nerve": "shown", "blood_vessel": "shown"}))
    assert display.segment_fill_outline(node, "nerve") == (True, True)
    assert display.segment_fill_outline(node, "blood_vessel") == (True, True)
    assert scene.state_changes == changes + 2

    # the panel draws fill only: an uncertain class is a fainter fill instead, and gets its opacity back after
    scene.set_class_opacity("nerve", 0.8)
    scene.set_fill_outline(True, False)
    scene.apply(result_with(classes, labelmap, {"nerve": "uncertain", "blood_vessel": "shown"}))
    assert display.segment_fill_outline(node, "nerve") == (True, True)  # the outline is off for all anyway
    assert display.segment_opacity(node, "nerve") == pytest.approx(0.8 * display.UNCERTAIN_FILL_FRACTION)
    scene.set_fill_outline(True, True)  # outlines back on: outline only again, its own opacity back
    assert display.segment_fill_outline(node, "nerve") == (False, True)
    assert display.segment_opacity(node, "nerve") == pytest.approx(0.8)
    scene.apply(result_with(classes, labelmap, {"nerve": "shown", "blood_vessel": "shown"}))
    assert display.segment_fill_outline(node, "nerve") == (True, True)

    # a result without states (an older server) draws every class as shown
    scene.apply(result_with(classes, labelmap, {"nerve": "uncertain", "blood_vessel": "shown"}))
    plain = result_with(classes, labelmap, {})
    plain.states = None
    scene.apply(plain)
    assert scene.class_states == {"nerve": "shown", "blood_vessel": "shown"}

    # the run stops: every class is drawn as shown again (the recording is browsed and saved that way)
    scene.apply(result_with(classes, labelmap, {"nerve": "uncertain", "blood_vessel": "hidden"}))
    scene.reset_states()
    assert scene.class_states == {"nerve": "shown", "blood_vessel": "shown"}
    assert display.segment_fill_outline(node, "nerve") == display.segment_fill_outline(node, "blood_vessel") \
        == (True, True)
    scene.clear()


# ---------------------------------------------------------------------------------------------------- serve
def test_serve_sends_presence_and_state_in_the_labelmap_metadata_and_remote_mode_reads_them():
    from NerveSegLogic.live.serve import LABEL_DEVICE_NAME, SegmentationServer, ServeOptions
    from NerveSegLogic.stream.receiver import ImageReceiver
    from NerveSegLogic.stream.replay import ReplayServer

    replay = ReplayServer(None, fps=10.0, loop=True)
    replay.start()
    server = SegmentationServer(ServeOptions(input_host="127.0.0.1", input_port=replay.port, port=0, threads=1,
                                             device_name="Image_Reference"))
    server.start()
    serving = threading.Thread(target=server.serve_forever, daemon=True)
    serving.start()
    client = ImageReceiver("127.0.0.1", server.port, device_name=LABEL_DEVICE_NAME)
    controller = LiveController(slicer_scene())  # remote mode in-process (RemoteRun), as headless
    results = []
    controller.result_applied.connect(results.append)
    try:
        client.start()
        assert client.wait_for_frames(2, timeout=120), client.stats()
        label = client.frames.take(timeout=5)
        classes = server.segmenter.classes
        for c in classes:
            assert 0.0 <= float(label.metadata[f"NerveSeg.presence.{c.key}"]) <= 1.0
            assert label.metadata[f"NerveSeg.state.{c.key}"] in STATES
            if label.metadata[f"NerveSeg.state.{c.key}"] == "hidden":
                assert not (label.image == c.label).any()

        controller.select_model(registry.default_name())
        controller.connect("127.0.0.1", replay.port, "Image_Reference")
        controller.connect_remote("127.0.0.1", server.port)
        controller.start("remote")
        tick_until(controller, lambda: controller.status().frames_applied >= 3)
        status = controller.status()
        assert controller.scene.class_states == {k: v for k, v in results[-1].states.items()}  # drawn as received
    finally:
        controller.stop()
        client.stop()
        server.stop()
        serving.join(5)
        server.close()
        replay.stop()
    assert status.errors == 0, status.text()
    for result in results:
        assert set(result.presence) == {c.key for c in classes} and set(result.states.values()) <= STATES
    assert [c.key for c in status.confidence] == [c.key for c in classes]
    assert "Nerve " in status.text() and "%" in status.confidence_text()
    controller.scene.clear()
