"""LiveController: what every button of the NerveSeg panel does, written without Qt so it is tested outside Slicer.

The Slicer widget only binds: it calls ``connect`` / ``use_volume_node`` / ``connect_remote`` to choose the input,
``select_model`` to choose the model (and shows the card summary it returns), ``start`` / ``stop``, the display and
recording setters, and calls :meth:`LiveController.tick` from a ``qt.QTimer`` on the main thread. ``tick`` is the
only method that writes MRML (through a :class:`~NerveSegLogic.scene.live.LiveScene`); the receiver and inference
threads never do.

Two ways to segment:

- ``in-process``: frames from an OpenIGTLink server (PLUS, ``nerveseg replay``) or from a volume node that
  SlicerOpenIGTLink updates go through a :class:`~NerveSegLogic.pipeline.LivePipeline` (receiver thread ->
  inference thread -> newest result) and the model runs here (torch or ONNX Runtime).
- ``remote``: a ``nerveseg serve`` on another machine segments the same PLUS stream and sends each labelmap back as
  an IGTL IMAGE named ``NerveSegLabel`` carrying the source frame's IGTL timestamp. The controller receives the
  images from the input server and the labelmaps from the serve, and pairs them by that timestamp, so a mask is
  never shown on the wrong frame. No torch is needed on this machine.

The :class:`ReviewController` at the end does the same for the annotation panel (issue 6): a
:class:`~NerveSegLogic.annotate.session.ReviewSession` shown in MRML for Slicer's Segment Editor, every edit saved
to the store before moving on.

Events use :class:`Signal`, a small pure-Python observer list: it works without Qt, in tests, and never keeps a
deleted Qt object alive. Collaborators come in through the constructor (``typing.Protocol`` types, real defaults).
"""

from __future__ import annotations

import collections
import logging
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Deque, Dict, List, Optional, Protocol, Tuple

import numpy as np

from .frame import Frame, ImageGeometry, SegmentationResult
from .slot import NewestSlot

log = logging.getLogger(__name__)

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 18944  # PLUS's and Slicer's default OpenIGTLink port
DEFAULT_DEVICE_NAME = "Image_Reference"  # PLUS names its B-mode image "Image" in the "Reference" frame
DEFAULT_REMOTE_PORT = 18945  # ``nerveseg serve``'s default
LABEL_DEVICE_NAME = "NerveSegLabel"  # device name of the labelmaps a ``nerveseg serve`` sends
MODES = ("in-process", "remote")
BACKENDS = ("auto", "torch", "onnx")  # auto: ONNX Runtime on a CPU for semantic models, else torch
#: The widget refreshes the status at most this often (s): twice a second is readable and costs nothing.
STATUS_INTERVAL_S = 0.5
#: Remote mode keeps this many recent image frames to pair labelmaps with (about 4 s at 30 fps).
REMOTE_FRAME_MEMORY = 128
#: Two IGTL timestamps closer than this (s) are the same frame's (32.32 fixed point round-trips far below it).
TIMESTAMP_TOLERANCE_S = 1e-4
INTENDED_USE = "Research use only, not for clinical decisions."


# ------------------------------------------------------------------------------------------------------- events
class Signal:
    """A list of callbacks called in connection order with the emitted arguments.

    Pure Python on purpose: it works outside Qt, and a widget that disconnects in ``cleanup()`` leaves nothing
    behind. Callbacks run on the emitting thread; the controller emits only from the thread calling its methods
    (Slicer's main thread). A callback that raises is logged and the others still run, so one broken observer
    cannot stop the live loop.
    """

    def __init__(self, name: str = "signal"):
        self.name = name
        self._callbacks: List[Callable[..., Any]] = []

    def connect(self, callback: Callable[..., Any]) -> Callable[..., Any]:
        """Add ``callback`` (once; connecting it again does nothing); returns it, so it works as a decorator."""
        if callback not in self._callbacks:
            self._callbacks.append(callback)
        return callback

    def disconnect(self, callback: Optional[Callable[..., Any]] = None) -> None:
        """Remove ``callback``, or every callback when None. Removing one that is not connected does nothing."""
        if callback is None:
            self._callbacks.clear()
        elif callback in self._callbacks:
            self._callbacks.remove(callback)

    def emit(self, *args: Any) -> None:
        for callback in list(self._callbacks):
            try:
                callback(*args)
            except Exception:
                log.exception("a %s callback failed", self.name)

    def __len__(self) -> int:
        return len(self._callbacks)


# ------------------------------------------------------------------------------------------------ collaborators
class FrameReceiver(Protocol):
    """An OpenIGTLink client that fills ``frames`` (ImageReceiver)."""

    frames: NewestSlot

    def start(self) -> None: ...

    def stop(self) -> None: ...


class FrameSegmenter(Protocol):
    """One model on one backend (Segmenter)."""

    card: Any
    classes: Tuple[Any, ...]

    def segment(self, image: np.ndarray, frame: Optional[Frame] = None) -> SegmentationResult: ...

    def warm_up(self, height: int = ..., width: int = ...) -> None: ...


class LiveSceneLike(Protocol):
    """The MRML sink (LiveScene)."""

    classes: Tuple[Any, ...]
    recording: bool
    recorded_count: int

    @property
    def volume_node(self) -> Any: ...

    @property
    def segmentation_node(self) -> Any: ...

    def apply(self, result: SegmentationResult) -> None: ...

    def start_recording(self) -> None: ...

    def stop_recording(self) -> None: ...

    def set_class_visible(self, key: str, visible: bool) -> None: ...

    def set_class_opacity(self, key: str, opacity: float) -> None: ...

    def set_fill_outline(self, fill: bool, outline: bool) -> None: ...

    def set_names_visible(self, visible: bool) -> None: ...


