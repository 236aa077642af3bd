"""Two annotator processes on one store, and a writer killed mid-save: nothing is lost, nothing is corrupted.

The children are started with the "spawn" method, so each is a fresh interpreter with its own connection (what two
annotators' Slicer sessions are). Each test runs on both engines: an SQLite file, and a PostgreSQL database on the
tests' throwaway server (the ``store_location`` fixture of conftest.py).
"""

from __future__ import annotations

import multiprocessing as mp
import os
import random
import signal

import numpy as np

from NerveSegLogic.store.database import AnnotationStore, ConflictError

CLASSES = {1: "nerve"}
SHAPE = (64, 64)
_CTX = mp.get_context("spawn")


def _mask(seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return (rng.random(SHAPE) < 0.3).astype(np.uint8)


def _racer(path, frame_id, author, parent_id, barrier, results):
    """Save once, based on ``parent_id``, released together with the other racer."""
    with AnnotationStore(path) as store:
        mask = _mask(sum(map(ord, author)))
        barrier.wait(timeout=60)
        try:
            version = store.save_mask(frame_id, mask, CLASSES, author, "corrected", parent_id)
            results.put(("saved", author, version.id, None))
        except ConflictError as error:
            results.put(("conflict", author, error.current_id, error.current_author + " | " + str(error)))
        except Exception as error:  # reported, so a broken store fails the test instead of hanging it
            results.put(("error", author, None, repr(error)))


def test_two_processes_saving_on_the_same_parent_exactly_one_wins(store_location):
    path = store_location
    with AnnotationStore(path) as store:
        frame = store.add_frame(np.zeros(SHAPE, np.uint8), "s", 0)
        head = store.save_mask(frame.id, _mask(0), CLASSES, "model", "model", None, model_name="m").id
    for round_ in range(4):
        barrier, results = _CTX.Barrier(2), _CTX.Queue()
        racers = [_CTX.Process(target=_racer, args=(path, frame.id, name, head, barrier, results))
                  for name in (f"alice{round_}", f"bob{round_}")]
        for p in racers:
            p.start()
        outcome = [results.get(timeout=120) for _ in racers]
        for p in racers:
            p.join(timeout=60)
            assert p.exitcode == 0
        saved = [o for o in outcome if o[0] == "saved"]
        refused = [o for o in outcome if o[0] == "conflict"]
        assert len(saved) == 1 and len(refused) == 1, outcome
        _, winner, winner_version, _ = saved[0]
        _, loser, current_id, message = refused[0]
        assert current_id == winner_version
        assert message.startswith(winner + " | ") and winner in message.split(" | ", 1)[1]
        with AnnotationStore(path) as store:
            history = store.history(frame.id)
            assert history[-1].id == winner_version and history[-1].author == winner
            assert history[-1].parent_id == head
            assert loser not in {v.author for v in history}
        head = winner_version


def _persistent_writer(path, frame_id, author, saves, results):
    """Save ``saves`` times, each time based on the version current when read; retry after a conflict."""
    conflicts = 0
    with AnnotationStore(path) as store:
        done = 0
        while done < saves:
            current = store.current(frame_id)
            try:
                version = store.save_mask(frame_id, _mask(done + 7919 * len(author)), CLASSES, author, "corrected",
                                          current.id)
            except ConflictError:
                conflicts += 1
                continue
            results.put(("saved", author, version.id))
            done += 1
    results.put(("done", author, conflicts))


def test_two_processes_saving_in_a_loop_lose_no_update_and_keep_one_line_of_history(store_location):
    path = store_location
    with AnnotationStore(path) as store:
        frame = store.add_frame(np.zeros(SHAPE, np.uint8), "s", 0)
        first = store.save_mask(frame.id, _mask(0), CLASSES, "model", "model", None, model_name="m")
    results = _CTX.Queue()
    saves = 15
    writers = [_CTX.Process(target=_persistent_writer, args=(path, frame.id, name, saves, results))
               for name in ("alice", "bob")]
    for p in writers:
        p.start()
    reported, finished = [], 0
    while finished < 2:
        kind, author, value = results.get(timeout=120)
        if kind == "saved":
            reported.append((author, value))
        else:
            finished += 1
    for p in writers:
        p.join(timeout=60)
        assert p.exitcode == 0
    with AnnotationStore(path) as store:
        history = store.history(frame.id)
    assert len(history) == 1 + 2 * saves
    assert [v.parent_id for v in history[1:]] == [v.id for v in history[:-1]]  # one unbroken line
    stored = {(v.author, v.id) for v in history}
    assert set(reported) <= stored and len(reported) == 2 * saves


def _looping_writer(path, frame_id, connection):
    """Save new masks forever, reporting (version id, mask sha256) after each save has returned."""
    with AnnotationStore(path) as store:
        n = 0
        while True:
            current = store.current(frame_id)
            version = store.save_mask(frame_id, _mask(1000 + n), CLASSES, "writer", "corrected",
                                      current.id if current else None, comment=f"save {n}")
            connection.send((version.id, version.mask_sha256))
            n += 1


def test_a_writer_killed_mid_save_leaves_a_readable_store_with_every_reported_save(store_location):
    path = store_location
    with AnnotationStore(path) as store:
        frame = store.add_frame(np.zeros(SHAPE, np.uint8), "s", 0)
    chooser = random.Random(20240607)
    reported = []
    for attempt in range(4):
        receiver, sender = _CTX.Pipe(duplex=False)
        child = _CTX.Process(target=_looping_writer, args=(path, frame.id, sender))
        child.start()
        sender.close()
        wanted = chooser.randint(3, 25)  # kill after this many confirmed saves, while the next one is under way
        got = 0
        while got < wanted:
            assert receiver.poll(120), "writer stopped reporting"
            reported.append(receiver.recv())
            got += 1
        os.kill(child.pid, signal.SIGKILL)
        child.join(timeout=60)
        assert child.exitcode == -signal.SIGKILL
        while receiver.poll(0):  # saves confirmed between our last read and the kill
            try:
                reported.append(receiver.recv())
            except EOFError:
                break
        receiver.close()
        with AnnotationStore(path) as store:
            assert store.integrity_check() == "ok"
            history = store.history(frame.id)
            by_id = {v.id: v for v in history}
            for version_id, sha in reported:
                assert version_id in by_id, f"confirmed save {version_id} lost after kill {attempt}"
                assert by_id[version_id].mask_sha256 == sha
                assert by_id[version_id].mask.shape == SHAPE  # the bytes decode
            assert [v.parent_id for v in history[1:]] == [v.id for v in history[:-1]]
    assert len(reported) >= 4 * 3
