"""Children that a SIGKILL loop kills at random moments, shared by the tests and benchmarks/reliability/kill_loops.py
(which runs them for longer): each works as fast as it can and reports what was acknowledged, so the parent can
check that nothing acknowledged was lost and nothing half-written is ever seen.
"""

from __future__ import annotations

import os

import numpy as np

from ..datasets.export import ExportOptions, export_cohort, frames_from_store
from ..store.database import AnnotationStore, pixel_sha256

#: (height, width) of the masks the save child writes.
SAVE_SHAPE = (48, 64)
#: (height, width) of the frames of the store the export child exports.
EXPORT_SHAPE = (120, 160)


def save_until_killed(db, frame_id, seed, ack_fd, shape=SAVE_SHAPE):
    """Child: save versions of ``shape`` in a loop; after each save returns, write 'version_id sha256' to the pipe
    ``ack_fd``."""
    rng = np.random.default_rng(seed)
    with AnnotationStore(db) as store:
        while True:
            current = store.current(frame_id)
            mask = (rng.random(shape) < 0.3).astype(np.uint8)
            version = store.save_mask(frame_id, mask, {1: "nerve"}, f"child{seed}", "manual",
                                      current.id if current else None)
            os.write(ack_fd, f"{version.id} {pixel_sha256(mask)}\n".encode())  # < PIPE_BUF: atomic


def export_options(**kw):
    """The export options of the SIGKILL loops: masks, no progress bar, ``kw`` on top."""
    return ExportOptions(format="masks", progress=False, **kw)


def export_until_killed(store_path, out, ready):
    """Child: export with --force over and over until killed."""
    with AnnotationStore(store_path) as store:  # frames read their pixels from the open store
        chosen = frames_from_store(store, ["accepted"])
        ready.set()
        while True:
            export_cohort(chosen, out, export_options(force=True))