ReceiverFactory = Callable[..., FrameReceiver]  # (host, port, device_name, on_frame=None) -> receiver
SegmenterFactory = Callable[[str, str, str], FrameSegmenter]  # (model name, backend, compute device) -> segmenter
SceneFactory = Callable[..., LiveSceneLike]  # (classes, mrml_scene=..., name=..., record=...) -> scene
CardReader = Callable[[str], Any]  # model name -> ModelCard


def _default_receiver(host: str, port: int, device_name: Optional[str], on_frame=None) -> FrameReceiver:
    from .stream.receiver import ImageReceiver

    return ImageReceiver(host, port, device_name=device_name, on_frame=on_frame)


def _default_segmenter(name: str, backend: str, device: str) -> FrameSegmenter:
    from .inference.backends import resolve_device  # imports torch: only when a model is loaded
    from .inference.segmenter import Segmenter

    # "auto" becomes cuda or cpu here: the weights are moved to this device before the backend sees it.
    return Segmenter.from_name(name, backend=backend, device=resolve_device(device))


def _default_scene(classes, mrml_scene=None, name: str = "NerveSeg", record: bool = True) -> LiveSceneLike:
    from .scene.live import LiveScene

    return LiveScene(classes, mrml_scene=mrml_scene, name=name, record=record)


def _default_card(name: str):
    from .models import registry

    return registry.card(name)


def _default_model_names() -> List[str]:
    from .models import registry

    return registry.names()


# ------------------------------------------------------------------------------------------------------ status
@dataclass(frozen=True)
class LiveStatus:
    """What the status line shows. Times in ms, rates in frames per second.

    connected: whether the image input's connection is open (None when not running or the input is a volume
        node); input_lost: it was open during this run and is not now (the receiver keeps reconnecting).
    remote_connected / remote_lost: the same for the ``nerveseg serve`` connection in remote mode.
    fps: results applied per second over the last 2 s. latency_ms: received -> applied of the newest applied
        result; latency_p50_ms: the median over this run.
    frames_dropped: frames or results replaced by newer ones before being used (newest wins, by design), plus,
        in remote mode, labelmaps whose frame was no longer in memory.
    """

    running: bool = False
    mode: str = "in-process"
    source: str = "no input chosen"
    model: str = ""
    connected: Optional[bool] = None
    input_lost: bool = False
    remote: str = ""
    remote_connected: Optional[bool] = None
    remote_lost: bool = False
    fps: float = 0.0
    latency_ms: Optional[float] = None
    latency_p50_ms: Optional[float] = None
    frames_received: int = 0
    frames_applied: int = 0
    frames_dropped: int = 0
    errors: int = 0
    recording: bool = False
    recorded: int = 0
    message: str = ""

    def text(self) -> str:
        """One line for the panel, e.g. ``Running (in-process, smistad-unet) | connected to 127.0.0.1:18944 | ...``."""
        if not self.running:
            parts = [f"Stopped | input: {self.source}"]
            if self.frames_applied:
                parts.append(f"{self.frames_applied} frames segmented")
        else:
            parts = [f"Running ({self.mode}, {self.model})"]
            if self.connected is None:
                parts.append(f"input: {self.source}")
            elif self.connected:
                parts.append(f"connected to {self.source}")
            elif self.input_lost:
                parts.append(f"CONNECTION LOST to {self.source}, reconnecting")
            else:
                parts.append(f"waiting for {self.source}")
            if self.mode == "remote":
                if self.remote_connected:
                    parts.append(f"server {self.remote}")
                elif self.remote_lost:
                    parts.append(f"SERVER LOST {self.remote}, reconnecting")
                else:
                    parts.append(f"waiting for server {self.remote}")
            parts.append(f"{self.fps:.1f} fps")
            parts.append("latency " + (f"{self.latency_ms:.0f} ms" if self.latency_ms is not None else "-"))
            parts.append(f"dropped {self.frames_dropped}")
        if self.recording:
            parts.append(f"recording ({self.recorded} frames)")
        if self.errors:
            parts.append(f"{self.errors} errors")
        if self.message:
            parts.append(self.message)
        return " | ".join(parts)


@dataclass
class DisplaySettings:
    """How the segments are drawn; kept here so a scene created later (a new model) gets the same look."""

    visible: Dict[str, bool] = field(default_factory=dict)  # class key -> shown
    opacity: Dict[str, float] = field(default_factory=dict)  # class key -> 0..1
    fill: bool = True
    outline: bool = True
    names: bool = True
    all_opacity: Optional[float] = None  # the last "same opacity for every class" value


@dataclass(frozen=True)
class InputChoice:
    """Where frames come from: an OpenIGTLink server, or a volume node that something else updates."""

    kind: str  # "igtl" or "volume"
    host: str = ""
    port: int = 0
    device_name: Optional[str] = None
    node_name: str = ""

    def describe(self) -> str:
        if self.kind == "volume":
            return f"volume '{self.node_name}'"
        device = f" ({self.device_name})" if self.device_name else ""
        return f"{self.host}:{self.port}{device}"


def _check_host_port(host: str, port: int, what: str) -> Tuple[str, int]:
    host = (host or "").strip()
    if not host:
        raise ValueError(f"{what}: the host is empty; expected a name or address such as 127.0.0.1")
    try:
        port = int(port)
    except (TypeError, ValueError):
        raise ValueError(f"{what}: port must be a whole number 1..65535, got {port!r}") from None
    if not 0 < port < 65536:
        raise ValueError(f"{what}: port must be 1..65535, got {port}")
    return host, port


