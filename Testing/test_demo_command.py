"""`nerveseg demo` end to end, as a newcomer runs it: a relative --out, the bundled sample, the default model.

Checks the CLI contract of issue 2 (summary.json keys, the scene files Slicer opens, overlays and video) and reads
the saved scene back with slicerio, independently of the code that wrote it.
"""

import json
from pathlib import Path

import numpy as np
import pytest

from NerveSegLogic import cli
from NerveSegLogic.models import registry

STAGES = ("receive", "preprocess", "inference", "postprocess", "apply")


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory):
    work = tmp_path_factory.mktemp("demo")
    previous = Path.cwd()
    import os

    os.chdir(work)  # a relative --out, as `make demo` uses (nerveseg-demo in the current folder)
    try:
        code = cli.main(["demo", "--out", "out", "--frames", "20", "--fps", "25"])
    finally:
        os.chdir(previous)
    return code, work / "out"


def test_demo_exits_cleanly_and_writes_the_summary_contract(demo_run):
    code, out = demo_run
    assert code == 0
    summary = json.loads((out / "summary.json").read_text())
    for key in ("frames_sent", "frames_received", "frames_segmented", "frames_dropped", "fps", "model"):
        assert key in summary, key
    assert summary["frames_sent"] == 20
    assert 0 < summary["frames_segmented"] <= summary["frames_received"] <= 20
    assert summary["model"] == registry.default_name()
    assert summary["backend"].startswith("onnxruntime")  # --backend auto on a CPU
    for stage in ("total",) + STAGES:
        figures = summary["latency_ms"][stage]
        assert figures["p50"] <= figures["p95"] <= figures["p99"], stage
    assert summary["latency_ms"]["total"]["p50"] > 0


def test_demo_scene_is_what_slicer_opens(demo_run):
    import slicerio

    _, out = demo_run
    scene = out / "scene"
    mrml = scene / "NerveSeg.mrml"
    text = mrml.read_text()
    seg_files = sorted(scene.glob("*.seg.nrrd"))
    assert seg_files and sorted(scene.glob("*_image.nrrd")) and sorted(scene.glob("*_image_sequence.seq.nrrd"))
    for path in scene.iterdir():  # every data file is named by the scene
        if path.name != mrml.name:
            assert path.name in text, path.name
    segmentation = slicerio.read_segmentation(str(seg_files[0]))
    names = {segment["name"] for segment in segmentation["segments"]}
    assert names == {"Nerve", "Blood vessel"}
    labels = {segment["labelValue"] for segment in segmentation["segments"]}
    assert labels == {1, 2}


def test_demo_writes_overlays_and_a_video(demo_run):
    import cv2

    _, out = demo_run
    pictures = sorted((out / "overlays").glob("frame_*.png"))
    assert pictures
    sheet = cv2.imread(str(out / "overlays.png"))
    assert sheet is not None and sheet.ndim == 3 and np.ptp(sheet) > 0
    video = cv2.VideoCapture(str(out / "overlay.mp4"))
    ok, frame = video.read()
    assert ok and frame.shape[2] == 3


def test_demo_reports_the_steady_setting_and_each_class_confidence(demo_run):
    """The steady overlay is on by default (as in the panel) and summary.json says so, with its options, how often
    the stream started again, and per class its presence and the frames it was drawn, outlined or not drawn in."""
    _, out = demo_run
    summary = json.loads((out / "summary.json").read_text())
    steady = summary["steady"]
    assert steady["on"] is True
    assert steady["options"]["appear_frames"] == 2 and steady["options"]["disappear_frames"] == 5
    assert 0 <= steady["restarts"] < summary["frames_segmented"]
    assert set(summary["confidence"]) == {"nerve", "blood_vessel"}
    for figures in summary["confidence"].values():
        assert sum(figures["frames"].values()) == summary["frames_applied"]
        assert 0.0 <= figures["presence_min"] <= figures["presence_mean"] <= figures["presence_max"] <= 1.0
