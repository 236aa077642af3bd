"""The live panel's logic run the way 3D Slicer runs it (see slicerlike.py): Slicer's Sequences logic on the scene,
a main thread that keeps the GIL between timer ticks, the packages a bare Slicer lacks blocked. Every test checks
content (the pixels applied, shown and recorded), not counts: a count passed while every recorded item was item 0.
"""

from __future__ import annotations

import os
import signal
import time

import numpy as np
import pytest

from NerveSegLogic.live.controller import LiveController
from NerveSegLogic.live.selftest import run_sample_replay
from NerveSegLogic.models import registry
from NerveSegLogic.scene import mrml
from NerveSegLogic.scene.nodes import volume_array
from slicerlike import GilHoldingDriver, run_bare, slicer_scene

pytestmark = pytest.mark.skipif(os.name == "nt", reason="the GIL-holding driver uses libc's usleep")

SAMPLE_FRAMES = 24  # Resources/Sample: 24 distinct usgra-seg frames, 534 x 512


def shown_labelmap(segmentation_node) -> np.ndarray:
    """The labelmap the segmentation node holds (all class segments share one labelmap)."""
    segmentation = segmentation_node.GetSegmentation()
    segment = segmentation.GetSegment(segmentation.GetNthSegmentID(0))
    return mrml.scalars_view(segment.GetRepresentation(mrml.BINARY_LABELMAP)).copy()


class ContentCheck:
    """After every tick that applied a result: the live volume shows exactly that frame and the segmentation its
    labelmap. Keeps copies of what was applied, to compare with the recording afterwards."""

    def __init__(self, controller: LiveController):
        self.controller = controller
        self.applied = []  # (image, labelmap) copies, in order
        self.frame_ids = []  # the receiver numbers frames 1, 2, ... in arrival order
        self.mismatches = []
        controller.result_applied.connect(self.on_applied)

    def on_applied(self, result) -> None:
        image, labelmap = result.frame.image.copy(), np.asarray(result.labelmap).copy()
        self.applied.append((image, labelmap))
        self.frame_ids.append(int(result.frame_id))
        shown_image = volume_array(self.controller.volume_node)
        shown_labels = shown_labelmap(self.controller.segmentation_node)
        if not (np.array_equal(shown_image, image) and np.array_equal(shown_labels, labelmap)):
            self.mismatches.append(len(self.applied) - 1)

    def assert_recording_equals_what_was_applied(self) -> None:
        scene = self.controller.scene
        images, segmentations = scene.image_sequence_node, scene.segmentation_sequence_node
        assert images.GetNumberOfDataNodes() == len(self.applied) == segmentations.GetNumberOfDataNodes()
        for i, (image, labelmap) in enumerate(self.applied):
            assert np.array_equal(volume_array(images.GetNthDataNode(i)), image), f"recorded image {i}"
            assert np.array_equal(shown_labelmap(segmentations.GetNthDataNode(i)), labelmap), f"recorded labels {i}"
        # The 24 sample frames all differ and are replayed in a loop: recorded items are as distinct as the source
        # frames they came from (item 0 recorded over and over would fail here).
        distinct = {image.tobytes() for image, _ in self.applied}
        sources = {(frame_id - 1) % SAMPLE_FRAMES for frame_id in self.frame_ids}
        assert len(distinct) == len(sources), "recorded items must be as distinct as the frames they came from"

    def assert_labelmaps_are_the_models_answers(self, model: str) -> None:
        """Each applied labelmap is what ``model`` on the backend `auto` picks (as the panel runs it; for the
        default: its INT8 graph) answers for that very frame, computed here again, and it marks the nerve: an empty
        or a neighbour's labelmap would pass the checks above. ONNX Runtime may sum in another order in another
        process, so a few pixels at a boundary may differ: at most 0.1 % of a frame. The steady overlay is on (the
        panel's default); the sample's 24 frames are unrelated views, each a cut it notices and starts again at,
        so each labelmap is still the frame's own answer (a moving probe's are checked in test_live_steady.py)."""
        from NerveSegLogic.inference.segmenter import load_segmenter

        segmenter = load_segmenter(model, backend="auto", threads=1)
        nerve = next(c.label for c in segmenter.classes if c.key == "nerve")
        with_nerve = 0
        for i, (image, labelmap) in enumerate(self.applied):
            expected = segmenter.segment(image).labelmap
            assert expected.shape == labelmap.shape, f"applied labelmap {i}"
            differing = float(np.mean(expected != labelmap))
            assert differing <= 0.001, f"applied labelmap {i}: {differing:.2%} of pixels differ from {model}'s answer"
            with_nerve += bool((labelmap == nerve).any())
        assert with_nerve >= 0.9 * len(self.applied), f"a nerve in only {with_nerve} of {len(self.applied)} labelmaps"


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["child-process", "in-process"])
def test_48_replayed_frames_are_shown_and_recorded_each_as_applied_with_the_sequences_logic_attached(mode):
    controller = LiveController(slicer_scene())
    check = ContentCheck(controller)
    # 12 fps leaves the default model (about 12 ms a frame on 2 idle cores) ample time: on an idle machine none
    # is dropped, so the recording must hold all 48 frames, each distinct and equal to what was applied. A busy
    # machine (other jobs: inference then takes 100+ ms) drops stale frames by design; the content must still match.
    idle = os.getloadavg()[0] < 1.0
    report = run_sample_replay(controller, frames=48, fps=12.0, mode=mode, timeout_s=180)
    assert report.frames_sent == 48 and report.frames_received == 48, report.status
    assert report.errors == 0, report.status
    assert report.applied + report.dropped == 48, report.status
    assert report.applied == 48 if idle else report.applied >= 12, report.status
    assert check.mismatches == [], f"live nodes did not show applied frames {check.mismatches}"
    check.assert_recording_equals_what_was_applied()
    check.assert_labelmaps_are_the_models_answers(registry.default_name())
    controller.scene.clear()