# --------------------------------------------------------------------------------------- frames from a volume node
def frame_from_volume_node(node, frame_id: int) -> Frame:
    """A Frame holding a copy of a single-slice volume node's voxels and its geometry (RAS mm).

    RGB(A) volumes (video grabbers through SlicerOpenIGTLink) become grey. Raises ValueError naming the node when it
    has no image yet, is 3D, or has an unsupported number of components. Main thread only (reads MRML).
    """
    from vtkmodules.util import numpy_support

    from .inference.preprocess import to_grey
    from .scene import mrml

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


class _ConnectionWatch:
    """Remembers whether a receiver was connected during this run, to tell 'waiting' from 'lost'."""

    def __init__(self, receiver):
        self.receiver = receiver
        self.ever_connected = False

    def state(self) -> Tuple[Optional[bool], bool]:
        connected = _is_connected(self.receiver)
        if connected:
            self.ever_connected = True
        return connected, bool(self.ever_connected and connected is False)


class _InProcessRun:
    """Frames -> LivePipeline (inference thread) -> scene, polled from tick()."""

    def __init__(self, receiver, volume_input: Optional[VolumeNodeInput], segmenter, sinks):
        from .pipeline import LivePipeline

        self.volume_input = volume_input
        self.pipeline = LivePipeline(receiver, segmenter, sinks=sinks, frames=None if receiver else NewestSlot())
        self.stats = self.pipeline.stats
        self.watch = _ConnectionWatch(receiver)

    def start(self) -> None:
        self.pipeline.start()

    def stop(self) -> None:
        self.pipeline.stop()

    def poll(self) -> Optional[SegmentationResult]:
        if self.volume_input is not None:
            frame = self.volume_input.poll()
            if frame is not None:
                self.pipeline.frames.put(frame)
        return self.pipeline.poll(timeout=0.0)

    def all_accounted(self) -> bool:
        return self.pipeline.all_accounted()

    def counters(self) -> dict:
        c = self.pipeline.counters()
        return {"received": c["frames_received"], "applied": c["frames_applied"], "dropped": c["frames_dropped"],
                "errors": c["inference_errors"] + c["sink_errors"],
                "last_error": self.pipeline.engine.counters().get("last_error")}


class _FrameMemory:
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


class _RemoteRun:
    """Images from the input server, labelmaps from a ``nerveseg serve``, paired by IGTL timestamp in tick()."""

    def __init__(self, receiver_factory, input_choice: InputChoice, server: Tuple[str, int], classes,
                 model_name: str, sinks):
        from .pipeline import LiveStats

        self.memory = _FrameMemory()
        self.image_receiver = receiver_factory(input_choice.host, input_choice.port, input_choice.device_name,
                                               on_frame=self.memory.add)
        self.label_receiver = receiver_factory(server[0], server[1], LABEL_DEVICE_NAME)
        self.classes = tuple(classes)
        self.labels = {c.label for c in self.classes}
        self.model_name = model_name
        self.sinks = list(sinks)
        self.stats = LiveStats()
        self.watch = _ConnectionWatch(self.image_receiver)
        self.remote_watch = _ConnectionWatch(self.label_receiver)
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
        result = SegmentationResult(frame=frame, labelmap=labelmap, model_name=f"{self.model_name} (remote)",
                                    classes=self.classes)
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


