"""The background inference engine: one worker thread, newest frame in, newest result out.

It never touches MRML or Qt: results go into a :class:`~NerveSegLogic.slot.NewestSlot` that the main thread
empties (in Slicer from a ``qt.QTimer``, headless from the driver loop). A frame that arrives while the worker is
busy replaces the waiting one; the replaced frame is dropped and counted by the frame slot, never queued.
"""

from __future__ import annotations

import logging
import threading
from typing import Callable, Optional

from ..frame import Frame, SegmentationResult
from ..slot import NewestSlot

log = logging.getLogger(__name__)

#: How often the idle worker re-checks the stop flag (s). Waiting is on a condition, not a spin.
_POLL_S = 0.05


class InferenceEngine:
    """Runs ``segmenter.segment`` on the newest frame of ``frames`` in a background thread.

    frames: the slot the receiver fills (``ImageReceiver.frames``), or any NewestSlot of Frame.
    results: where results go (created when not given); read it from the main thread only.
    Fields written by the worker and read elsewhere (counters, last_error) are guarded by ``_lock``.
    """

    def __init__(self, segmenter, frames: NewestSlot, results: Optional[NewestSlot] = None,
                 name: str = "nerveseg-inference", on_result: Optional[Callable[[SegmentationResult], None]] = None):
        self.segmenter = segmenter
        self.frames = frames
        self.results: NewestSlot = results if results is not None else NewestSlot()
        self.name = name
        #: Called on the worker thread with each result before it goes into ``results``; for sinks that are
        #: thread-safe and touch no MRML or Qt (``nerveseg serve``'s IGTL sender: the labelmap is encoded while it
        #: is still in the cache and reaches the client without waiting for the main thread). Its errors are
        #: counted in ``sink_errors`` and never stop the worker.
        self.on_result = on_result
        self.sink_errors = 0
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: Optional[threading.Thread] = None
        self.frames_segmented = 0
        self.errors = 0
        self.last_error: Optional[str] = None

    # ------------------------------------------------------------------------------------------- lifecycle
    def start(self) -> None:
        """Start the worker; calling it while running does nothing."""
        with self._lock:
            if self._thread is not None and self._thread.is_alive():
                return
            self._stop.clear()
            self._thread = threading.Thread(target=self._run, name=self.name, daemon=True)
            self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        """Stop and join the worker (it finishes the frame in hand first); calling it when stopped does nothing."""
        self._stop.set()
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout)
            if thread.is_alive():
                log.warning("inference worker did not stop within %.1f s", timeout)
        self._thread = None

    @property
    def running(self) -> bool:
        thread = self._thread
        return thread is not None and thread.is_alive()

    # ------------------------------------------------------------------------------------------- worker
    def _run(self) -> None:
        while not self._stop.is_set():
            frame: Optional[Frame] = self.frames.take(timeout=_POLL_S)
            if frame is None:
                continue
            try:
                frame.stamp("started")
                result: SegmentationResult = self.segmenter.segment(frame.image, frame)
            except Exception as error:  # keep the live path alive; the error is counted and shown
                with self._lock:
                    self.errors += 1
                    first = self.last_error != repr(error)
                    self.last_error = repr(error)
                if first:
                    log.exception("segmentation of frame %s failed", frame.frame_id)
            else:
                if self.on_result is not None:
                    try:
                        self.on_result(result)
                    except Exception:
                        with self._lock:
                            self.sink_errors += 1
                        log.exception("the worker's sink failed on frame %s", frame.frame_id)
                self.results.put(result)
                with self._lock:
                    self.frames_segmented += 1

    def counters(self) -> dict:
        with self._lock:
            return {"frames_segmented": self.frames_segmented, "errors": self.errors, "sink_errors": self.sink_errors,
                    "results_dropped": self.results.dropped_count, "last_error": self.last_error}
