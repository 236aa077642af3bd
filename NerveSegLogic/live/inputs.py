"""Where a live run's frames come from: the input choice (an OpenIGTLink server or a volume node), the check of a
host and port, and the watch that tells a receiver still waiting for its server from one that lost it.

Shared by the panel's logic (:mod:`.controller`, :mod:`.runs`) and the worker process (:mod:`.worker.child`, through
:mod:`.remote`); imports nothing of either.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Tuple


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


def check_host_port(host: str, port: int, what: str) -> Tuple[str, int]:
    """(host, port) stripped and checked; ValueError naming ``what`` for an empty host or a port outside 1..65535."""
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


def _is_connected(receiver) -> Optional[bool]:
    if receiver is None:
        return None
    if hasattr(receiver, "is_connected"):
        return bool(receiver.is_connected)
    counters = receiver.counters() if hasattr(receiver, "counters") else {}
    return bool(counters.get("connected")) if "connected" in counters else None


class ConnectionWatch:
    """Remembers whether a receiver was connected during this run, to tell 'waiting' from 'lost'.

    receiver None (a run without that connection): always (None, False)."""

    def __init__(self, receiver):
        self.receiver = receiver
        self.ever_connected = False

    def state(self) -> Tuple[Optional[bool], bool]:
        """(connected: True, False or None when unknown, lost: it was connected during this run and is not now)."""
        connected = _is_connected(self.receiver)
        if connected:
            self.ever_connected = True
        return connected, bool(self.ever_connected and connected is False)