# -------------------------------------------------------------------------------------------------- controller
class LiveController:
    """Everything the live panel does. Call every method from one thread (Slicer's main thread).

    mrml_scene: the scene results go into (``slicer.mrmlScene`` inside Slicer; None: a standalone scene, for
        headless use and tests).
    receiver_factory(host, port, device_name, on_frame=None): an OpenIGTLink image client (ImageReceiver).
    segmenter_factory(name, backend, compute_device): a Segmenter for a registered model (Segmenter.from_name).
    scene_factory(classes, mrml_scene=..., name=..., record=...): the MRML sink (LiveScene).
    card_reader(name): a model card (registry.card); model_names(): the registered names.
    clock: seconds, monotonic (injectable so the status rate limit is testable without sleeping).
    status_interval_s: at most one ``status_changed`` per this many seconds while ticking.

    Signals: ``result_applied(SegmentationResult)`` after each applied result; ``status_changed(LiveStatus)`` at
    most every ``status_interval_s`` while ticking, and on start and stop; ``running_changed(bool)``.
    """

    def __init__(self, mrml_scene=None, *, receiver_factory: ReceiverFactory = _default_receiver,
                 segmenter_factory: SegmenterFactory = _default_segmenter, scene_factory: SceneFactory = _default_scene,
                 card_reader: CardReader = _default_card, model_names: Callable[[], List[str]] = _default_model_names,
                 clock: Callable[[], float] = time.monotonic, status_interval_s: float = STATUS_INTERVAL_S):
        self.mrml_scene = mrml_scene
        self._receiver_factory = receiver_factory
        self._segmenter_factory = segmenter_factory
        self._scene_factory = scene_factory
        self._card_reader = card_reader
        self._model_names = model_names
        self._clock = clock
        self.status_interval_s = float(status_interval_s)

        self.result_applied = Signal("result_applied")
        self.status_changed = Signal("status_changed")
        self.running_changed = Signal("running_changed")

        self._input: Optional[InputChoice] = None
        self._volume_node = None
        self._remote: Optional[Tuple[str, int]] = None
        self._model_name: Optional[str] = None
        self._card = None
        self.backend = "auto"
        self.compute_device = "cpu"
        self._segmenter = None
        self._segmenter_key: Optional[Tuple[str, str, str]] = None
        self._scene: Optional[LiveSceneLike] = None
        self._scenes_made = 0
        self._run = None
        self._mode = "in-process"
        self._recording = True
        self.display = DisplaySettings()
        self._last_status_at: Optional[float] = None
        self._tick_errors = 0
        self._message = ""
        self._final_counters: dict = {}  # the last run's counters, shown after stop

    # ------------------------------------------------------------------------------------------------ input
    def connect(self, host: str = DEFAULT_HOST, port: int = DEFAULT_PORT,
                device_name: Optional[str] = DEFAULT_DEVICE_NAME) -> str:
        """Take frames from an OpenIGTLink server (PLUS, ``nerveseg replay``): IMAGE messages of ``device_name``
        (None or '' = any IMAGE). The connection opens at :meth:`start` and is kept, reconnecting, until
        :meth:`stop`; while running, switches to the new input at once. Returns the input's description;
        ValueError for an empty host or a port outside 1..65535."""
        host, port = _check_host_port(host, port, "input server")
        choice = InputChoice("igtl", host=host, port=port, device_name=(device_name or None))
        self._switch_input(choice, None)
        return choice.describe()

    def use_volume_node(self, node) -> str:
        """Take frames from a volume node that something else updates (SlicerOpenIGTLink's image node).

        The node is read on the main thread in :meth:`tick` whenever it changed. ValueError for None, for a node of
        another scene, or for this controller's own output volume (it would segment its own display)."""
        if node is None:
            raise ValueError("choose a volume node as the input")
        if self._scene is not None and node is self._scene.volume_node:
            raise ValueError(f"{node.GetName()!r} is NerveSeg's own output volume; choose the scanner's image node "
                             f"(e.g. Image_Reference from OpenIGTLinkIF)")
        if self.mrml_scene is not None and node.GetScene() is not self.mrml_scene:
            raise ValueError(f"volume node {node.GetName()!r} is not in this controller's scene")
        choice = InputChoice("volume", node_name=node.GetName())
        self._switch_input(choice, node)
        return choice.describe()

    def connect_remote(self, host: str, port: int = DEFAULT_REMOTE_PORT) -> str:
        """Use a ``nerveseg serve`` at host:port for ``start(mode="remote")``: it segments the same input server's
        images and sends back ``NerveSegLabel`` labelmaps. Returns its description; ValueError for a bad address."""
        remote = _check_host_port(host, port, "segmentation server")
        changed = remote != self._remote
        self._remote = remote
        if changed and self.running and self._mode == "remote":
            self._restart()
        return f"{remote[0]}:{remote[1]}"

    def _switch_input(self, choice: InputChoice, node) -> None:
        changed = choice != self._input or node is not self._volume_node
        self._input, self._volume_node = choice, node
        if changed and self.running:
            self._restart()

    @property
    def input(self) -> Optional[InputChoice]:
        return self._input

    # ------------------------------------------------------------------------------------------------ model
    def model_names(self) -> List[str]:
        """The registered models, for the selector."""
        return list(self._model_names())

    def select_model(self, name: str, backend: str = "auto", compute_device: str = "cpu") -> str:
        """Choose the model (and how it runs in-process); returns its card summary for the panel.

        Reads only the card (no torch). The model itself is loaded at :meth:`start`; while running, switches to it
        at once. KeyError listing the valid names for an unknown model; ValueError for an unknown backend.
        """
        if backend not in BACKENDS:
            raise ValueError(f"unknown backend {backend!r}; expected one of {', '.join(BACKENDS)}")
        card = self._card_reader(name)
        changed = (name, backend, compute_device) != (self._model_name, self.backend, self.compute_device)
        self._model_name, self._card = name, card
        self.backend, self.compute_device = backend, compute_device
        if changed and self.running:
            self._restart()
        return card_summary(card)

    @property
    def model_name(self) -> Optional[str]:
        return self._model_name

    @property
    def card(self):
        return self._card

    # ------------------------------------------------------------------------------------------------ run
    @property
    def running(self) -> bool:
        return self._run is not None

    @property
    def mode(self) -> str:
        return self._mode

    def start(self, mode: str = "in-process") -> None:
        """Start segmenting the chosen input with the chosen model, in-process or through the remote server.

        Does nothing when already running in this mode (another mode restarts). In-process, the model is loaded
        (its backend imported) and warmed up first, which can take a few seconds. Raises ValueError when no input,
        no model or (remote) no server was chosen; the errors of loading the model (ImportError when torch is
        missing, the registry's WeightsError for a model without weights) pass through unchanged, with nothing
        left running.
        """
        if mode not in MODES:
            raise ValueError(f"unknown mode {mode!r}; expected one of {', '.join(MODES)}")
        if self.running:
            if mode == self._mode:
                return
            self.stop()
        if self._input is None:
            raise ValueError("choose an input first: an OpenIGTLink server (host, port) or a volume node")
        if self._model_name is None:
            raise ValueError("choose a model first")
        if self._input.kind == "volume" and self._volume_node.GetScene() is None:
            raise ValueError(f"the input volume {self._input.node_name!r} is no longer in the scene")

        self._message = ""
        self._tick_errors = 0
        if mode == "in-process":
            segmenter = self._ensure_segmenter()
            scene = self._ensure_scene(segmenter.classes)
            receiver = volume_input = None
            if self._input.kind == "igtl":
                receiver = self._receiver_factory(self._input.host, self._input.port, self._input.device_name)
            else:
                volume_input = VolumeNodeInput(self._volume_node)
            run = _InProcessRun(receiver, volume_input, segmenter, sinks=[scene.apply])
        else:
            if self._remote is None:
                raise ValueError("choose the segmentation server (host, port of 'nerveseg serve') for remote mode")
            if self._input.kind != "igtl":
                raise ValueError("remote mode pairs each labelmap with its frame by the IGTL timestamp, so it needs "
                                 "the images over OpenIGTLink: choose the input server (host, port), not a volume")
            scene = self._ensure_scene(self._card.classes)
            run = _RemoteRun(self._receiver_factory, self._input, self._remote, self._card.classes,
                             self._model_name, sinks=[scene.apply])
        try:
            run.start()
        except BaseException:
            run.stop()
            raise
        self._run, self._mode = run, mode
        log.info("NerveSeg started: %s, %s, input %s", mode, self._model_name, self._input.describe())
        self.running_changed.emit(True)
        self._emit_status()

    def stop(self) -> None:
        """Stop receiving and segmenting; joins every thread and closes every socket. What was shown and recorded
        stays in the scene. Safe to call at any time, any number of times."""
        run, self._run = self._run, None
        if run is None:
            return
        try:
            run.stop()
        finally:
            self._final_counters = run.counters()
            log.info("NerveSeg stopped")
            self.running_changed.emit(False)
            self._emit_status()

    def _restart(self) -> None:
        mode = self._mode
        self.stop()
        self.start(mode)

    def _ensure_segmenter(self):
        key = (self._model_name, self.backend, self.compute_device)
        if self._segmenter is None or self._segmenter_key != key:
            self._segmenter = None  # never keep a half-replaced model
            segmenter = self._segmenter_factory(*key)
            segmenter.warm_up()
            self._segmenter, self._segmenter_key = segmenter, key
        return self._segmenter

    def _ensure_scene(self, classes) -> LiveSceneLike:
        """The LiveScene for these classes: the current one, or a new one when the classes differ (the old one's
        nodes, and what they recorded, stay in the scene)."""
        classes = tuple(classes)
        if self._scene is not None and tuple(self._scene.classes) == classes:
            return self._scene
        self._scenes_made += 1
        name = "NerveSeg" if self._scenes_made == 1 else f"NerveSeg {self._scenes_made}"
        self._scene = self._scene_factory(classes, mrml_scene=self.mrml_scene, name=name, record=self._recording)
        self._apply_display()
        return self._scene

    # ------------------------------------------------------------------------------------------------ tick
    def tick(self) -> Optional[SegmentationResult]:
        """Main thread, from the panel's timer: apply the newest result (if any) to the scene; returns it or None.

        Never raises: a failure is counted, logged once and shown in the status, and the loop goes on (a timer
        firing every few ms must not flood the log). A volume input that left the scene stops the run.
        """
        result = None
        run = self._run
        if run is not None:
            try:
                if isinstance(run, _InProcessRun) and run.volume_input is not None and run.volume_input.removed():
                    self.stop()
                    self._message = f"input volume '{run.volume_input.name}' was removed; stopped"
                    self._emit_status()
                    return None
                result = run.poll()
            except Exception as error:
                self._tick_errors += 1
                if str(error) != self._message:
                    log.exception("NerveSeg: applying a result failed")
                self._message = str(error)
        if result is not None:
            self.result_applied.emit(result)
        if self.status_due():
            self._emit_status()
        return result

    def all_accounted(self) -> bool:
        """True when nothing is in flight: every frame received so far was applied, dropped as stale or failed
        (in-process), or no labelmap waits to be paired (remote). True when not running."""
        return self._run is None or self._run.all_accounted()

    def status_due(self) -> bool:
        """Whether ``status_interval_s`` has passed since the last ``status_changed`` (the panel's rate limit)."""
        return self._last_status_at is None or self._clock() - self._last_status_at >= self.status_interval_s

    def _emit_status(self) -> None:
        self._last_status_at = self._clock()
        self.status_changed.emit(self.status())

    def status(self) -> LiveStatus:
        """The current status (cheap: counters and the newest latency; reads no MRML)."""
        run = self._run
        scene = self._scene
        common = dict(mode=self._mode, source=self._input.describe() if self._input else "no input chosen",
                      model=self._model_name or "", recording=bool(scene is not None and scene.recording),
                      recorded=int(scene.recorded_count) if scene is not None else 0,
                      remote=f"{self._remote[0]}:{self._remote[1]}" if self._remote else "")
        if run is None:
            c = self._final_counters
            return LiveStatus(running=False, frames_received=c.get("received", 0), frames_applied=c.get("applied", 0),
                              frames_dropped=c.get("dropped", 0), errors=c.get("errors", 0) + self._tick_errors,
                              message=self._message, **common)
        counters = run.counters()
        connected, lost = run.watch.state()
        remote_connected, remote_lost = run.remote_watch.state() if isinstance(run, _RemoteRun) else (None, False)
        percentiles = run.stats.percentiles().get("total", {})
        return LiveStatus(running=True, connected=connected, input_lost=lost, remote_connected=remote_connected,
                          remote_lost=remote_lost, fps=run.stats.recent_fps(), latency_ms=run.stats.last_total_ms(),
                          latency_p50_ms=percentiles.get("p50"), frames_received=counters["received"],
                          frames_applied=counters["applied"], frames_dropped=counters["dropped"],
                          errors=counters["errors"] + self._tick_errors,
                          message=self._message or counters.get("last_error") or "", **common)

    # ------------------------------------------------------------------------------------------------ scene
    @property
    def scene(self) -> Optional[LiveSceneLike]:
        """The LiveScene results go to (None before the first start)."""
        return self._scene

    @property
    def volume_node(self):
        return self._scene.volume_node if self._scene is not None else None

    @property
    def segmentation_node(self):
        return self._scene.segmentation_node if self._scene is not None else None

    @property
    def recording(self) -> bool:
        return self._scene.recording if self._scene is not None else self._recording

    def set_recording(self, on: bool) -> None:
        """Record (or stop recording) every applied result into the scene's sequences; the setting also applies
        to a scene created later."""
        self._recording = bool(on)
        if self._scene is not None and self._scene.recording != bool(on):
            if on:
                self._scene.start_recording()
            else:
                self._scene.stop_recording()

    # ------------------------------------------------------------------------------------------------ display
    def class_keys(self) -> List[str]:
        """Keys of the shown scene's classes, else of the selected model's."""
        classes = self._scene.classes if self._scene is not None else (self._card.classes if self._card else ())
        return [c.key for c in classes]

    def set_class_visible(self, key: str, visible: bool) -> None:
        """Show or hide one class (KeyError naming the classes for an unknown key)."""
        self._check_key(key)
        self.display.visible[key] = bool(visible)
        if self._scene is not None:
            self._scene.set_class_visible(key, bool(visible))

    def set_class_opacity(self, key: str, opacity: float) -> None:
        """Opacity 0..1 of one class (ValueError outside 0..1)."""
        self._check_key(key)
        opacity = _check_opacity(opacity)
        self.display.opacity[key] = opacity
        if self._scene is not None:
            self._scene.set_class_opacity(key, opacity)

    def set_opacity(self, opacity: float) -> None:
        """The same opacity 0..1 for every class. Setting the value it already has does nothing, so opacities set
        per class elsewhere (Slicer's segments table) survive the panel passing its settings on again."""
        opacity = _check_opacity(opacity)
        if opacity == self.display.all_opacity:
            return
        self.display.all_opacity = opacity
        for key in self.class_keys():
            self.set_class_opacity(key, opacity)

    def set_fill_outline(self, fill: bool, outline: bool) -> None:
        """Draw segments filled, outlined, both, or neither (hidden) in the slice views."""
        if (bool(fill), bool(outline)) == (self.display.fill, self.display.outline) and self._display_applied:
            return
        self.display.fill, self.display.outline = bool(fill), bool(outline)
        if self._scene is not None:
            self._scene.set_fill_outline(bool(fill), bool(outline))

    def set_names_visible(self, visible: bool) -> None:
        """Show the class names (a colour legend) in the views."""
        if bool(visible) == self.display.names and self._display_applied:
            return
        self.display.names = bool(visible)
        if self._scene is not None:
            self._scene.set_names_visible(bool(visible))

    @property
    def _display_applied(self) -> bool:
        return self._scene is not None  # a new scene gets every setting in _apply_display

    def _check_key(self, key: str) -> None:
        keys = self.class_keys()
        if key not in keys:
            raise KeyError(f"no class {key!r}; classes: {', '.join(keys) or '(choose a model first)'}")

    def _apply_display(self) -> None:
        scene, d = self._scene, self.display
        keys = {c.key for c in scene.classes}
        for key, visible in d.visible.items():
            if key in keys:
                scene.set_class_visible(key, visible)
        for key in keys:
            opacity = d.opacity.get(key, d.all_opacity)
            if opacity is not None:
                scene.set_class_opacity(key, opacity)
        scene.set_fill_outline(d.fill, d.outline)
        scene.set_names_visible(d.names)

    # ------------------------------------------------------------------------------------------------ lifecycle
    def on_scene_close(self) -> None:
        """The MRML scene is being closed: stop, and forget nodes that are about to disappear."""
        self.stop()
        self._scene = None
        self._scenes_made = 0
        if self._input is not None and self._input.kind == "volume":
            self._input, self._volume_node = None, None
        self._message = ""

    def cleanup(self) -> None:
        """Module reload or Slicer exit: stop everything and drop every observer. The scene's nodes stay."""
        self.stop()
        for signal in (self.result_applied, self.status_changed, self.running_changed):
            signal.disconnect()
        self._segmenter = None
        self._segmenter_key = None


