"""The self-test shared by the Slicer module test and pytest: replay the bundled sample into a LiveController."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable, Optional, Tuple

from ..igtl import IMAGE_DEVICE_NAME

if TYPE_CHECKING:  # pragma: no cover
    # The package's own imports inside functions here are lazy on purpose: they load numpy, which importing this
    # module must not.
    from .controller import LiveController

log = logging.getLogger(__name__)


def segmenter_with_random_fallback(name: str, backend: str = "torch", device: str = "cpu"):
    """The registered model with its shipped weights; when its card ships none, the same architecture with RANDOM
    weights (logged as such). For self-tests only (the Slicer module test, pytest): random weights exercise the whole
    path (shapes, classes, threads, MRML, recording) but segment nothing meaningful."""
    from ..inference.backends import resolve_device
    from ..inference.segmenter import Segmenter
    from ..models import registry

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
    #: each class's presence and display state in the last applied result (``Nerve 93 % | ...``; see LiveStatus)
    confidence: str = ""


def run_sample_replay(controller: "LiveController", frames: int = 12, fps: float = 15.0, source=None,
                      model: Optional[str] = None, timeout_s: float = 120.0,
                      pause: Callable[[float], None] = time.sleep, mode: str = "in-process",
                      between_ticks: Optional[Callable[[], None]] = None) -> ReplayReport:
    """Replay ``frames`` frames of ``source`` (default: the bundled sample, looped as needed) from a ReplayServer on
    127.0.0.1 (ephemeral port) into ``controller`` in-process, ticking as the panel's timer does until every frame sent was
    received and then applied, dropped as stale or failed; stops the controller and the server, and reports.

    The shared body of the Slicer module test and of the pytest suite. ``model`` (default: the one selected, else
    the registry's default) is selected first. Raises TimeoutError with the status when not done in ``timeout_s``.
    """
    from ..models import registry
    from ..stream.replay import ReplayServer

    if model is not None or controller.model_name is None:
        controller.select_model(model or registry.default_name(), controller.backend, controller.compute_device)
    replay = ReplayServer(source, fps=fps, loop=True, max_frames=frames, wait_for_client=True)
    replay.start()
    try:
        controller.connect("127.0.0.1", replay.port, IMAGE_DEVICE_NAME)
        controller.start(mode)
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
            if between_ticks is not None:
                between_ticks()  # e.g. a driver that holds the GIL between ticks, as Slicer's event loop does
            else:
                pause(0.002)  # the panel's timer period, roughly; progress is checked each time, not assumed
        latency = controller.status().latency_p50_ms
        confidence = controller.status().confidence_text()
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
                        segment_ids=ids, segment_names=names, latency_p50_ms=latency, status=status.text(),
                        confidence=confidence)

