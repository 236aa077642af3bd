"""The background engine: newest frame wins, stale frames are dropped and counted, results carry their frame."""

import threading

import numpy as np

from NerveSegLogic.frame import Frame, SegmentationResult
from NerveSegLogic.live.engine import InferenceEngine
from NerveSegLogic.live.pipeline import LivePipeline
from NerveSegLogic.slot import NewestSlot


class GatedSegmenter:
    """Stand-in segmenter: labels pixels above 127 as class 1, and can be held inside segment() by a gate."""

    def __init__(self):
        self.gate = threading.Event()
        self.gate.set()
        self.entered = threading.Event()
        self.seen = []

    def segment(self, image, frame):
        self.entered.set()
        self.gate.wait(5)
        frame.stamp("preprocessed")
        frame.stamp("inferred")
        self.seen.append(frame.frame_id)
        labelmap = (image > 127).astype(np.uint8)
        frame.stamp("postprocessed")
        return SegmentationResult(frame=frame, labelmap=labelmap, model_name="gated")


def make_frame(i, value=200):
    frame = Frame(image=np.full((4, 6), value, np.uint8), frame_id=i)
    frame.stamp("received")
    return frame


def test_slot_keeps_only_the_newest_and_counts_what_it_replaced():
    slot = NewestSlot()
    for i in range(5):
        slot.put(i)
    assert slot.take(0) == 4
    assert slot.take(0) is None
    assert (slot.put_count, slot.dropped_count, slot.taken_count) == (5, 4, 1)


def test_slot_close_wakes_a_waiting_consumer():
    slot = NewestSlot()
    got = []
    consumer = threading.Thread(target=lambda: got.append(slot.take()))
    consumer.start()
    slot.close()
    consumer.join(5)
    assert not consumer.is_alive() and got == [None]


def test_engine_segments_the_newest_frame_and_drops_stale_ones():
    frames = NewestSlot()
    segmenter = GatedSegmenter()
    segmenter.gate.clear()
    engine = InferenceEngine(segmenter, frames)
    engine.start()
    try:
        frames.put(make_frame(0))
        assert segmenter.entered.wait(5)  # the worker holds frame 0
        for i in range(1, 6):
            frames.put(make_frame(i))  # 1..4 are replaced by 5 while the worker is busy
        segmenter.gate.set()
        results = []
        while not results or results[-1].frame_id != 5:
            result = engine.results.take(timeout=5)
            assert result is not None
            results.append(result)
    finally:
        engine.stop()
    assert segmenter.seen == [0, 5]
    assert frames.dropped_count == 4
    # The result slot is newest-wins too: result 0 may have been replaced by result 5 before we took it.
    assert [r.frame_id for r in results] in ([0, 5], [5])
    assert engine.results.dropped_count == 2 - len(results)
    assert all(r.labelmap.shape == (4, 6) and r.labelmap.all() for r in results)
    assert not engine.running


def test_engine_start_and_stop_are_idempotent_and_restartable():
    engine = InferenceEngine(GatedSegmenter(), NewestSlot())
    engine.start()
    engine.start()
    assert engine.running
    engine.stop()
    engine.stop()
    assert not engine.running
    engine.start()
    assert engine.running
    engine.stop()
    assert not engine.running


def test_engine_survives_a_failing_frame_and_counts_it():
    class Failing(GatedSegmenter):
        def segment(self, image, frame):
            if frame.frame_id == 0:
                raise RuntimeError("bad frame")
            return super().segment(image, frame)

    frames = NewestSlot()
    engine = InferenceEngine(Failing(), frames)
    engine.start()
    try:
        frames.put(make_frame(0))
        # Frame 1 is put only after frame 0 was taken, so neither is dropped.
        while frames.peek() is not None:
            threading.Event().wait(0.01)
        frames.put(make_frame(1))
        result = engine.results.take(timeout=5)
    finally:
        engine.stop()
    assert result is not None and result.frame_id == 1
    assert engine.counters()["errors"] == 1 and "bad frame" in engine.counters()["last_error"]


def test_pipeline_applies_results_on_the_polling_thread_and_measures_each_stage():
    applied = []
    segmenter = GatedSegmenter()
    pipeline = LivePipeline(None, segmenter, sinks=[lambda r: applied.append(threading.current_thread().name)])
    pipeline.start()
    try:
        for i in range(3):
            pipeline.frames.put(make_frame(i))
            result = pipeline.poll(timeout=5)
            assert result is not None and result.frame_id == i
        assert pipeline.all_accounted()
    finally:
        pipeline.stop()
    assert applied == [threading.current_thread().name] * 3
    stats = pipeline.stats.percentiles()
    for stage in ("total", "wait", "preprocess", "inference", "postprocess", "apply"):
        assert stats[stage]["n"] == 3 and stats[stage]["p50"] >= 0
    assert pipeline.counters()["frames_applied"] == 3 and pipeline.counters()["frames_dropped"] == 0


def test_worker_sink_runs_on_the_inference_thread_before_the_main_thread_sees_the_result():
    """nerveseg serve sends each labelmap from the inference thread: the sink gets the result (its pixels) there,
    before the result reaches the results slot; a failing worker sink is counted and the worker goes on."""
    frames = NewestSlot()
    calls = []

    def worker_sink(result):
        calls.append((threading.current_thread().name, result.frame.frame_id, result.labelmap.copy(),
                      pipeline.engine.results.peek()))
        if result.frame.frame_id == 1:
            raise RuntimeError("client went away")

    pipeline = LivePipeline(None, GatedSegmenter(), frames=frames, worker_sink=worker_sink)
    pipeline.start()
    try:
        for i, value in ((1, 200), (2, 10)):
            frames.put(make_frame(i, value))
            result = None
            for _ in range(100):
                result = pipeline.poll(timeout=0.05)
                if result is not None:
                    break
            assert result is not None and result.frame.frame_id == i
    finally:
        pipeline.stop()
    assert [c[0] for c in calls] == ["nerveseg-inference"] * 2
    assert [c[1] for c in calls] == [1, 2]
    assert calls[0][2].all() and not calls[1][2].any()  # frame 1 all above 127, frame 2 all below
    assert all(c[3] is None for c in calls)  # the slot was still empty: the sink ran first
    counters = pipeline.counters()
    assert counters["sink_errors"] == 1 and counters["frames_applied"] == 2
