"""What the status line shows, and how the segments are drawn."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, Optional

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
    recording_detail: str = ""  # "312 frames, 12.5 s, 162 of 1024 MiB"
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


