"""The background inference engine: one worker thread, newest frame in, newest result out.

It never touches MRML or Qt: results go into a :class:`~NerveSegLogic.slot.NewestSlot` that the main thread
empties (in Slicer from a ``qt.QTimer``, headless from the driver loop). A frame that arrives while the worker is
busy replaces the waiting one; the replaced frame is dropped and counted by the frame slot, never queued.

The engine owns the stream's steady overlay (:mod:`.steady`, one filter per stream, run inside the segmenter on this
thread so no extra hand-over is added): :meth:`InferenceEngine.set_steady` switches it on, off (per-frame gating:
every result still carries ``presence`` and ``states``) or away (None: the segmenter's plain answer). It starts
again by itself when the stream does: another device or frame size, or a gap of :data:`STREAM_GAP_S` between two
frames (a reconnection, a frozen scanner); large image changes within the stream it notices itself.
"""

from __future__ import annotations

import logging
import threading
from typing import Callable, Optional

from ..frame import Frame, SegmentationResult
from ..slot import NewestSlot
from ..inference.steady import SteadyOptions, SteadyOverlay

log = logging.getLogger(__name__)

#: How often the idle worker re-checks the stop flag (s). Waiting is on a condition, not a spin.
_POLL_S = 0.05
#: Frames received this far apart (s) belong to a new stretch of the stream: the steady overlay starts again.
STREAM_GAP_S = 1.0


class ReconnectWatch:
    """Starts the engine's steady overlay again when the receiver has made a new connection since the last
    :meth:`check` (a reconnection is a new stream). Call ``check`` from the loop that polls the pipeline."""

    def __init__(self, receiver, engine: "InferenceEngine"):
        self.receiver = receiver if receiver is not None and hasattr(receiver, "stats") else None
        self.engine = engine
        self._connects: Optional[int] = None

    def check(self) -> None:
        if self.receiver is None:
            return
        connects = getattr(self.receiver.stats(), "connects", None)
        if self._connects is not None and connects != self._connects:
            self.engine.reset_steady()
        self._connects = connects


def takes_steady(segmenter) -> bool:
    """Whether ``segmenter`` can run a steady overlay: a Segmenter (a model card with classes, postprocessing
    settings); stand-ins without them get none."""
    return all(hasattr(segmenter, name) for name in ("card", "min_component_area", "contours"))


class InferenceEngine:
    """Runs ``segmenter.segment`` on the newest frame of ``frames`` in a background thread.

    frames: the slot the receiver fills (``ImageReceiver.frames``), or any NewestSlot of Frame.
    results: where results go (created when not given); read it from the main thread only.
    Fields written by the worker and read elsewhere (counters, last_error) are guarded by ``_lock``.
    """

    def __init__(self, segmenter, frames: NewestSlot, results: Optional[NewestSlot] = None,
                 name: str = "nerveseg-inference", on_result: Optional[Callable[[SegmentationResult], None]] = None,
                 steady=None):
        self.segmenter = segmenter
        #: the stream's SteadyOverlay, or None (see set_steady); replaced, never changed, from other threads
        self.steady = None
        self._stream_key = None  # (device name, frame shape) of the last frame, for the steady overlay
        self._last_received: Optional[float] = None
        if steady is not None:
            self.set_steady(steady)
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

    # ------------------------------------------------------------------------------------------- steady overlay
    def set_steady(self, options) -> None:
        """The steady overlay from the next frame on: ``SteadyOptions()`` (the live default), ``SteadyOptions.off()``
        (per-frame gating, presence and states only), ``True`` / ``False`` for those two, or None (none: the
        segmenter's plain answer, no presence). A new filter each call, so it also starts the stream again. Any
        thread: the worker takes the new filter with its next frame."""
        if options is True:
            options = SteadyOptions()
        elif options is False:
            options = SteadyOptions.off()
        if options is not None and not takes_steady(self.segmenter):
            options = None  # a stand-in without a model card (tests): its plain answers
        self.steady = None if options is None else SteadyOverlay.for_segmenter(self.segmenter, options)

    @property
    def steady_options(self):
        """The steady overlay's options, or None when there is none."""
        steady = self.steady
        return None if steady is None else steady.options

    def reset_steady(self) -> None:
        """Start the stream again (a new input, a reconnection): a fresh filter with the same options."""
        steady = self.steady
        if steady is not None:
            self.set_steady(steady.options)

    def _steady_for(self, frame: Frame):
        """The filter for this frame, started again when the stream did (worker thread only)."""
        steady = self.steady
        if steady is None:
            return None
        key = (frame.device_name, frame.image.shape)
        received = frame.timestamps.get("received")
        gap = (received is not None and self._last_received is not None
               and received - self._last_received > STREAM_GAP_S)
        if (self._stream_key is not None and key != self._stream_key) or gap:
            steady.reset()
        self._stream_key, self._last_received = key, received
        return steady

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
                steady = self._steady_for(frame)
                if steady is None:
                    result: SegmentationResult = self.segmenter.segment(frame.image, frame)
                else:
                    result = self.segmenter.segment(frame.image, frame, steady=steady)
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
