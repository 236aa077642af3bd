"""The annotation store on a PostgreSQL server: what only the server engine has. The store's semantics are tested on
both engines in test_annotate_store.py, test_annotate_concurrency.py and test_annotate_kill_during_save.py; here:
the throwaway server itself, migrate, the bad-input rules (unreachable host, URL without a database, newer schema),
conflicts between two connections whose transactions overlap, a client killed while it holds a frame's lock, and a
server restart between calls.

The server is conftest.py's ``postgres_cluster`` (initdb in a temporary folder, run by an unprivileged user, a free
port of 127.0.0.1). These tests skip only where PostgreSQL cannot be installed (no binaries and no apt-get), never
in CI."""

from __future__ import annotations

import json
import multiprocessing
import os
import signal
import socket
import threading
import time

import numpy as np
import pytest

from conftest import postgres_skip_reason

from NerveSegLogic.store.database import (AnnotationStore, ConflictError, NotAStoreError, StoreConnectionError,
                                          StoreError, pixel_sha256)
from NerveSegLogic.cli import main
from NerveSegLogic.store.migrate import backup

CLASSES = {1: "nerve", 2: "blood_vessel"}
H, W = 24, 32


def _image(seed, dtype=np.uint8):
    return np.random.default_rng(seed).integers(0, np.iinfo(dtype).max, size=(H, W), dtype=dtype)


def _mask(seed):
    return (np.random.default_rng(seed).random((H, W)) < 0.3).astype(np.uint8) * (1 + seed % 2)


def _closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]  # closed again when this returns: nothing listens there


def test_the_server_tests_never_skip_in_ci(monkeypatch, postgres_cluster):
    """CI must run them: the skip reason is empty in CI whatever is installed, and the server did start."""
    monkeypatch.setenv("CI", "true")
    monkeypatch.setenv("NERVESEG_PG_BINDIR", "/nonexistent")
    monkeypatch.setenv("PATH", "/nonexistent")  # no initdb, no apt-get: still no skip in CI
    assert postgres_skip_reason() == ""
    monkeypatch.delenv("CI")
    assert "no apt-get" in postgres_skip_reason()  # the one case that may skip, outside CI
    import psycopg

    with psycopg.connect(postgres_cluster.url("postgres")) as conn:
        assert conn.execute("SHOW server_version_num").fetchone()[0] >= "130000"
        assert conn.execute("SELECT current_user").fetchone()[0] == "nerveseg"


# ---- migrate ------------------------------------------------------------------------------------------------------

def _fill(store):
    """Frames (uint8 and uint16, geometry-less and with metadata), model / corrected / status / restore / prompt
    versions, an embedding: every kind of row."""
    frames = [store.add_frame(_image(i, np.uint16 if i == 2 else np.uint8), "clip.seq.nrrd", i, subject=f"S{i % 2}",
                              metadata={"i": i}) for i in range(4)]
    for f in frames[:3]:
        v = store.save_mask(f.id, _mask(f.id), CLASSES, "runner", "model", None, model_name="unet",
                            model_sha256="ab" * 32, uncertainty=0.1 * f.id)
        v = store.save_mask(f.id, _mask(f.id + 10), CLASSES, "alice", "corrected", v.id, comment="tightened")
        v = store.set_status(f.id, "accepted", "bob", v.id)
    v = store.restore(frames[0].id, 1, "carol", store.current(frames[0].id).id)
    store.save_mask(frames[3].id, _mask(7), CLASSES, "dora", "prompt", None, prompts={"box": [1, 2, 9, 9]})
    store.save_embedding(frames[1].id, "cd" * 32, np.arange(12, dtype=np.float32).reshape(3, 4))
    return frames


