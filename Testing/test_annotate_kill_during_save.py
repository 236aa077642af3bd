"""SIGKILL during saves: a child process saves mask versions to the store as fast as it can and is killed at a
random moment, 50 times over. Every save the child saw acknowledged (save_mask returned) must be in the store with
its exact pixels afterwards, and the store must pass its integrity check (SQLite's own, and the history's shape).
On both engines: an SQLite file, and a PostgreSQL database (where the server rolls back the killed client's open
transaction and releases its frame lock)."""

import multiprocessing
import os
import random
import select
import signal
import time

import numpy as np

from NerveSegLogic.testing.killed_children import SAVE_SHAPE, save_until_killed as _save_until_killed
from NerveSegLogic.store.database import AnnotationStore, pixel_sha256

KILLS = 50
H, W = SAVE_SHAPE


def test_no_acknowledged_save_is_lost_across_50_sigkills(store_location):
    db = store_location
    with AnnotationStore(db) as store:
        frame_id = store.add_frame(np.zeros((H, W), np.uint8), "scan", 0).id
        # one save here first, so whatever it imports lazily is imported once, not again in every forked child
        store.save_mask(frame_id, (np.random.default_rng(0).random((H, W)) < 0.3).astype(np.uint8), {1: "nerve"},
                        "parent", "manual", None)
    context = multiprocessing.get_context("fork")  # starts in milliseconds with everything already imported
    rng = random.Random(14)
    acknowledged = {}
    for kill in range(KILLS):
        read_fd, write_fd = os.pipe()
        child = context.Process(target=_save_until_killed, args=(db, frame_id, kill, write_fd), daemon=True)
        child.start()
        os.close(write_fd)
        ready, _, _ = select.select([read_fd], [], [], 10.0)  # the child is saving: its first save was acknowledged
        assert ready
        time.sleep(rng.uniform(0.0, 0.02))  # then kill it at a random moment of a later save
        os.kill(child.pid, signal.SIGKILL)
        child.join(10)
        assert child.exitcode == -signal.SIGKILL
        data = b""
        while True:
            chunk = os.read(read_fd, 65536)
            if not chunk:
                break
            data += chunk
        os.close(read_fd)
        for line in data.decode().splitlines():
            version_id, sha = line.split()
            acknowledged[int(version_id)] = sha
    assert len(acknowledged) >= KILLS  # every child had saved at least once before it was killed
    with AnnotationStore(db) as store:
        assert store.integrity_check() == "ok"
        lost = [vid for vid, sha in acknowledged.items() if pixel_sha256(store.version(vid).mask) != sha]
        history = store.history(frame_id)
    assert lost == []
    # append-only chain: every version's parent is the one before it, whatever the kills interrupted
    assert [v.parent_id for v in history[1:]] == [v.id for v in history[:-1]]
