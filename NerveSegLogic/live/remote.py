"""Remote segmentation: images from the input server, labelmaps from a ``nerveseg serve``, paired by IGTL timestamp.

:class:`RemoteRun` runs inside the worker process in Slicer (remote mode: :mod:`.worker.child`), or in-process headless
(:class:`~NerveSegLogic.live.controller.LiveController` with ``remote_via_worker`` off). It keeps the last image frames
(:class:`FrameMemory`) and shows a labelmap only on the frame whose IGTL timestamp it carries, so a mask is never drawn
on the wrong frame. Imports nothing of the panel's logic, so the worker can use it.
"""

from __future__ import annotations

import collections
import logging
import threading
from typing import Deque, Optional, Tuple

import numpy as np

from ..frame import Frame, SegmentationResult
from ..stream.sender import PRESENCE_KEY, STATE_KEY
from .inputs import ConnectionWatch, InputChoice
from .pipeline import LiveStats

log = logging.getLogger(__name__)

#: Remote mode keeps this many recent image frames to pair labelmaps with (about 4 s at 30 fps).
REMOTE_FRAME_MEMORY = 128
#: Two IGTL timestamps closer than this (s) are the same frame's (32.32 fixed point round-trips far below it).
TIMESTAMP_TOLERANCE_S = 1e-4


class FrameMemory:
    """The last ``size`` image frames; filled on the receiver thread, searched on the main thread."""

    def __init__(self, size: int = REMOTE_FRAME_MEMORY):
        self._lock = threading.Lock()
        self._frames: Deque[Frame] = collections.deque(maxlen=size)
        self.added = 0

    def add(self, frame: Frame) -> None:
        with self._lock:
            self._frames.append(frame)
            self.added += 1

    def find(self, igtl_timestamp: float, tolerance: float = TIMESTAMP_TOLERANCE_S) -> Optional[Frame]:
        """The newest remembered frame whose IGTL timestamp is within ``tolerance`` s, else None."""
        with self._lock:
            for frame in reversed(self._frames):
                if abs(frame.igtl_timestamp - igtl_timestamp) <= tolerance:
                    return frame
        return None


class RemoteRun:
    """Images from the input server, labelmaps from a ``nerveseg serve``, paired by IGTL timestamp in tick().

    A :class:`~NerveSegLogic.live.runs.Run`: ``watch`` is the image server's connection, ``remote_watch`` the serve's.
    """

    def __init__(self, receiver_factory, input_choice: InputChoice, server: Tuple[str, int], classes,
                 model_name: str, sinks):
        self.memory = FrameMemory()
        self.image_receiver = receiver_factory(input_choice.host, input_choice.port, input_choice.device_name,
                                               on_frame=self.memory.add)
        # Any IMAGE on the serve's port: a serve port carries one stream's labelmaps, named LABEL_DEVICE_NAME by a
        # plain serve and NAME_Label by a serve of several scanners (--input HOST:PORT=NAME ...).
        self.label_receiver = receiver_factory(server[0], server[1], None)
        self.classes = tuple(classes)
        self.labels = {c.label for c in self.classes}
        self.model_name = model_name
        self.sinks = list(sinks)
        self.stats = LiveStats()
        self.watch = ConnectionWatch(self.image_receiver)
        self.remote_watch = ConnectionWatch(self.label_receiver)
        self.unmatched = 0
        self.errors = 0
        self.last_error: Optional[str] = None

    def start(self) -> None:
        self.image_receiver.start()
        self.label_receiver.start()

    def stop(self) -> None:
        self.label_receiver.stop()
        self.image_receiver.stop()

    def poll(self) -> Optional[SegmentationResult]:
        label = self.label_receiver.frames.take(timeout=0)
        if label is None:
            return None
        frame = self.memory.find(label.igtl_timestamp)
        if frame is None:
            # Its frame is older than what we remember, or the server segments another stream: never guess.
            self.unmatched += 1
            return None
        labelmap = np.asarray(label.image)
        if labelmap.shape != frame.image.shape:
            self.errors += 1
            self.last_error = (f"labelmap {labelmap.shape} from the server does not match frame "
                               f"{frame.image.shape}: is it segmenting the same stream?")
            return None
        labelmap = labelmap.astype(np.uint8, copy=False)
        unknown = set(np.unique(labelmap).tolist()) - self.labels - {0}
        if unknown:
            # Another model on the server: show only the classes this card names rather than mislabel any.
            self.last_error = (f"the server's labelmap has values {sorted(unknown)} that {self.model_name} does not "
                               f"have; select the model the server runs")
            labelmap = np.where(np.isin(labelmap, list(self.labels)), labelmap, 0).astype(np.uint8)
        if "received" in label.timestamps:
            frame.stamp("postprocessed", label.timestamps["received"])  # when its result came back here
        presence, states = confidence_from_metadata(getattr(label, "metadata", None), self.classes)
        result = SegmentationResult(frame=frame, labelmap=labelmap, model_name=f"{self.model_name} (remote)",
                                    classes=self.classes, presence=presence, states=states)
        for sink in self.sinks:
            try:
                sink(result)
            except Exception as error:
                self.errors += 1
                self.last_error = repr(error)
                log.exception("applying the remote result of frame %s failed", frame.frame_id)
                return None
        frame.stamp("applied")
        self.stats.record(result)
        return result

    def all_accounted(self) -> bool:
        return self.label_receiver.frames.peek() is None

    def counters(self) -> dict:
        dropped = self.label_receiver.frames.dropped_count + self.unmatched
        return {"received": self.memory.added, "applied": self.stats.applied, "dropped": dropped,
                "errors": self.errors, "last_error": self.last_error}

    def stop_reason(self) -> Optional[str]:
        """Always None: both receivers reconnect by themselves, so nothing makes a remote run give up."""
        return None

    def set_steady(self, steady) -> None:
        """Does nothing: the server smooths (``nerveseg serve --steady`` / ``--no-steady``), not this run."""

    def log_tail(self, lines: int = 40) -> str:
        """Always '': a remote run has no worker log of its own (it logs through :mod:`logging`)."""
        return ""


def confidence_from_metadata(metadata, classes) -> Tuple[Optional[dict], Optional[dict]]:
    """(presence, states) of the classes from a ``nerveseg serve`` labelmap's IGTL metadata
    (``NerveSeg.presence.<key>`` = "0.930", ``NerveSeg.state.<key>`` = "shown"; see
    :func:`NerveSegLogic.stream.sender.confidence_metadata`); (None, None) when it carries none (an older serve, or
    another IGTL server). Unreadable values are skipped."""
    if not metadata:
        return None, None
    presence, states = {}, {}
    for c in classes:
        value = metadata.get(PRESENCE_KEY + c.key)
        if value is not None:
            try:
                number = float(value)
            except ValueError:
                number = float("nan")
            if 0.0 <= number <= 1.0:
                presence[c.key] = number
        state = metadata.get(STATE_KEY + c.key)
        if state in ("shown", "uncertain", "hidden"):
            states[c.key] = state
    return presence or None, states or None
