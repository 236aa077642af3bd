"""LiveController: what every button of the NerveSeg live panel does, written without Qt so it is tested outside
Slicer.

The Slicer widget only binds: it calls ``connect`` / ``use_volume_node`` / ``connect_remote`` to choose the input,
``select_model`` to choose the model (and shows the card summary it returns), ``start`` / ``stop``, the display and
recording setters, and calls :meth:`LiveController.tick` from a ``qt.QTimer`` on the main thread. ``tick`` is the
only method that writes MRML (through a :class:`~NerveSegLogic.scene.live.LiveScene`); nothing else does.

Three ways to segment (:data:`~NerveSegLogic.live.choices.MODES`):

- ``child-process`` (the panel's default): a worker process (:mod:`NerveSegLogic.live.worker`) receives the frames from
  PLUS (or is sent the frames of a volume node), runs the model and sends back each frame with its labelmap. Inside
  Slicer, Python threads run only while the main thread executes Python (PythonQt keeps the GIL while the Qt event
  loop waits), so receiving and inference must not be Python threads of Slicer's process.
- ``in-process``: receiver and inference threads here (:class:`~NerveSegLogic.live.runs.InProcessRun`); for
  headless use, where it is faster.
- ``remote``: a ``nerveseg serve`` elsewhere segments the same PLUS stream; a worker process receives the images
  and the labelmaps and pairs them by IGTL timestamp, so a mask is never shown on the wrong frame. No torch here.

Collaborators come in through the constructor (``typing.Protocol`` types, real defaults).
"""

from __future__ import annotations

import logging
import time
from typing import Any, Callable, Dict, List, Optional, Protocol, Tuple

import numpy as np

from ..frame import Frame, SegmentationResult
from ..igtl import DEFAULT_PORT, IMAGE_DEVICE_NAME, SERVE_PORT
from ..imaging.region import Region, parse_region, region_from_ras_bounds, region_text
from ..signals import Signal
from ..slot import NewestSlot
from ..stream.receiver import ImageReceiver
from .choices import BACKENDS, DEFAULT_HOST, INTENDED_USE, MODES, STATUS_INTERVAL_S
from .inputs import InputChoice, check_host_port
from .remote import RemoteRun
from .runs import InProcessRun, Run, VolumeNodeInput
from .status import ClassConfidence, DisplaySettings, LiveStatus, confidence_of
from .worker.parent import WorkerProcess, WorkerRun
from ..inference.backends import resolve_device
from ..inference.segmenter import load_segmenter
from ..models import registry
from ..models.fetch import fetch_weights
from ..scene import mrml
from ..scene.live import LiveScene, RecordingLimit

log = logging.getLogger(__name__)


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
    return ImageReceiver(host, port, device_name=device_name, on_frame=on_frame)


def _default_segmenter(name: str, backend: str, device: str) -> FrameSegmenter:
    # "auto" becomes cuda or cpu here: the weights are moved to this device before the backend sees it.
    return load_segmenter(name, backend=backend, device=resolve_device(device))


def _default_scene(classes, mrml_scene=None, name: str = "NerveSeg", record: bool = True,
                   limit=None) -> LiveSceneLike:
    return LiveScene(classes, mrml_scene=mrml_scene, name=name, record=record, limit=limit)


def _default_card(name: str):
    return registry.card(name)


