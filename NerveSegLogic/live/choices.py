"""What the user chooses for a live run: defaults, the run modes, and where frames come from."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Tuple

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 18944  # PLUS's and Slicer's default OpenIGTLink port
DEFAULT_DEVICE_NAME = "Image_Reference"  # PLUS names its B-mode image "Image" in the "Reference" frame
DEFAULT_REMOTE_PORT = 18945  # ``nerveseg serve``'s default
LABEL_DEVICE_NAME = "NerveSegLabel"  # device name of the labelmaps a ``nerveseg serve`` sends
#: child-process: receiving and inference in a worker process (the default in Slicer, where Python threads only
#: run while the GUI executes Python); in-process: in threads of this process (headless use, where it is faster);
#: remote: a ``nerveseg serve`` elsewhere segments, a worker process pairs its labelmaps with the frames.
MODES = ("child-process", "in-process", "remote")
#: auto: ONNX Runtime on a CPU for semantic models (INT8 where the card shows it costs < 0.01 Dice), else torch.
BACKENDS = ("auto", "torch", "onnx", "onnx-int8")
#: The widget refreshes the status at most this often (s): twice a second is readable and costs nothing.
STATUS_INTERVAL_S = 0.5
#: Remote mode keeps this many recent image frames to pair labelmaps with (about 4 s at 30 fps).
REMOTE_FRAME_MEMORY = 128
#: Two IGTL timestamps closer than this (s) are the same frame's (32.32 fixed point round-trips far below it).
TIMESTAMP_TOLERANCE_S = 1e-4
INTENDED_USE = "Research use only, not for clinical decisions."


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