def _check_opacity(opacity: float) -> float:
    value = float(opacity)
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"opacity must be between 0 and 1, got {opacity}")
    return value


# ---------------------------------------------------------------------------------------------------- card text
def card_summary(card) -> str:
    """What the panel shows about a model: classes, input size, measured speed, training data, weights, and that it
    is for research only (the card's ``intended_use``)."""
    classes = ", ".join(f"{c.name} ({c.label})" for c in card.classes)
    lines = [f"{card.name}: {card.summary}",
             f"Classes: {classes}",
             f"Input: {card.input.height}x{card.input.width} px, {card.input.channels} channel(s)",
             f"Speed: {_speed_text(card.speed)}"]
    data = (card.training or {}).get("data")
    if data:
        lines.append(f"Trained on: {data}")
    has_weights = getattr(card, "has_weights", None)
    if has_weights is False:
        lines.append("Weights: none shipped yet; this model cannot segment until it is trained.")
    lines.append(getattr(card, "intended_use", None) or INTENDED_USE)
    return "\n".join(lines)


def _speed_text(speed: Dict[str, Any]) -> str:
    if not speed:
        return "not measured yet"
    parts = []
    for key, value in sorted(speed.items()):
        label = key.replace("_", " ")
        if isinstance(value, (int, float)):
            parts.append(f"{label} {value:g}")
        elif isinstance(value, dict):
            shown = value.get("p50", value.get("median", value.get("mean")))
            where = value.get("machine") or value.get("device") or ""
            if isinstance(shown, (int, float)):
                parts.append(f"{label} {shown:g}" + (f" ({where})" if where else ""))
    return "; ".join(parts) or "not measured yet"