def _everything(store):
    frames = store.frames()
    return {"frames": frames, "images": [store.image(f.id).tobytes() for f in frames],
            "history": {f.id: [(v.id, v.parent_id, v.author, v.created, v.origin, v.status, v.comment,
                                v.uncertainty, v.model_name, v.model_sha256, v.mask_sha256, v.mask.tobytes())
                               for v in store.history(f.id)] for f in frames},
            "prompts": {v.id: store.prompts(v.id) for v in store.summaries()},
            "embedding": store.embedding(frames[1].id, "cd" * 32).tobytes()}


def test_migrate_copies_every_row_with_its_ids_and_checks_counts_and_mask_checksums(tmp_path, postgres_cluster,
                                                                                      capsys):
    db = tmp_path / "project.nsdb"
    with AnnotationStore(db) as sqlite_store:
        _fill(sqlite_store)
        before = _everything(sqlite_store)
    url = postgres_cluster.new_database()
    assert main(["annotate", "migrate", "--from", str(db), "--to", url]) == 0
    out = capsys.readouterr().out
    assert "copied 4 frames" in out and "11 versions" in out and "mask checksums verified" in out
    with AnnotationStore(url) as pg:
        assert pg.engine == "postgresql"
        assert _everything(pg) == before
        assert pg.integrity_check() == "ok"
        # New saves continue after the copied ids (the identity sequences were moved past them).
        frame = pg.add_frame(_image(99), "new", 0)
        assert frame.id == max(f.id for f in before["frames"]) + 1
        head = pg.current(before["frames"][3].id)
        newer = pg.save_mask(frame.id, _mask(3), CLASSES, "eve", "manual", None)
        assert newer.id > max(v[0] for h in before["history"].values() for v in h)
        assert pg.save_mask(head.frame_id, _mask(4), CLASSES, "eve", "corrected", head.id).parent_id == head.id
    # A second migrate into the now non-empty database is refused, naming what it holds; nothing added.
    assert main(["annotate", "migrate", "--from", str(db), "--to", url]) == 1
    assert "already holds 5 frames" in capsys.readouterr().err
    # And back into a file (what backup() of a server store is): equal again.
    copy = tmp_path / "copy.nsdb"
    assert main(["annotate", "migrate", "--from", url, "--to", str(copy)]) == 0
    capsys.readouterr()
    with AnnotationStore(copy) as back, AnnotationStore(url) as pg:
        assert _everything(back)["history"] == _everything(pg)["history"]
        assert back.integrity_check() == "ok"
        snapshot = backup(pg, tmp_path / "backup.nsdb")  # a server store's backup is the same checked copy
        with pytest.raises(FileExistsError):
            backup(pg, snapshot)
    with AnnotationStore(snapshot) as back:
        assert back.engine == "sqlite" and back.frame_count() == 5


def test_a_migrate_that_does_not_check_out_writes_nothing(tmp_path, postgres_cluster, monkeypatch, capsys):
    import NerveSegLogic.store.migrate as migrate_module

    db = tmp_path / "project.nsdb"
    with AnnotationStore(db) as store:
        _fill(store)
    url = postgres_cluster.new_database()
    monkeypatch.setattr(migrate_module, "pixel_sha256", lambda pixels: "0" * 64)  # as if a mask came out wrong
    assert main(["annotate", "migrate", "--from", str(db), "--to", url]) == 1
    err = capsys.readouterr().err.strip()
    assert "did not check out, nothing was written" in err and "\n" not in err
    with AnnotationStore(url) as pg:
        assert pg.frame_count() == 0 and pg.summaries() == []
    # into a new file: the file this call created is removed again
    target = tmp_path / "new.nsdb"
    assert main(["annotate", "migrate", "--from", str(db), "--to", str(target)]) == 1
    capsys.readouterr()
    assert not target.exists() and not (tmp_path / "new.nsdb-wal").exists()


# ---- bad input ----------------------------------------------------------------------------------------------------