def _default_model_names() -> List[str]:
    return registry.names()


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
                 clock: Callable[[], float] = time.monotonic, status_interval_s: float = STATUS_INTERVAL_S,
                 worker_factory: Optional[Callable[..., Any]] = None, remote_via_worker: bool = False,
                 recording_limit=None):
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
        self._run: Optional[Run] = None
        self._mode = "in-process"
        self._recording = True
        self.display = DisplaySettings()
        self._last_status_at: Optional[float] = None
        self._tick_errors = 0
        self._message = ""
        self._final_counters: dict = {}  # the last run's counters, shown after stop
        # worker_factory(args) -> WorkerProcess: the worker process of child-process mode (and of remote mode
        # when remote_via_worker, as in Slicer, where a receiver thread here would wait for the GIL).
        self._worker_factory = worker_factory
        self.remote_via_worker = bool(remote_via_worker)
        self.threads = 0  # inference threads in the worker (0: the backend's default)
        self._recording_limit = recording_limit
        self.first_frame = Signal("first_frame")  # (volume node) when a new scene shows its first frame
        self._first_frame_pending = False
        self._region = None  # the image region choice: None (whole frame), a Region or "auto"
        self.region_in_use = None  # the Region of the newest applied result (None: the whole frame was segmented)
        self._steady = True  # the steady overlay (inference.steady), on by default in the live path
        self._confidence: Tuple[ClassConfidence, ...] = ()  # of the newest applied result

    # ------------------------------------------------------------------------------------------------ input
    def connect(self, host: str = DEFAULT_HOST, port: int = DEFAULT_PORT,
                device_name: Optional[str] = IMAGE_DEVICE_NAME) -> str:
        """Take frames from an OpenIGTLink server (PLUS, ``nerveseg replay``): IMAGE messages of ``device_name``
        (None or '' = any IMAGE). The connection opens at :meth:`start` and is kept, reconnecting, until
        :meth:`stop`; while running, switches to the new input at once. Returns the input's description;
        ValueError for an empty host or a port outside 1..65535."""
        host, port = check_host_port(host, port, "input server")
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
                             f"(e.g. {IMAGE_DEVICE_NAME} from OpenIGTLinkIF)")
        if self.mrml_scene is not None and node.GetScene() is not self.mrml_scene:
            raise ValueError(f"volume node {node.GetName()!r} is not in this controller's scene")
        choice = InputChoice("volume", node_name=node.GetName())
        self._switch_input(choice, node)
        return choice.describe()

    def connect_remote(self, host: str, port: int = SERVE_PORT) -> str:
        """Use a ``nerveseg serve`` at host:port for ``start(mode="remote")``: it segments the same input server's
        images and sends back labelmaps (:data:`~NerveSegLogic.igtl.LABEL_DEVICE_NAME`). Returns its description; ValueError for a bad address."""
        remote = check_host_port(host, port, "segmentation server")
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

    def weights_to_fetch(self) -> Optional[Dict[str, Any]]:
        """For the chosen model whose weights are a release download not on this machine: {name, url, size (bytes
        or None)}; None when its weights are here or it names no address."""
        card = self._card
        if card is None or getattr(card, "has_weights", True) or not getattr(card, "weights_url", None):
            return None
        return {"name": card.name, "url": card.weights_url, "size": (card.weights or {}).get("size")}

    def fetch_weights(self, progress=None):
        """Download the chosen model's weights into the user models folder (sha256-checked, resumable; see
        :mod:`NerveSegLogic.models.fetch`), calling ``progress(done, total)`` as bytes arrive (the panel keeps its
        window alive from there; raising in it stops the download, which a later fetch resumes). Returns the
        file's path; FetchError naming the address on failure. The card is read again so it finds the file."""
        if self._card is None:
            raise ValueError("choose a model first")
        path = fetch_weights(self._card, progress=progress)
        self._card = self._card_reader(self._card.name)
        return path

    @property
    def card(self):
        return self._card

    # ------------------------------------------------------------------------------------------------ image region
    @property
    def region(self):
        """The image region choice: None (the whole frame), an ``inference.region.Region`` or ``"auto"``."""
        return self._region

    def set_region(self, region=None) -> str:
        """Segment only the image region of the frames: None or '' (the whole frame), ``"auto"`` (found from the
        first second of frames, see :mod:`NerveSegLogic.imaging.region`), ``"X,Y,W,H"``, an (x, y, w, h)
        sequence or a Region, in frame pixels. In-process it applies from the next frame; a running worker process
        restarts with it. Setting ``"auto"`` again finds the region again. In remote mode the server's own
        ``--region`` applies (the choice is kept for the other modes).
        Returns what the panel shows; RegionError (a ValueError) naming the value for a bad one."""
        if region is None or isinstance(region, str):
            choice = parse_region(region, what="image region")
        else:
            choice = region if isinstance(region, Region) else Region(*(int(v) for v in region))
        changed = choice != self._region
        self._region = choice
        if self._segmenter is not None and hasattr(self._segmenter, "region"):
            self._segmenter.region = choice  # the inference thread takes it from the next frame
        if (changed or choice == "auto") and self.running and self._mode == "child-process":
            self._restart()
        return self.region_description()

    # ------------------------------------------------------------------------------------------------ steady overlay
    @property
    def steady(self) -> bool:
        """Whether the steady overlay is on (see :meth:`set_steady`)."""
        return self._steady

    def set_steady(self, on: bool = True) -> str:
        """Keep the overlay steady across frames (on, the default): a short motion-compensated moving average of
        the class probabilities, sticky outlines, and a structure that appears after 2 frames and disappears after
        5 (:mod:`NerveSegLogic.inference.steady`); off: each frame's own answer. Either way a structure whose
        presence is below the card's thresholds is drawn as uncertain (outline) or not at all, and the status shows
        each class's confidence. In-process it applies from the next frame; a running worker process restarts
        with it; in remote mode the server's own ``--steady`` applies (the choice is kept for the other modes).
        Setting the value it has does nothing. Returns what the panel shows."""
        on = bool(on)
        changed = on != self._steady
        self._steady = on
        run = self._run
        if changed and run is not None:
            if self._mode == "child-process":
                self._restart()  # the worker takes --steady when it starts
            else:
                run.set_steady(on)  # in-process: the inference thread takes it with its next frame; remote: nothing
        return self.steady_description()

    def steady_description(self) -> str:
        if self._mode == "remote" and self.running:
            return "Steady overlay: as the server runs it (nerveseg serve --steady / --no-steady)"
        return "Steady overlay: " + ("on" if self._steady else "off (each frame on its own)")

    @property
    def confidence(self) -> Tuple[ClassConfidence, ...]:
        """Each class's presence and display state in the newest applied result (empty before one)."""
        return self._confidence

    def region_description(self) -> str:
        """One line for the panel: the region chosen (and what auto-detection found, in-process)."""
        choice = self._region
        if choice is None:
            return "Image region: the whole frame"
        if choice == "auto":
            auto = getattr(self._segmenter, "auto_region", None) if self._mode == "in-process" else None
            if auto is not None and auto.region is not None:
                return f"Image region: {auto.region.text()} (X,Y,W,H), found automatically: {auto.reason}"
            found = self.region_in_use
            return ("Image region: automatic" + (f", {found.text()} (X,Y,W,H)" if found is not None else
                                                 " (found from the first second of frames)"))
        return f"Image region: {choice.text()} (X,Y,W,H)"

    def region_from_ras_bounds(self, bounds, volume_node=None):
        """The pixel Region of the frames covered by a box of RAS mm (a markups ROI's ``GetRASBounds``), through
        the IJK-to-RAS geometry of ``volume_node`` (default: NerveSeg's live volume, which shows the frames with
        their own geometry, else the input volume). ValueError when no volume with an image is there yet, or the
        box holds too few of its pixels."""
        node = volume_node
        if node is None:
            for candidate in (self.volume_node, self._volume_node):
                if candidate is not None and candidate.GetImageData() is not None:
                    node = candidate
                    break
        if node is None or node.GetImageData() is None:
            raise ValueError("no frame is shown yet: start (or choose the input volume) so that a frame is there, "
                             "then draw the region on it")
        width, height, _ = mrml.image_dimensions(node.GetImageData())
        if width == 0:
            raise ValueError(f"volume {node.GetName()!r} holds no image yet")
        return region_from_ras_bounds(bounds, mrml.volume_geometry(node).ijk_to_ras(), height, width)

    def set_region_from_roi(self, roi_node, volume_node=None) -> str:
        """:meth:`set_region` with the frame pixels inside a markups ROI node (drawn on the live view), see
        :meth:`region_from_ras_bounds`. Returns what the panel shows."""
        if roi_node is None:
            raise ValueError("choose a ROI (markups ROI node) drawn over the image")
        bounds = [0.0] * 6
        roi_node.GetRASBounds(bounds)
        return self.set_region(self.region_from_ras_bounds(bounds, volume_node))

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
        if mode == "child-process":
            scene = self._ensure_scene(self._card.classes)
            run = self._worker_run(scene, role="segment")
        elif mode == "in-process":
            segmenter = self._ensure_segmenter()
            scene = self._ensure_scene(segmenter.classes)
            receiver = volume_input = None
            if self._input.kind == "igtl":
                receiver = self._receiver_factory(self._input.host, self._input.port, self._input.device_name)
            else:
                volume_input = VolumeNodeInput(self._volume_node)
            run = InProcessRun(receiver, volume_input, segmenter, sinks=[scene.apply], steady=self._steady)
        else:
            if self._remote is None:
                raise ValueError("choose the segmentation server (host, port of 'nerveseg serve') for remote mode")
            if self._input.kind != "igtl":
                raise ValueError("remote mode pairs each labelmap with its frame by the IGTL timestamp, so it needs "
                                 "the images over OpenIGTLink: choose the input server (host, port), not a volume")
            scene = self._ensure_scene(self._card.classes)
            if self.remote_via_worker:
                run = self._worker_run(scene, role="remote")
            else:
                run = RemoteRun(self._receiver_factory, self._input, self._remote, self._card.classes,
                                self._model_name, sinks=[scene.apply])
        try:
            run.start()
        except BaseException:
            run.stop()
            raise
        self._run, self._mode = run, mode
        self._confidence = ()
        log.info("NerveSeg started: %s, %s, input %s", mode, self._model_name, self._input.describe())
        self.running_changed.emit(True)
        self._emit_status()

    def _worker_run(self, scene, role: str):
        """A WorkerRun: the worker process receives (from PLUS, or the volume node's frames sent from here) and
        segments (role ``segment``) or pairs a serve's labelmaps with the frames (role ``remote``)."""
        args = ["--role", role, "--model", self._model_name]
        volume_input = None
        if role == "segment":
            args += ["--backend", self.backend, "--compute", self.compute_device, "--threads", str(int(self.threads)),
                     "--steady", "on" if self._steady else "off"]
            if self._region is not None:
                args += ["--region", region_text(self._region)]
        if self._input.kind == "igtl":
            args += ["--input", f"{self._input.host}:{self._input.port}",
                     "--device-name", self._input.device_name or ""]
        else:
            args += ["--input", "parent"]
            volume_input = VolumeNodeInput(self._volume_node)
        if role == "remote":
            args += ["--remote", f"{self._remote[0]}:{self._remote[1]}"]
        factory = self._worker_factory or (lambda worker_args: WorkerProcess(worker_args))
        return WorkerRun(args, self._card.classes, sinks=[scene.apply], volume_input=volume_input,
                         model_name=self._model_name, process_factory=factory)

    def worker_log(self, lines: int = 40) -> str:
        """The last lines of the worker process's log (empty when no worker runs)."""
        run = self._run
        return run.log_tail(lines) if run is not None else ""

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
            self._confidence = ()
            self._reset_segment_states()
            log.info("NerveSeg stopped")
            self.running_changed.emit(False)
            self._emit_status()

    def _reset_segment_states(self) -> None:
        """Every class drawn as shown again once the run stopped (the recording is browsed and edited as it is)."""
        scene = self._scene
        if scene is not None and hasattr(scene, "reset_states"):
            try:
                scene.reset_states()
            except Exception:  # a scene being closed: its nodes go anyway
                log.debug("resetting the segments' display failed", exc_info=True)

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
        if hasattr(self._segmenter, "region"):
            self._segmenter.region = self._region  # each run finds an automatic region afresh
        return self._segmenter

    def _ensure_scene(self, classes) -> LiveSceneLike:
        """The LiveScene for these classes: the current one, or a new one when the classes differ (the old one's
        nodes, and what they recorded, stay in the scene)."""
        classes = tuple(classes)
        if self._scene is not None and tuple(self._scene.classes) == classes:
            return self._scene
        self._scenes_made += 1
        name = "NerveSeg" if self._scenes_made == 1 else f"NerveSeg {self._scenes_made}"
        options = {} if self._recording_limit is None else {"limit": self._recording_limit}
        self._scene = self._scene_factory(classes, mrml_scene=self.mrml_scene, name=name, record=self._recording,
                                          **options)
        self._first_frame_pending = True
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
                if self._stopped_by(run):  # e.g. its input volume was removed
                    return None
                result = run.poll()
                if self._stopped_by(run):  # e.g. the worker gave up after its restarts
                    return None
            except Exception as error:
                self._tick_errors += 1
                if str(error) != self._message:
                    log.exception("NerveSeg: applying a result failed")
                self._message = str(error)
        if result is not None:
            self.region_in_use = getattr(result, "region", None)
            self._confidence = confidence_of(result)
            if self._first_frame_pending and self._scene is not None:
                self._first_frame_pending = False
                self.first_frame.emit(self._scene.volume_node)  # the panel fits the views to it
            self.result_applied.emit(result)
        if self.status_due():
            self._emit_status()
        return result

    def _stopped_by(self, run: Run) -> bool:
        """Stop when the run says it cannot go on, with its reason as the message; whether it did."""
        reason = run.stop_reason()
        if reason is None:
            return False
        self.stop()
        self._message = reason
        self._emit_status()
        return True

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
                      recording_detail=scene.recording_text() if hasattr(scene, "recording_text") else "",
                      remote=f"{self._remote[0]}:{self._remote[1]}" if self._remote else "", steady=self._steady)
        if run is None:
            c = self._final_counters
            return LiveStatus(running=False, frames_received=c.get("received", 0), frames_applied=c.get("applied", 0),
                              frames_dropped=c.get("dropped", 0), errors=c.get("errors", 0) + self._tick_errors,
                              message=self._message or self._limit_message(), **common)
        counters = run.counters()
        connected, lost = run.watch.state()
        remote_connected, remote_lost = run.remote_watch.state()
        percentiles = run.stats.percentiles().get("total", {})
        return LiveStatus(running=True, connected=connected, input_lost=lost, remote_connected=remote_connected,
                          remote_lost=remote_lost, fps=run.stats.recent_fps(), latency_ms=run.stats.last_total_ms(),
                          latency_p50_ms=percentiles.get("p50"), frames_received=counters["received"],
                          frames_applied=counters["applied"], frames_dropped=counters["dropped"],
                          errors=counters["errors"] + self._tick_errors,
                          message=self._message or self._limit_message() or counters.get("last_error") or "",
                          confidence=self._confidence, **common)

    def _limit_message(self) -> str:
        return getattr(self._scene, "limit_message", "") or "" if self._scene is not None else ""

    def set_recording_limits(self, minutes: float = 0.0, megabytes: Optional[float] = 1024.0,
                             at_limit: str = "stop") -> None:
        """The panel's recording limit: ``minutes`` of scan time (0: none) and ``megabytes`` MiB (0/None: none);
        ``at_limit`` stop or drop-oldest. Unchanged values do nothing. ValueError for values out of range."""
        limit = RecordingLimit(max_seconds=float(minutes) * 60.0 if minutes else None,
                               max_megabytes=float(megabytes) if megabytes else None, at_limit=at_limit)
        if limit != self._recording_limit:
            self.set_recording_limit(limit)

    def set_recording_limit(self, limit) -> None:
        """Bound the recording (a ``scene.live.RecordingLimit``: minutes and/or MiB, stop or drop the oldest);
        applies to the current scene and to scenes created later."""
        self._recording_limit = limit
        if self._scene is not None and hasattr(self._scene, "set_limit"):
            self._scene.set_limit(limit)

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
    if has_weights is False and getattr(card, "weights_url", None):
        size = (card.weights or {}).get("size")
        lines.append("Weights: a release download" + (f" ({size / 1e6:.1f} MB)" if size else "")
                     + ", not on this machine yet; NerveSeg offers to fetch them (or: nerveseg models fetch "
                     + f"{card.name}).")
    elif has_weights is False:
        lines.append("Weights: none shipped yet; this model cannot segment until it is trained.")
    site = (getattr(card, "raw", None) or {}).get("site")
    if site:
        lines.append(f"Site model (fine-tuned from {site.get('base_model') or 'an unrecorded model'}, added "
                     f"{site.get('added', '?')}).")
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