# -------------------------------------------------------------------------------------------------- self-test
def segmenter_with_random_fallback(name: str, backend: str = "torch", device: str = "cpu"):
    """The registered model with its shipped weights; when its card ships none, the same architecture with RANDOM
    weights (logged as such). For self-tests only (the Slicer module test, pytest): random weights exercise the whole
    path (shapes, classes, threads, MRML, recording) but segment nothing meaningful."""
    from .inference.backends import resolve_device
    from .inference.segmenter import Segmenter
    from .models import registry

    card = registry.card(name)
    device = resolve_device(device)
    if card.has_weights:
        return Segmenter.from_name(name, backend=backend, device=device)
    log.warning("model %s ships no weights: using RANDOM weights (self-test only, the masks mean nothing)", name)
    return Segmenter.from_module(card, registry.build(name).eval(), device=device)


@dataclass(frozen=True)
class ReplayReport:
    """What :func:`run_sample_replay` observed (counts of frames; latency in ms)."""

    frames_sent: int
    frames_received: int
    applied: int
    dropped: int
    errors: int
    recorded: int
    segment_ids: Tuple[str, ...]
    segment_names: Tuple[str, ...]
    latency_p50_ms: Optional[float]
    status: str


def run_sample_replay(controller: "LiveController", frames: int = 12, fps: float = 15.0, source=None,
                      model: Optional[str] = None, timeout_s: float = 120.0,
                      pause: Callable[[float], None] = time.sleep) -> ReplayReport:
    """Replay ``frames`` frames of ``source`` (default: the bundled sample, looped as needed) from a ReplayServer on
    127.0.0.1 (ephemeral port) into ``controller`` in-process, ticking as the panel's timer does until every frame sent was
    received and then applied, dropped as stale or failed; stops the controller and the server, and reports.

    The shared body of the Slicer module test and of the pytest suite. ``model`` (default: the one selected, else
    the registry's default) is selected first. Raises TimeoutError with the status when not done in ``timeout_s``.
    """
    from .models import registry
    from .stream.replay import ReplayServer

    if model is not None or controller.model_name is None:
        controller.select_model(model or registry.default_name(), controller.backend, controller.compute_device)
    replay = ReplayServer(source, fps=fps, loop=True, max_frames=frames, wait_for_client=True)
    replay.start()
    try:
        controller.connect("127.0.0.1", replay.port, DEFAULT_DEVICE_NAME)
        controller.start("in-process")
        deadline = time.monotonic() + timeout_s
        while True:
            controller.tick()
            if replay.error is not None:
                raise RuntimeError(f"the replay server failed: {replay.error!r}")
            if (replay.done.is_set() and controller.status().frames_received >= replay.frames_sent
                    and controller.all_accounted()):
                break
            if time.monotonic() > deadline:
                raise TimeoutError(f"replay not done within {timeout_s:g} s: {controller.status().text()}")
            pause(0.002)  # the panel's timer period, roughly; progress is checked each time, not assumed
        latency = controller.status().latency_p50_ms
    finally:
        controller.stop()
        replay.stop()
    status = controller.status()
    segmentation = controller.segmentation_node.GetSegmentation()
    ids = tuple(segmentation.GetNthSegmentID(i) for i in range(segmentation.GetNumberOfSegments()))
    names = tuple(segmentation.GetSegment(i).GetName() for i in ids)
    return ReplayReport(frames_sent=int(replay.frames_sent), frames_received=status.frames_received,
                        applied=status.frames_applied, dropped=status.frames_dropped, errors=status.errors,
                        recorded=status.recorded,
                        segment_ids=ids, segment_names=names, latency_p50_ms=latency, status=status.text())


