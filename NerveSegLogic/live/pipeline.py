"""The live path assembled: receiver thread -> inference worker -> main thread -> sinks.

``LivePipeline.poll()`` is what the main thread calls (Slicer: from a ``qt.QTimer``; headless: from the driver loop
of ``nerveseg demo`` / ``serve``). It takes the newest result, hands it to every sink (the MRML scene, the IGTL
sender, overlay writers), stamps it ``applied`` and records its latencies. Nothing here imports torch or slicer.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Callable, Dict, Iterable, List, Optional

import numpy as np

from ..frame import SegmentationResult
from .engine import InferenceEngine
from ..slot import NewestSlot

log = logging.getLogger(__name__)

Sink = Callable[[SegmentationResult], None]

LATENCY_KEYS = ("total", "receive", "wait", "preprocess", "inference", "postprocess", "apply")


class LiveStats:
    """Latencies (ms) and counts of applied results; safe to read from any thread."""

    def __init__(self, keep: int = 100_000):
        self._lock = threading.Lock()
        self._keep = keep
        self._latencies: Dict[str, List[float]] = {key: [] for key in LATENCY_KEYS}
        self._applied_at: List[float] = []

    def record(self, result: SegmentationResult) -> None:
        with self._lock:
            for key, value in result.stage_latencies_ms().items():
                values = self._latencies.setdefault(key, [])
                if len(values) < self._keep:
                    values.append(value)
            if len(self._applied_at) < self._keep:
                self._applied_at.append(result.frame.timestamps.get("applied", time.perf_counter()))

    @property
    def applied(self) -> int:
        with self._lock:
            return len(self._applied_at)

    def fps(self) -> float:
        """Applied results per second between the first and the last one (0 with fewer than two)."""
        with self._lock:
            times = list(self._applied_at)
        if len(times) < 2 or times[-1] <= times[0]:
            return 0.0
        return (len(times) - 1) / (times[-1] - times[0])

    def recent_fps(self, window_s: float = 2.0) -> float:
        """Applied results per second over the last ``window_s`` seconds (for a status line)."""
        now = time.perf_counter()
        with self._lock:
            recent = [t for t in self._applied_at[-512:] if now - t <= window_s]
        return len(recent) / window_s if recent else 0.0

    def percentiles(self) -> Dict[str, Dict[str, float]]:
        """``{stage: {"p50", "p95", "p99", "mean", "n"}}`` in ms for every stage with samples."""
        with self._lock:
            snapshot = {k: list(v) for k, v in self._latencies.items() if v}
        out = {}
        for key, values in snapshot.items():
            arr = np.asarray(values)
            out[key] = {"p50": float(np.percentile(arr, 50)), "p95": float(np.percentile(arr, 95)),
                        "p99": float(np.percentile(arr, 99)), "mean": float(arr.mean()), "n": int(arr.size)}
        return out

    def last_total_ms(self) -> Optional[float]:
        with self._lock:
            values = self._latencies.get("total") or []
            return values[-1] if values else None


class LivePipeline:
    """Receiver + inference engine + sinks, with counters.

    receiver: anything with ``start()``, ``stop()`` and a ``frames`` NewestSlot of Frame (an ImageReceiver), or None when frames are put into ``frames`` by the caller (e.g. from a Slicer volume node).
    segmenter: a Segmenter. sinks: callables taking a SegmentationResult, run on the polling (main) thread.
    worker_sink: one thread-safe callable run on the inference thread for every result, before the main thread
    sees it (``nerveseg serve`` sends labelmaps from there); it must not touch MRML or Qt.
    """

    def __init__(self, receiver, segmenter, sinks: Iterable[Sink] = (), frames=None,
                 worker_sink: Optional[Sink] = None):
        self.receiver = receiver
        self.frames = receiver.frames if receiver is not None else (frames or NewestSlot())
        self.segmenter = segmenter
        # worker_sink runs on the inference thread as soon as a result exists (see InferenceEngine.on_result)
        self.engine = InferenceEngine(segmenter, self.frames, on_result=worker_sink)
        self.sinks: List[Sink] = list(sinks)
        self.stats = LiveStats()
        self.sink_errors = 0

    def start(self) -> None:
        """Start the engine, then the receiver (idempotent)."""
        self.engine.start()
        if self.receiver is not None:
            self.receiver.start()

    def stop(self) -> None:
        """Stop the receiver, then the engine; leaves no thread or socket running (idempotent)."""
        if self.receiver is not None:
            self.receiver.stop()
        self.engine.stop()

    def poll(self, timeout: float = 0.0) -> Optional[SegmentationResult]:
        """Main thread: apply the newest result, if any (waiting up to ``timeout`` s); returns it or None."""
        result = self.engine.results.take(timeout=timeout)
        if result is None:
            return None
        for sink in self.sinks:
            try:
                sink(result)
            except Exception:
                self.sink_errors += 1
                log.exception("a sink failed on frame %s", result.frame_id)
        result.frame.stamp("applied")
        self.stats.record(result)
        return result

    def all_accounted(self) -> bool:
        """True when every frame the receiver delivered was segmented, failed, or was dropped as stale, and no
        result waits to be applied: the pipeline is drained."""
        engine = self.engine.counters()
        done = self.frames.dropped_count + engine["frames_segmented"] + engine["errors"]
        return self.frames.put_count == done and self.engine.results.peek() is None

    def counters(self) -> dict:
        engine = self.engine.counters()
        out = {
            "frames_received": self.frames.put_count,
            "frames_segmented": engine["frames_segmented"],
            "frames_applied": self.stats.applied,
            "frames_dropped_before_inference": self.frames.dropped_count,
            "results_dropped_before_apply": engine["results_dropped"],
            "inference_errors": engine["errors"],
            "sink_errors": self.sink_errors + engine["sink_errors"],
        }
        out["frames_dropped"] = out["frames_dropped_before_inference"] + out["results_dropped_before_apply"]
        if self.receiver is not None and hasattr(self.receiver, "stats"):
            out["receiver"] = receiver_counters(self.receiver)
        return out


def receiver_counters(receiver) -> dict:
    """An ImageReceiver's counters as a plain dict, with ``connected``."""
    import dataclasses

    counters = dataclasses.asdict(receiver.stats())
    counters["connected"] = receiver.connected.is_set()
    return counters
