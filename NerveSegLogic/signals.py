"""Signal: a small pure-Python observer list for the panel's events.

Pure Python on purpose (no ``qt.Signal``): it works outside Qt, in tests, and a widget that disconnects in
``cleanup()`` leaves nothing behind.
"""

from __future__ import annotations

import logging
from typing import Any, Callable, List, Optional

log = logging.getLogger(__name__)


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