def test_an_unreachable_database_is_one_line_naming_the_host_and_nothing_is_written(tmp_path, capsys):
    port = _closed_port()
    url = f"postgresql://alice@127.0.0.1:{port}/nerveseg"
    assert main(["annotate", "status", "--store", url]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"127.0.0.1:{port}" in err and "Connection refused" in err
    assert "Traceback" not in err
    with pytest.raises(StoreConnectionError, match="cannot reach .*no-such-host.invalid"):
        AnnotationStore("postgresql://alice@no-such-host.invalid/nerveseg")
    # migrate from a file to an unreachable server: the source is untouched; from an unreachable server to a
    # file: no file appears
    db = tmp_path / "p.nsdb"
    with AnnotationStore(db) as store:
        store.add_frame(_image(0), "s", 0)
    size = db.stat().st_size
    assert main(["annotate", "migrate", "--from", str(db), "--to", url]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"127.0.0.1:{port}" in err
    assert db.stat().st_size == size
    assert main(["annotate", "migrate", "--from", url, "--to", str(tmp_path / "out.nsdb")]) == 1
    capsys.readouterr()
    assert not (tmp_path / "out.nsdb").exists()


def test_a_url_without_a_database_is_refused_with_an_example(capsys):
    for url in ("postgresql://alice@db.example.org", "postgresql://alice@db.example.org:6543/",
                "postgres://alice@db.example.org"):
        with pytest.raises(StoreError, match=r"names no database.*e\.g\. postgresql://alice@db\.example\.org:\d+/"
                                             r"nerveseg"):
            AnnotationStore(url)
    assert main(["annotate", "queue", "--store", "postgresql://bob:secret@db.example.org"]) == 1
    err = capsys.readouterr().err
    assert "names no database" in err and "secret" not in err  # the password is never echoed
    with pytest.raises(StoreError, match="mysql"):
        AnnotationStore("mysql://alice@db.example.org/nerveseg")


def test_a_server_store_of_a_newer_schema_or_a_foreign_database_is_refused(postgres_cluster, capsys):
    import psycopg

    url = postgres_cluster.new_database()
    with AnnotationStore(url) as store:
        store.add_frame(_image(0), "s", 0)
    with psycopg.connect(url, autocommit=True) as raw:
        raw.execute("INSERT INTO schema_version VALUES (3, '2031-01-01')")
    assert main(["annotate", "status", "--store", url]) == 1
    assert "schema 3; this NerveSeg reads schema 1" in capsys.readouterr().err
    assert main(["annotate", "migrate", "--from", url, "--to", postgres_cluster.new_database()]) == 1
    assert "schema 3" in capsys.readouterr().err
    foreign = postgres_cluster.new_database()
    with psycopg.connect(foreign, autocommit=True) as raw:
        raw.execute("CREATE TABLE patients (name TEXT)")
    with pytest.raises(NotAStoreError, match="patients"):
        AnnotationStore(foreign)


# ---- concurrency inside transactions ------------------------------------------------------------------------------

def _pause_inside_save(store, inside: threading.Event, release: threading.Event):
    """Make ``store``'s next save stop after its version row is inserted, before its transaction commits."""
    real = store._insert_version

    def paused(*args, **kwargs):
        result = real(*args, **kwargs)
        inside.set()
        assert release.wait(30)
        return result

    store._insert_version = paused


def test_two_connections_one_parent_the_second_waits_for_the_first_then_is_refused(postgres_cluster):
    url = postgres_cluster.new_schema()
    with AnnotationStore(url) as first, AnnotationStore(url) as second:
        frame = first.add_frame(_image(1), "s", 0)
        base = first.save_mask(frame.id, _mask(1), CLASSES, "model", "model", None, model_name="m")
        inside, release = threading.Event(), threading.Event()
        _pause_inside_save(first, inside, release)
        results = {}

        def save(store, author, key):
            try:
                results[key] = store.save_mask(frame.id, _mask(len(author)), CLASSES, author, "corrected", base.id)
            except ConflictError as error:
                results[key] = error

        alice = threading.Thread(target=save, args=(first, "alice", "alice"))
        alice.start()
        assert inside.wait(30)  # alice's transaction holds the frame's row lock, her version not yet committed
        bob = threading.Thread(target=save, args=(second, "bob", "bob"))
        bob.start()
        bob.join(1.0)
        assert bob.is_alive()  # bob's save waits for the lock; it did not pass a check against the old head
        release.set()
        alice.join(30)
        bob.join(30)
        assert results["alice"].parent_id == base.id
        refused = results["bob"]
        assert isinstance(refused, ConflictError)
        assert refused.current_id == results["alice"].id and refused.current_author == "alice"
        assert [v.author for v in second.history(frame.id)] == ["model", "alice"]


def test_without_the_row_lock_the_unique_index_still_lets_only_one_win(postgres_cluster, monkeypatch):
    """The backstop: with the lock taken away, both saves pass the check; the second insert of a child of the same
    parent waits on the first's uncommitted index entry and fails when it commits. Two annotators never both win."""
    import psycopg

    from NerveSegLogic.store.postgres import PostgresBackend

    url = postgres_cluster.new_schema()
    monkeypatch.setattr(PostgresBackend, "row_lock", "")
    with AnnotationStore(url) as first, AnnotationStore(url) as second:
        frame = first.add_frame(_image(2), "s", 0)
        base = first.save_mask(frame.id, _mask(2), CLASSES, "model", "model", None, model_name="m")
        inside, release = threading.Event(), threading.Event()
        _pause_inside_save(first, inside, release)
        results = {}
        alice = threading.Thread(target=lambda: results.setdefault("alice", first.save_mask(
            frame.id, _mask(5), CLASSES, "alice", "corrected", base.id)))
        alice.start()
        assert inside.wait(30)

        def bob():
            try:
                results["bob"] = second.save_mask(frame.id, _mask(6), CLASSES, "bob", "corrected", base.id)
            except Exception as error:  # noqa: BLE001 - the test inspects it
                results["bob"] = error

        racer = threading.Thread(target=bob)
        racer.start()
        racer.join(1.0)
        assert racer.is_alive()
        release.set()
        alice.join(30)
        racer.join(30)
        assert isinstance(results["bob"], psycopg.errors.UniqueViolation)
        assert [v.author for v in second.history(frame.id)] == ["model", "alice"]


def _save_and_hang(url, frame_id, parent_id, ready):
    """Child: start a save and stop inside its transaction (row lock held, version inserted), then wait to be killed."""
    with AnnotationStore(url) as store:
        def hang(*args, **kwargs):
            result = AnnotationStore._insert_version(store, *args, **kwargs)
            ready.set()
            time.sleep(120)
            return result

        store._insert_version = hang
        store.save_mask(frame_id, np.ones((H, W), np.uint8), CLASSES, "killed", "corrected", parent_id)


def test_a_client_killed_while_it_holds_a_frames_lock_leaves_nothing_and_blocks_no_one(postgres_cluster):
    url = postgres_cluster.new_schema()
    with AnnotationStore(url) as store:
        frame = store.add_frame(_image(3), "s", 0)
        base = store.save_mask(frame.id, _mask(3), CLASSES, "model", "model", None, model_name="m")
    context = multiprocessing.get_context("fork")
    ready = context.Event()
    child = context.Process(target=_save_and_hang, args=(url, frame.id, base.id, ready), daemon=True)
    child.start()
    assert ready.wait(60)
    os.kill(child.pid, signal.SIGKILL)
    child.join(10)
    assert child.exitcode == -signal.SIGKILL
    started = time.monotonic()
    with AnnotationStore(url) as store:
        mine = store.save_mask(frame.id, _mask(8), CLASSES, "alice", "corrected", base.id)  # same parent: free again
        waited = time.monotonic() - started
        history = store.history(frame.id)
        assert [v.author for v in history] == ["model", "alice"] and mine.parent_id == base.id
        assert store.integrity_check() == "ok"
    assert waited < 10  # the server rolled the dead client's transaction back at once, not at a timeout


def test_a_server_restart_between_calls_costs_no_save_and_the_store_connects_again(postgres_cluster):
    url = postgres_cluster.new_schema()
    with AnnotationStore(url) as store:
        frame = store.add_frame(_image(4), "s", 0)
        saved = store.save_mask(frame.id, _mask(4), CLASSES, "alice", "manual", None)
        postgres_cluster.restart("immediate")  # as a crash: recovery from the WAL on start
        assert store.current(frame.id).id == saved.id  # read: connected again, the acknowledged save is there
        postgres_cluster.restart("fast")
        after = store.save_mask(frame.id, _mask(5), CLASSES, "alice", "corrected", saved.id)  # a save, too
        assert [v.id for v in store.history(frame.id)] == [saved.id, after.id]
        assert pixel_sha256(store.version(after.id).mask) == after.mask_sha256


# ---- the same store through the commands and the data set reader --------------------------------------------------

def test_the_commands_and_the_dataset_reader_take_a_url(tmp_path, postgres_cluster, capsys):
    import cv2

    from NerveSegLogic.datasets.store_reader import read_store

    folder = tmp_path / "S07"
    folder.mkdir()
    for i in range(3):
        assert cv2.imwrite(str(folder / f"f{i}.png"), _image(20 + i))
    url = postgres_cluster.new_schema()
    assert main(["annotate", "import", str(folder), "--store", url, "--subject", "S07"]) == 0
    with AnnotationStore(url) as store:
        ids = [f.id for f in store.frames()]
        for i in ids:
            store.save_mask(i, _mask(i), CLASSES, "runner", "model", None, model_name="unet")
    capsys.readouterr()
    assert main(["annotate", "accept", "--store", url, str(ids[0]), str(ids[1]), "--author", "alice"]) == 0
    capsys.readouterr()
    assert main(["annotate", "status", "--store", url, "--json"]) == 0
    status = json.loads(capsys.readouterr().out)
    assert status["frames"] == 3 and status["by_status"]["accepted"] == 2 and status["store"].startswith(
        "postgresql://")
    with AnnotationStore(url) as store:  # labelled by its database's name where a file store gives its file name
        assert store.path.name == url.split("/")[-1].split("?")[0] and str(store.path) == url
    dataset = read_store(url)
    try:
        assert len(dataset) == 2 and dataset.fingerprint()["path"].startswith("postgresql://")
        assert dataset[0].mask.shape == (H, W)
    finally:
        dataset.close()
    from NerveSegLogic.datasets.readers import open_dataset

    opened = open_dataset(url)  # what train / evaluate / calibrate --data URL read
    try:
        assert len(opened) == 2 and np.array_equal(opened[0].mask, _mask(ids[0]))
    finally:
        opened.close()
    assert main(["export", "--store", url, "--format", "masks", "--out", str(tmp_path / "cohort")]) == 0
    assert len(list((tmp_path / "cohort").rglob("*.png"))) == 4  # two accepted frames: images and masks


def test_the_panels_store_field_hands_a_url_to_the_store_whole():
    """The panel's store field is a path parameter: Path() collapses a URL's '//', the controller restores it."""
    from pathlib import Path

    from NerveSegLogic.store.location import store_location
    from NerveSegLogic.annotate.review.controller import ReviewController

    opened = []

    class Stop(Exception):
        pass

    def factory(path, author, order):
        opened.append(path)
        raise Stop

    controller = ReviewController(session_factory=factory)
    with pytest.raises(Stop):
        controller.open(Path("postgresql://alice@db.example.org:5432/nerveseg"), "alice")
    assert opened == ["postgresql://alice@db.example.org:5432/nerveseg"]
    assert store_location("/data/project.db") == "/data/project.db"
    assert store_location("postgres:/a@h/db") == "postgres://a@h/db"
