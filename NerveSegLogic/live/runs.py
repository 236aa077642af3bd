"""One live run each: where frames come from and where their results are made, polled from the panel's tick.

- :class:`InProcessRun`: frames (OpenIGTLink receiver thread, or a volume node read on the main thread) ->
  LivePipeline inference thread -> the scene. Headless use; in Slicer, threads run only while the GUI executes
  Python, so the panel uses the worker process (:mod:`NerveSegLogic.live.worker.parent`) instead.
- :class:`RemoteRun`: images from the input server, labelmaps from a ``nerveseg serve``, paired by IGTL timestamp.
  Runs inside the worker process in Slicer (remote mode), or in-process headless.

Every run has ``start``, ``stop``, ``poll`` (apply the newest result through the sinks; returns it or None),
``all_accounted``, ``counters``, ``stats`` (LiveStats) and ``watch`` (connection state).
"""

from __future__ import annotations

import collections
import logging
import threading
import time
from typing import Deque, Optional, Tuple

import numpy as np

from ..frame import Frame, SegmentationResult
from ..slot import NewestSlot
from .choices import LABEL_DEVICE_NAME, REMOTE_FRAME_MEMORY, TIMESTAMP_TOLERANCE_S, InputChoice

log = logging.getLogger(__name__)


# --------------------------------------------------------------------------------------- frames from a volume node
def frame_from_volume_node(node, frame_id: int) -> Frame:
    """A Frame holding a copy of a single-slice volume node's voxels and its geometry (RAS mm).

    RGB(A) volumes (video grabbers through SlicerOpenIGTLink) become grey. Raises ValueError naming the node when it
    has no image yet, is 3D, or has an unsupported number of components. Main thread only (reads MRML).
    """
    from vtkmodules.util import numpy_support

    from ..imaging.placement import to_grey
    from ..scene import mrml

    name = node.GetName()
    image_data = node.GetImageData()
    scalars = image_data.GetPointData().GetScalars() if image_data is not None else None
    if scalars is None:
        raise ValueError(f"volume node {name!r} has no image yet")
    width, height, depth = mrml.image_dimensions(image_data)
    if depth != 1:
        raise ValueError(f"volume node {name!r} is {width}x{height}x{depth}; NerveSeg segments 2D frames (depth 1)")
    components = scalars.GetNumberOfComponents()
    pixels = numpy_support.vtk_to_numpy(scalars).reshape(height, width, components)
    if components == 1:
        image = pixels[..., 0].copy()
    elif components in (3, 4):
        image = to_grey(pixels[..., :3].copy())
    else:
        raise ValueError(f"volume node {name!r} has {components} components per pixel; expected 1, 3 or 4")
    if image.dtype not in (np.uint8, np.uint16, np.float32):
        image = image.astype(np.float32)
    frame = Frame(image=image, geometry=mrml.volume_geometry(node), frame_id=frame_id, device_name=name,
                  received_wall=time.time())
    frame.stamp("received")
    return frame


class VolumeNodeInput:
    """Turns updates of a volume node into frames; ``poll()`` runs on the main thread from ``tick()``.

    Polling the modification times from the panel's timer (every few ms) sees every update SlicerOpenIGTLink makes
    at scanner rates, without an observer firing on the main thread in the middle of other work.
    """

    def __init__(self, node):
        if node is None or not hasattr(node, "GetImageData"):
            raise ValueError(f"expected a scalar volume node, got {node!r}")
        self.node = node
        self.name = node.GetName()
        self._last_seen: Optional[Tuple[int, int]] = None
        self._next_id = 1
        self.frames_read = 0

    def _stamp(self) -> Optional[Tuple[int, int]]:
        # New pixels modify the image data; a new image data object (or new geometry) modifies the node.
        image_data = self.node.GetImageData()
        if image_data is None:
            return None
        return (self.node.GetMTime(), image_data.GetMTime())

    def removed(self) -> bool:
        """True when the node is no longer in a scene (deleted, or the scene was closed)."""
        return self.node.GetScene() is None

    def poll(self) -> Optional[Frame]:
        """The node's image as a new Frame if it changed since the last call, else None."""
        stamp = self._stamp()
        if stamp is None or stamp == self._last_seen:
            return None
        self._last_seen = stamp
        frame = frame_from_volume_node(self.node, self._next_id)
        self._next_id += 1
        self.frames_read += 1
        return frame


