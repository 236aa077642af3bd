"""What the status line shows, and how the segments are drawn."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, Optional, Tuple

#: How each display state reads after a class's presence in the status line (a shown class needs no word).
STATE_WORDS = {"shown": "", "uncertain": "uncertain", "hidden": "not drawn"}


@dataclass(frozen=True)
class ClassConfidence:
    """How sure the model is that one class is in the newest applied frame, and how it is drawn.

    presence: 0..1, calibrated where the model card has a ``presence`` block, else the raw score (the class's
        highest probability); None when the result carried none (a server that sends no metadata).
    state: ``shown`` (filled), ``uncertain`` (outline only) or ``hidden`` (not drawn); None when unknown.
    """

    key: str
    name: str
    presence: Optional[float] = None
    state: Optional[str] = None

    def text(self) -> str:
        """``Nerve 93 %``, ``Blood vessel 41 % (uncertain)``, ``Nerve 4 % (not drawn)``."""
        shown = f"{self.name} " + (f"{100.0 * self.presence:.0f} %" if self.presence is not None else "-")
        word = STATE_WORDS.get(self.state or "shown", self.state)
        return shown + (f" ({word})" if word else "")


def confidence_of(result) -> Tuple[ClassConfidence, ...]:
    """Each class's presence and display state in a SegmentationResult (empty when it carries neither)."""
    presence = getattr(result, "presence", None) or {}
    states = getattr(result, "states", None) or {}
    if not presence and not states:
        return ()
    return tuple(ClassConfidence(c.key, c.name, presence.get(c.key), states.get(c.key))
                 for c in result.classes if c.key in presence or c.key in states)


def confidence_text(confidence) -> str:
    """``Nerve 93 % | Blood vessel 41 % (uncertain)`` (empty without confidence)."""
    return " | ".join(c.text() for c in confidence)


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
    steady: whether the steady overlay is on (in remote mode the server's own setting applies).
    confidence: per class of the newest applied result, its presence and display state (:class:`ClassConfidence`;
        empty when not running or when the result carried none); :meth:`confidence_text` for one line.
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
    recording_detail: str = ""  # "312 frames, 12.5 s, 162 of 1024 MiB"
    message: str = ""
    steady: bool = True
    confidence: Tuple[ClassConfidence, ...] = ()

    def confidence_text(self) -> str:
        """``Nerve 93 % | Blood vessel 41 % (uncertain)``: each class's presence in the newest frame and, when not
        simply shown, how it is drawn; empty without confidence."""
        return confidence_text(self.confidence)

    def text(self, confidence: bool = True) -> str:
        """One line for the panel, e.g. ``Running (in-process, smistad-unet) | connected to 127.0.0.1:18944 | ...``,
        with each class's confidence (``| Nerve 93 % | Blood vessel 41 % (uncertain)``) unless ``confidence`` is
        False (the panel shows it in a label of its own)."""
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
            if confidence and self.confidence:
                parts.append(self.confidence_text())
        if self.recording:
            parts.append(f"recording ({self.recording_detail or f'{self.recorded} frames'})")
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