@pytest.mark.slow
def test_worker_keeps_segmenting_while_the_main_thread_holds_the_gil_between_ticks():
    """In Slicer the main thread keeps the GIL between timer ticks. With the worker process, receiving and
    inference do not need it: every frame is still received, segmented and shown correctly (the rate under this
    driver is measured in benchmarks/speed/live_path.md)."""
    controller = LiveController(slicer_scene())
    check = ContentCheck(controller)
    driver = GilHoldingDriver(hold_s=0.005)
    report = run_sample_replay(controller, frames=48, fps=12.0, mode="child-process", timeout_s=180,
                               between_ticks=driver)
    assert driver.ticks > 100  # the driver really held the GIL between many ticks
    assert report.frames_received == 48 and report.errors == 0, report.status
    assert report.applied >= (44 if os.getloadavg()[0] < 1.0 else 12), report.status
    assert check.mismatches == []
    check.assert_recording_equals_what_was_applied()
    controller.scene.clear()


def _parent_of(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            return int(f.read().rsplit(b")", 1)[1].split()[1])  # the field after the state: the parent's pid
    except (OSError, ValueError, IndexError):
        return 0


def _is_worker(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return b"NerveSegLogic.live.worker" in f.read()  # empty for a zombie: it has ended
    except OSError:
        return False


def _pids_of_workers():
    """Worker processes started by this test process (its descendants): workers of other test runs sharing the
    machine are not ours to count."""
    out = set()
    me = os.getpid()
    for pid in os.listdir("/proc"):
        if pid.isdigit():
            if not _is_worker(int(pid)):
                continue
            ancestor = int(pid)
            for _ in range(64):
                ancestor = _parent_of(ancestor)
                if ancestor in (0, 1) or ancestor == me:
                    break
            if ancestor == me:
                out.add(int(pid))
    return out


@pytest.mark.slow
@pytest.mark.skipif(not os.path.isdir("/proc"), reason="process listing needs /proc")
def test_a_crashed_worker_is_restarted_with_the_reason_shown_and_stop_leaves_no_process(unet_random):
    from NerveSegLogic.stream.replay import ReplayServer

    before = _pids_of_workers()
    controller = LiveController(slicer_scene())
    controller.select_model(unet_random)
    replay = ReplayServer(None, fps=20.0, loop=True)
    replay.start()
    try:
        controller.connect("127.0.0.1", replay.port, "Image_Reference")
        controller.start("child-process")
        deadline = time.monotonic() + 120
        while controller.status().frames_applied < 3 and time.monotonic() < deadline:
            controller.tick()
            time.sleep(0.005)
        assert controller.status().frames_applied >= 3, controller.status().text()
        (worker,) = _pids_of_workers() - before
        os.kill(worker, signal.SIGKILL)
        messages = set()
        deadline = time.monotonic() + 120
        applied_at_crash = controller.status().frames_applied
        while time.monotonic() < deadline:
            controller.tick()
            messages.add(controller.status().message)
            if controller.status().frames_applied >= applied_at_crash + 3:
                break
            time.sleep(0.005)
        assert any("worker crashed" in m and "restarting" in m for m in messages), messages
        assert controller.status().frames_applied >= applied_at_crash + 3, controller.status().text()
        assert controller.running
        restarted = _pids_of_workers() - before
    finally:
        controller.stop()
        replay.stop()
    time.sleep(0.2)
    assert _pids_of_workers() - before == set(), "a worker process outlived stop()"
    assert not [pid for pid in restarted | {worker} if _is_worker(pid)], "a worker process outlived stop()"
    controller.scene.clear()


@pytest.mark.skipif(not os.path.isdir("/proc"), reason="process listing needs /proc")
def test_a_worker_whose_parent_link_closes_exits_by_itself(unet_random):
    """If Slicer dies (no stop message), the worker sees its link close and ends: no orphan process."""
    from NerveSegLogic.live.worker.parent import WorkerProcess

    process = WorkerProcess(["--role", "segment", "--model", unet_random, "--input", "parent"])
    process.start()
    deadline = time.monotonic() + 120
    while not process.connected and time.monotonic() < deadline:
        process.read()
        time.sleep(0.01)
    assert process.connected
    process._sock.close()  # what the operating system does when Slicer's process dies
    process._sock = None
    process.process.wait(60)  # raises TimeoutExpired if it lingers
    process.stop()


def test_a_connection_without_the_token_is_refused():
    import socket

    from NerveSegLogic.live.worker import link
    from NerveSegLogic.live.worker.parent import WorkerProcess

    process = WorkerProcess(["--role", "segment", "--model", "unet"], python="/bin/false")  # exits at once
    process.start()
    port = process._listener.getsockname()[1]
    intruder = socket.create_connection(("127.0.0.1", port))
    link.send(intruder, "hello", {"token": "guess"})
    for _ in range(50):
        process.read()
        time.sleep(0.01)
    assert not process.connected
    intruder.close()
    process.stop()


def test_the_first_frame_of_a_new_scene_is_announced_once_for_fitting_the_views():
    controller = LiveController(slicer_scene())
    fitted = []
    controller.first_frame.connect(fitted.append)
    report = run_sample_replay(controller, frames=4, fps=20.0, mode="in-process", timeout_s=120)
    assert report.applied >= 1
    assert fitted == [controller.volume_node]
    assert volume_array(fitted[0]).shape == (512, 534)  # announced after the frame was in the node
    controller.scene.clear()


def test_the_panel_sets_up_lists_models_and_offers_install_on_a_bare_slicer():
    """What the panel's setup() and Install button run, in a Python where OpenCV, torch, ONNX Runtime, MONAI and
    safetensors cannot be imported (Slicer 5.8 ships none of them)."""
    done = run_bare("""
        import json, sys
        from types import SimpleNamespace
        from NerveSegLogic.install import slicer_packages
        from NerveSegLogic.annotate.review.controller import ReviewController
        from NerveSegLogic.live.controller import LiveController
        controller = LiveController()
        names = controller.model_names()
        summaries = {name: controller.select_model(name) for name in names}
        missing = slicer_packages.check()
        calls = []
        fake = SimpleNamespace(packaging=SimpleNamespace(
            pip_ensure=lambda reqs, constraints=None, **kw: calls.append(
                ([str(r) for r in reqs], open(constraints).read().split()))))
        class Torch:
            def installTorch(self, askConfirmation=True, torchVersionRequirement=None):
                calls.append(("torch", torchVersionRequirement))
                return object()
        slicer_packages.install(fake, missing, ask=False, torch_installer=Torch)
        print(json.dumps({"names": names, "summaries": summaries, "missing": [m.describe() for m in missing],
                          "calls": calls, "loaded": sorted(m for m in ("cv2", "torch", "onnxruntime", "monai")
                                                            if m in sys.modules)}))
    """)
    assert done.returncode == 0, done.stderr[-3000:]
    import json

    out = json.loads(done.stdout.strip().splitlines()[-1])
    assert "unet" in out["names"] and len(out["names"]) >= 5
    assert all("Classes:" in text for text in out["summaries"].values())
    assert any(m.startswith("PyTorch") for m in out["missing"])
    assert any("opencv-python-headless" in m for m in out["missing"])
    torch_call, plain, dependent = out["calls"]
    assert torch_call[0] == "torch"
    assert any(r.startswith("opencv-python-headless") for r in plain[0]) and not any("torch" in r for r in plain[0])
    assert dependent[0] == ["monai>=1.3"]  # after torch, never pulling it
    assert any(c.startswith("numpy==") for c in plain[1])  # Slicer's numpy held
    assert out["loaded"] == []


def test_recording_memory_stays_under_its_cap_and_stops_with_a_message(tmp_path):
    from NerveSegLogic.classes import USGRA_SEG_MAPPING, classes_from_mapping
    from NerveSegLogic.frame import Frame, SegmentationResult
    from NerveSegLogic.scene.live import ITEM_OVERHEAD_BYTES, LiveScene, RecordingLimit

    classes = classes_from_mapping(USGRA_SEG_MAPPING)

    def result(k):
        image = np.full((420, 580), k % 251, np.uint8)
        labelmap = np.zeros((420, 580), np.uint8)
        labelmap[10 + k % 50: 60 + k % 50, 100:200] = 1
        frame = Frame(image=image, frame_id=k)
        frame.stamp("received", 100.0 + k / 25)
        return SegmentationResult(frame=frame, labelmap=labelmap, model_name="m", classes=classes)

    def rss() -> int:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")

    cap_mib = 20.0
    per_item = 420 * 580 * 2 + ITEM_OVERHEAD_BYTES
    scene = LiveScene(classes, mrml_scene=slicer_scene(), limit=RecordingLimit(max_megabytes=cap_mib))
    scene.apply(result(0))
    before = rss()
    for k in range(1, 200):  # 200 frames would hold about 107 MiB
        scene.apply(result(k))
    grown = rss() - before
    assert not scene.recording and "limit" in scene.limit_message and "20 MiB" in scene.limit_message
    assert scene.recorded_bytes <= cap_mib * 2 ** 20
    assert scene.recorded_count == int(cap_mib * 2 ** 20 // per_item)
    assert grown < cap_mib * 2 ** 20 * 1.25, f"memory grew {grown / 2 ** 20:.1f} MiB for a {cap_mib} MiB cap"
    assert scene.applied_count == 200  # the live view goes on

    dropping = LiveScene(classes, mrml_scene=slicer_scene(),
                         limit=RecordingLimit(max_seconds=1.0, max_megabytes=None, at_limit="drop-oldest"))
    for k in range(100):  # 4 s at 25 fps
        dropping.apply(result(k))
    assert dropping.recording and dropping.recorded_seconds <= 1.0
    assert dropping.recorded_frame_ids == list(range(100 - dropping.recorded_count, 100))
    first = volume_array(dropping.image_sequence_node.GetNthDataNode(0))
    assert first[0, 0] == (100 - dropping.recorded_count) % 251  # the oldest kept item is that frame's image
    assert "s of 1 s" in dropping.recording_text()
    with pytest.raises(ValueError, match="max_seconds"):
        RecordingLimit(max_seconds=float("nan"))


@pytest.mark.slow
@pytest.mark.parametrize("label_name", ["NerveSegLabel", "OR2_Label"])
def test_remote_mode_pairs_the_servers_labelmaps_with_their_frames_in_the_worker(unet_random, label_name):
    """Remote mode in Slicer: the worker receives PLUS's images and a 'nerveseg serve''s labelmaps and pairs them by
    IGTL timestamp, so no receiver thread runs in Slicer's process; every shown labelmap is the one the serve made
    for that very frame (the serve runs the same model here, so it is recomputed and compared). A serve of several
    scanners names a stream's labelmaps NAME_Label (OR2_Label): the panel takes them alike."""
    import threading

    from NerveSegLogic.live.serve import SegmentationServer, ServeOptions
    from NerveSegLogic.stream.replay import ReplayServer

    replay = ReplayServer(None, fps=10.0, loop=True)
    replay.start()
    server = SegmentationServer(ServeOptions(input_host="127.0.0.1", input_port=replay.port, port=0, model=unet_random,
                                             device_name="Image_Reference", label_device_name=label_name))
    server.start()
    serving = threading.Thread(target=server.serve_forever, daemon=True)
    serving.start()
    controller = LiveController(slicer_scene(), remote_via_worker=True)
    check = ContentCheck(controller)
    results = []
    controller.result_applied.connect(results.append)
    try:
        controller.select_model(unet_random)
        controller.connect("127.0.0.1", replay.port, "Image_Reference")
        controller.connect_remote("127.0.0.1", server.port)
        controller.start("remote")
        deadline = time.monotonic() + 120
        while controller.status().frames_applied < 6 and time.monotonic() < deadline:
            controller.tick()
            time.sleep(0.005)
        status = controller.status()
    finally:
        controller.stop()
        server.stop()
        serving.join(5)
        server.close()
        replay.stop()
    assert status.frames_applied >= 6 and status.errors == 0, status.text()
    assert check.mismatches == []
    for image, labelmap in check.applied[:3]:
        assert np.array_equal(server.segmenter.segment(image).labelmap, labelmap)  # the serve's own model
    # the serve's confidence (IGTL metadata) crosses the worker to the panel: each class's presence and state
    keys = {c.key for c in registry.card(unet_random).classes}
    for result in results:
        assert set(result.presence) == keys and set(result.states) == keys
    controller.scene.clear()
