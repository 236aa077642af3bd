"""The annotation store's own errors and the marks that make a NerveSeg store recognisable: the bottom of
the store package, imported by both engines (:mod:`.backends`, :mod:`.postgres`) and by the store itself."""

from __future__ import annotations

from typing import Optional

import numpy as np

#: Written into the file header (PRAGMA application_id) and the meta table so a NerveSeg store is recognisable.
APPLICATION_ID = 0x4E534547  # "NSEG"
APPLICATION_NAME = "nerveseg-annotation-store"


class StoreError(Exception):
    """Base class of the store's own errors."""


class NotAStoreError(StoreError):
    """The file exists but is not a NerveSeg annotation store (or was written by a newer NerveSeg)."""


class StoreConnectionError(StoreError):
    """The database server cannot be reached, or the connection to it was lost (one line naming the host and the
    reason). Nothing was written by the call that raised it, except where the message says the connection went
    while committing."""


class ConflictError(StoreError):
    """A save was based on a version that is no longer the frame's current one; nothing was written.

    Attributes: frame_id; based_on (the parent_id the caller gave); current_id, current_author, current_created,
    current_status (the version that got there first); mask (the refused mask, so the caller can re-apply it).
    """

    def __init__(self, frame_id: int, based_on: Optional[int], current_id: Optional[int],
                 current_author: Optional[str], current_created: Optional[str], current_status: Optional[str],
                 mask: Optional[np.ndarray] = None):
        self.frame_id = frame_id
        self.based_on = based_on
        self.current_id = current_id
        self.current_author = current_author
        self.current_created = current_created
        self.current_status = current_status
        self.mask = mask
        base = "no version (a first save)" if based_on is None else f"version {based_on}"
        if current_id is None:
            newer = "the frame has no version at all"
        else:
            newer = (f"{current_author} saved version {current_id} ({current_status}) at {current_created}")
        super().__init__(
            f"conflict on frame {frame_id}: this save was based on {base}, but {newer}. Nothing was saved; "
            f"reload the frame (current version {current_id}) and apply the edit again.")
