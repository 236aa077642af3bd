"""The live runs the panel's timer polls: the :class:`Run` protocol, and the in-process run with its volume-node input.

- :class:`InProcessRun`: frames (OpenIGTLink receiver thread, or a volume node read on the main thread) ->
  LivePipeline inference thread -> the scene. Headless use; in Slicer, threads run only while the GUI executes
  Python, so the panel uses the worker process (:class:`~NerveSegLogic.live.worker.parent.WorkerRun`) instead.
- :class:`~NerveSegLogic.live.remote.RemoteRun`: images from the input server, labelmaps from a ``nerveseg serve``,
  paired by IGTL timestamp. Runs inside the worker process in Slicer (remote mode), or in-process headless.
- :class:`~NerveSegLogic.live.worker.parent.WorkerRun`: a worker process receives and segments (or pairs), this
  process applies its results.

All three follow the :class:`Run` protocol: the :class:`~NerveSegLogic.live.controller.LiveController` calls only
what it names, and never asks which run it holds.
"""

from __future__ import annotations

import time
from typing import Any, Dict, Optional, Protocol, Tuple, runtime_checkable

import numpy as np

from ..frame import Frame, SegmentationResult
from ..slot import NewestSlot
from .engine import ReconnectWatch
from .inputs import ConnectionWatch
from .pipeline import LivePipeline, LiveStats
from ..imaging.placement import to_grey
from ..scene import mrml


# ------------------------------------------------------------------------------------------------------ protocol
class Watch(Protocol):
    """A connection's state for the status line."""

    def state(self) -> Tuple[Optional[bool], bool]:
        """(connected: True, False or None when unknown or there is no such connection, lost: it was connected
        during this run and is not now)."""
        ...


@runtime_checkable
class Run(Protocol):
    """What the LiveController may call on a live run. Every method is there on every run; where one means nothing
    for a kind of run, it does nothing (its docstring says so).

    stats: the applied results' rates and latencies (LiveStats); watch: the input server's connection (the scanner,
    PLUS); remote_watch: the segmentation server's connection (remote mode; (None, False) where there is none).
    """

    stats: LiveStats
    watch: Watch
    remote_watch: Watch

    def start(self) -> None:
        """Start receiving and segmenting; returns at once (connections open and models load in the background)."""
        ...

    def stop(self) -> None:
        """Stop everything this run started (threads joined, sockets closed, worker ended). Idempotent."""
        ...

    def poll(self) -> Optional[SegmentationResult]:
        """Main thread, from the panel's tick: apply the newest result through the sinks; returns it or None.
        Never blocks."""
        ...

    def all_accounted(self) -> bool:
        """Nothing in flight: every frame received was applied, dropped or failed (or no labelmap waits)."""
        ...

    def counters(self) -> Dict[str, Any]:
        """{received, applied, dropped, errors: int, last_error: str or None} since the run started."""
        ...

    def stop_reason(self) -> Optional[str]:
        """None while the run can go on; else why it cannot (the controller stops it and shows this line)."""
        ...

    def set_steady(self, steady) -> None:
        """Switch the steady overlay (True, False or a SteadyOptions) while running, where the run can."""
        ...

    def log_tail(self, lines: int = 40) -> str:
        """The last ``lines`` lines of the run's own log (a worker process's); '' where it has none."""
        ...


# --------------------------------------------------------------------------------------- frames from a volume node
def frame_from_volume_node(node, frame_id: int) -> Frame:
    """A Frame holding a copy of a single-slice volume node's voxels and its geometry (RAS mm).

    RGB(A) volumes (video grabbers through SlicerOpenIGTLink) become grey. Raises ValueError naming the node when it
    has no image yet, is 3D, or has an unsupported number of components. Main thread only (reads MRML).
    """
    from vtkmodules.util import numpy_support

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
class InProcessRun:
    """Frames -> LivePipeline (inference thread) -> scene, polled from tick(). A :class:`Run`.

    steady: the steady overlay (:mod:`NerveSegLogic.inference.steady`) on (True, the default), off (False:
    per-frame answers, still with presence and states), or a SteadyOptions; see :meth:`set_steady`.
    """

    def __init__(self, receiver, volume_input: Optional[VolumeNodeInput], segmenter, sinks, steady=True):
        self.volume_input = volume_input
        self.pipeline = LivePipeline(receiver, segmenter, sinks=sinks, frames=None if receiver else NewestSlot())
        self.stats = self.pipeline.stats
        self.watch = ConnectionWatch(receiver)
        self.remote_watch = ConnectionWatch(None)  # no segmentation server: always (None, False)
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

    def stop_reason(self) -> Optional[str]:
        """Why the run must stop: its input volume left the scene (deleted, or the scene closed); else None."""
        if self.volume_input is not None and self.volume_input.removed():
            return f"input volume '{self.volume_input.name}' was removed; stopped"
        return None

    def log_tail(self, lines: int = 40) -> str:
        """Always '': an in-process run has no log of its own (it logs through :mod:`logging`)."""
        return ""