# ------------------------------------------------------------------------------------------------- annotation
def _default_review_classes() -> Dict[int, str]:
    """Classes offered for frames that have no mask yet: the default model's ({label: key})."""
    from .models import registry

    card = registry.card(registry.default_name())
    return {c.label: c.key for c in card.classes}


def _default_session_factory(store_path: str, author: str, order: str):
    from .annotate.session import ReviewSession
    from .annotate.store import AnnotationStore

    store = AnnotationStore(store_path)
    try:
        return ReviewSession(store, author, order=order, classes=_default_review_classes())
    except BaseException:
        store.close()
        raise


def _default_load_frame(image, mask, geometry, classes, mrml_scene=None):
    from .scene.annotation import load_frame

    return load_frame(image, mask, geometry, classes, mrml_scene=mrml_scene)


def _default_read_mask(segmentation_node, volume_node, classes):
    from .scene.annotation import read_mask

    return read_mask(segmentation_node, volume_node, classes)


class ReviewConflict(RuntimeError):
    """Someone else saved the frame while it was being edited. The panel shows this message; the edit was kept."""


class ReviewController:
    """What the annotation panel's buttons do: review a store's frames one by one in Slicer's Segment Editor.

    ``open(store, author)`` starts a :class:`~NerveSegLogic.annotate.session.ReviewSession`; the current frame's
    image and mask go into a volume node and a segmentation node (``scene.annotation.load_frame``, the same nodes
    from frame to frame, so Segment Editor keeps its selection) where the annotator corrects them. ``accept``,
    ``reject``, ``skip``, ``next`` and ``previous`` first read back what was painted (``read_mask``) and hand it to
    the session, which saves it to the store when it changed, and only then move on: moving never loses an edit.

    When someone else saved the frame meanwhile, the store refuses (ConflictError): the frame is re-read with their
    version as the new base, the annotator's edit is put back into the segmentation node, and
    :class:`ReviewConflict` says who saved and what to do. Pressing Accept again saves the edit over theirs.

    Signal ``changed(ReviewController)`` after every move (the widget refreshes position, queue and history).
    """

    def __init__(self, mrml_scene=None, *, session_factory=_default_session_factory,
                 load_frame=_default_load_frame, read_mask=_default_read_mask):
        self.mrml_scene = mrml_scene
        self._session_factory = session_factory
        self._load_frame = load_frame
        self._read_mask = read_mask
        self.session = None
        self.volume_node = None
        self.segmentation_node = None
        self._shown = None  # the CurrentFrame the nodes show
        self._shown_classes: Tuple[Any, ...] = ()
        self._scores: Dict[int, Optional[float]] = {}
        self.changed = Signal("review_changed")

    @property
    def is_open(self) -> bool:
        return self.session is not None

    def open(self, store_path: str, author: str, order: str = "uncertainty") -> None:
        """Open the store at ``store_path`` for ``author`` (frames in ``order``: uncertainty or index) and show the
        first frame. ValueError for no store or an empty author (every save records who made it); the store's
        own errors (not a NerveSeg store, unreadable) pass through."""
        path = str(store_path or "").strip()
        if not path or path == ".":
            raise ValueError("choose an annotation store file (.db)")
        if not str(author or "").strip():
            raise ValueError("enter your name as the author: every saved mask records who made it")
        self.close()
        self.session = self._session_factory(path, str(author).strip(), order)
        self._scores = self._queue_scores(order)
        self.show()

    def _require(self):
        if self.session is None:
            raise RuntimeError("open an annotation store first")
        return self.session

    def _queue_scores(self, order: str) -> Dict[int, Optional[float]]:
        try:
            from .annotate.queue import review_queue

            return {e.frame_id: e.score for e in review_queue(self.session.store, order=order)}
        except Exception:  # a stand-in session in tests, or an old store: the queue shows no scores
            return {}

    def current(self):
        """The session's current frame (a CurrentFrame), or None once past the last one."""
        return self._require().current()

    def show(self, mask: Optional[np.ndarray] = None) -> Tuple[Any, Any]:
        """Put the current frame (and its stored mask, or ``mask``) into the annotation nodes; returns them."""
        from .classes import classes_from_mapping

        item = self._require().current()
        self._shown = item
        if item is not None:
            self._shown_classes = classes_from_mapping(item.classes)
            self.volume_node, self.segmentation_node = self._load_frame(
                item.image, item.mask if mask is None else mask, item.geometry or ImageGeometry(),
                self._shown_classes, mrml_scene=self.mrml_scene)
        self.changed.emit(self)
        return self.volume_node, self.segmentation_node

    def edited_mask(self) -> Optional[np.ndarray]:
        """The labelmap as it is now in the segmentation node (what the annotator painted), or None."""
        if self._shown is None or self.segmentation_node is None:
            return None
        return self._read_mask(self.segmentation_node, self.volume_node, self._shown_classes)

    def _move(self, action: str) -> None:
        from .annotate.store import ConflictError

        session = self._require()
        mask = self.edited_mask()
        try:
            getattr(session, action)(mask=mask)
        except ConflictError as conflict:
            session.reload()  # the other person's version becomes the base
            self.show(mask=mask)  # and the annotator's edit goes back on screen, unsaved but not lost
            raise ReviewConflict(f"{conflict} Their version is now the base and your edit is shown again: press "
                                 f"Accept to save it over theirs, or Next/Skip to keep theirs.") from conflict
        self.show()

    def accept(self) -> None:
        """Save the frame's mask as it is now (as "corrected" when it was edited) with status accepted; next frame."""
        self._move("accept")

    def reject(self) -> None:
        """Mark the frame rejected (keeping any edit as its mask); next frame."""
        self._move("reject")

    def skip(self) -> None:
        """Next frame without a decision; an edit made here is saved first (as a draft)."""
        self._move("skip")

    def next(self) -> None:
        """Next frame; an edit is saved first (as a draft)."""
        self._move("next")

    def previous(self) -> None:
        """Previous frame; an edit is saved first (as a draft)."""
        self._move("previous")

    # -------------------------------------------------------------------------------------------- panel text
    def position_text(self) -> str:
        if self.session is None:
            return "No store open"
        item = self._shown
        if item is None:
            return f"Review finished: {len(self.session)} frames. Previous goes back."
        record = item.record
        return (f"Frame {item.position + 1} of {item.total}: id {record.id} ({record.source} #{record.index}), "
                f"{item.status}")

    def queue_rows(self) -> List[Tuple[str, ...]]:
        """Header, then one row per frame of the session in review order: position, id, status, queue score."""
        if self.session is None:
            return [("#", "Frame", "Status", "Score")]
        latest: Dict[int, str] = {}
        for summary in self.session.store.summaries():
            latest[summary.frame_id] = summary.status  # summaries come oldest first: the last one is current
        position = self._shown.position if self._shown is not None else None
        rows = [("#", "Frame", "Status", "Score")]
        for index, frame_id in enumerate(self.session.frame_ids):
            score = self._scores.get(frame_id)
            mark = ">" if index == position else ""
            rows.append((f"{mark}{index + 1}", str(frame_id), latest.get(frame_id, "unlabelled"),
                         "" if score is None else f"{score:.3f}"))
        return rows

    def history_rows(self) -> List[Tuple[str, ...]]:
        """Header, then the shown frame's versions, oldest first: who saved what, when, with which status."""
        rows = [("Version", "When (UTC)", "Who", "Change")]
        if self._shown is not None:
            for entry in self._shown.history:
                rows.append((f"v{entry.version_id}", entry.created[:19].replace("T", " "), entry.author,
                             entry.change))
        return rows

    def close(self) -> None:
        """Close the session and its store (the annotation nodes stay in the scene)."""
        session, self.session = self.session, None
        self._shown = None
        if session is not None:
            session.store.close()


__all__ = ["Signal", "LiveController", "LiveStatus", "DisplaySettings", "InputChoice", "VolumeNodeInput",
           "ReviewController", "card_summary", "frame_from_volume_node", "run_sample_replay", "ReplayReport",
           "segmenter_with_random_fallback", "ReviewConflict", "MODES", "DEFAULT_HOST", "DEFAULT_PORT",
           "DEFAULT_DEVICE_NAME", "DEFAULT_REMOTE_PORT", "LABEL_DEVICE_NAME", "STATUS_INTERVAL_S"]