# -------------------------------------------------------------------------------------------------------- runs
def _is_connected(receiver) -> Optional[bool]:
    if receiver is None:
        return None
    if hasattr(receiver, "is_connected"):
        return bool(receiver.is_connected)
    counters = receiver.counters() if hasattr(receiver, "counters") else {}
    return bool(counters.get("connected")) if "connected" in counters else None


class ConnectionWatch:
    """Remembers whether a receiver was connected during this run, to tell 'waiting' from 'lost'."""

    def __init__(self, receiver):
        self.receiver = receiver
        self.ever_connected = False

    def state(self) -> Tuple[Optional[bool], bool]:
        connected = _is_connected(self.receiver)
        if connected:
            self.ever_connected = True
        return connected, bool(self.ever_connected and connected is False)


class InProcessRun:
    """Frames -> LivePipeline (inference thread) -> scene, polled from tick().

    steady: the steady overlay (:mod:`NerveSegLogic.inference.steady`) on (True, the default), off (False:
    per-frame answers, still with presence and states), or a SteadyOptions; see :meth:`set_steady`.
    """

    def __init__(self, receiver, volume_input: Optional[VolumeNodeInput], segmenter, sinks, steady=True):
        from .pipeline import LivePipeline

        self.volume_input = volume_input
        self.pipeline = LivePipeline(receiver, segmenter, sinks=sinks, frames=None if receiver else NewestSlot())
        self.stats = self.pipeline.stats
        self.watch = ConnectionWatch(receiver)
        from .engine import ReconnectWatch

        self._reconnects = ReconnectWatch(receiver, self.pipeline.engine)
        self.set_steady(steady)

    def set_steady(self, steady) -> None:
        """Switch the steady overlay on (True or a SteadyOptions) or off (False); it applies from the next frame
        and starts the stream's filter afresh."""
        self.pipeline.engine.set_steady(bool(steady) if isinstance(steady, bool) else steady)

    def start(self) -> None:
        self.pipeline.start()

    def stop(self) -> None:
        self.pipeline.stop()

    def poll(self) -> Optional[SegmentationResult]:
        if self.volume_input is not None:
            frame = self.volume_input.poll()
            if frame is not None:
                self.pipeline.frames.put(frame)
        self._reconnects.check()  # a new connection to the input is a new stream for the steady overlay
        return self.pipeline.poll(timeout=0.0)

    def all_accounted(self) -> bool:
        return self.pipeline.all_accounted()

    def counters(self) -> dict:
        c = self.pipeline.counters()
        return {"received": c["frames_received"], "applied": c["frames_applied"], "dropped": c["frames_dropped"],
                "errors": c["inference_errors"] + c["sink_errors"],
                "last_error": self.pipeline.engine.counters().get("last_error")}


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
    """Images from the input server, labelmaps from a ``nerveseg serve``, paired by IGTL timestamp in tick()."""

    def __init__(self, receiver_factory, input_choice: InputChoice, server: Tuple[str, int], classes,
                 model_name: str, sinks):
        from .pipeline import LiveStats

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



def confidence_from_metadata(metadata, classes) -> Tuple[Optional[dict], Optional[dict]]:
    """(presence, states) of the classes from a ``nerveseg serve`` labelmap's IGTL metadata
    (``NerveSeg.presence.<key>`` = "0.930", ``NerveSeg.state.<key>`` = "shown"; see
    :func:`NerveSegLogic.stream.sender.confidence_metadata`); (None, None) when it carries none (an older serve, or
    another IGTL server). Unreadable values are skipped."""
    from ..stream.sender import PRESENCE_KEY, STATE_KEY

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


# Names used before the split of controller.py.
_InProcessRun, _RemoteRun = InProcessRun, RemoteRun
