"""A one-item, newest-wins hand-over between threads.

The live path never queues: the receiver puts each frame into a slot, the inference worker takes the newest one;
the worker puts each result into a slot, the main thread takes the newest one. An item that is replaced before
anyone took it is *dropped* and counted, so a slow consumer costs frames, never latency.
"""

from __future__ import annotations

import threading
from typing import Generic, Optional, TypeVar

T = TypeVar("T")


class NewestSlot(Generic[T]):
    """Thread-safe single-item slot. All fields are guarded by ``_cond``'s lock."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._item: Optional[T] = None
        self._closed = False
        self.put_count = 0  # items offered
        self.taken_count = 0  # items handed to a consumer
        self.dropped_count = 0  # items replaced before anyone took them

    def put(self, item: T) -> Optional[T]:
        """Offer ``item``; returns the untaken item it replaced (now dropped), or None."""
        with self._cond:
            replaced = self._item
            if replaced is not None:
                self.dropped_count += 1
            self._item = item
            self.put_count += 1
            self._cond.notify_all()
            return replaced

    def take(self, timeout: Optional[float] = None) -> Optional[T]:
        """The newest untaken item, waiting up to ``timeout`` seconds (None: forever, 0: no wait).

        Returns None on timeout or once the slot is closed and empty.
        """
        with self._cond:
            if timeout is None:
                while self._item is None and not self._closed:
                    self._cond.wait()
            elif self._item is None and not self._closed and timeout > 0:
                self._cond.wait_for(lambda: self._item is not None or self._closed, timeout)
            item, self._item = self._item, None
            if item is not None:
                self.taken_count += 1
            return item

    def peek(self) -> Optional[T]:
        with self._cond:
            return self._item

    def close(self) -> None:
        """Wake every waiting ``take``; later takes return what is left, then None without waiting."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()

    def reopen(self) -> None:
        with self._cond:
            self._closed = False

    @property
    def closed(self) -> bool:
        with self._cond:
            return self._closed
