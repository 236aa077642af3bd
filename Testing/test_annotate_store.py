"""The annotation store: versions, history, restore, append-only, conflicts, dedup, bad files.

The store's semantics are tested on both engines (the ``store_location`` fixture of conftest.py: an SQLite file, then
a database on a throwaway PostgreSQL server); what only one engine has (SQLite's file checks, WAL) once."""

from __future__ import annotations

import sqlite3

import numpy as np
import pytest

from NerveSegLogic.store.database import (AnnotationStore, ConflictError, NotAStoreError, STATUSES, ORIGINS,
                                          pixel_sha256)
from NerveSegLogic.frame import ImageGeometry
from NerveSegLogic.store.migrate import backup

CLASSES = {1: "nerve", 2: "blood_vessel"}


@pytest.fixture
def store(store_location):
    with AnnotationStore(store_location) as s:
        yield s


def _raw_connection(store):
    """A plain driver connection to the store's database, as another tool would open it: (connection, placeholder,
    the driver's IntegrityError)."""
    if store.engine == "sqlite":
        return sqlite3.connect(str(store.path)), "?", sqlite3.IntegrityError
    import psycopg

    return psycopg.connect(str(store.path), autocommit=True), "%s", psycopg.IntegrityError


def _image(seed=0, shape=(24, 32), dtype=np.uint8):
    rng = np.random.default_rng(seed)
    return rng.integers(0, np.iinfo(dtype).max, size=shape, dtype=dtype)


def _mask(shape=(24, 32), box=(2, 2, 6, 6), label=1):
    m = np.zeros(shape, dtype=np.uint8)
    r0, c0, r1, c1 = box
    m[r0:r1, c0:c1] = label
    return m


def test_constants_match_the_api():
    assert STATUSES == ("draft", "accepted", "rejected", "needs-review")
    assert ORIGINS[:4] == ("model", "manual", "corrected", "prompt")  # later origins are added after these


def test_frame_round_trip_keeps_pixels_geometry_and_metadata(store):
    geometry = ImageGeometry(spacing=(0.1, 0.2, 1.0), origin=(5.0, -3.0, 0.0),
                             directions=((-1.0, 0.0, 0.0), (0.0, -1.0, 0.0), (0.0, 0.0, 1.0)))
    image16 = _image(1, dtype=np.uint16)
    record = store.add_frame(image16, "scan.seq.nrrd", 7, subject="S01", geometry=geometry,
                             metadata={"region": "femoral", "scanner": "Mindray TE7"})
    again = store.frame(record.id)
    assert again == record
    assert (again.width, again.height, again.index, again.subject) == (32, 24, 7, "S01")
    assert again.geometry == geometry
    assert again.metadata == {"region": "femoral", "scanner": "Mindray TE7"}
    assert again.sha256 == pixel_sha256(image16)
    restored = store.image(record.id)
    assert restored.dtype == np.uint16 and np.array_equal(restored, image16)
    assert again.created.endswith("+00:00")  # UTC


def test_same_pixels_are_stored_once(store):
    image = _image(2)
    first = store.add_frame(image, "folder_a", 0, subject="A")
    second = store.add_frame(image.copy(), "folder_b", 5, subject="B")
    assert second.id == first.id and second.source == "folder_a"
    # Equal bytes in another shape are another image (the hash covers the shape).
    reshaped = store.add_frame(image.reshape(32, 24).copy(), "folder_b", 6)
    assert reshaped.id != first.id
    assert store.frame_count() == 2


def test_every_save_is_a_new_version_and_history_lists_them_oldest_first(store):
    frame = store.add_frame(_image(), "s", 0)
    v1 = store.save_mask(frame.id, _mask(), CLASSES, "model-runner", "model", None, model_name="smistad-unet",
                         model_sha256="ab" * 32, uncertainty=0.25)
    v2 = store.save_mask(frame.id, _mask(box=(3, 3, 9, 9)), CLASSES, "alice", "corrected", v1.id,
                         comment="nerve was too small")
    v3 = store.set_status(frame.id, "accepted", "bob", v2.id, comment="looks right")
    history = store.history(frame.id)
    assert [v.id for v in history] == [v1.id, v2.id, v3.id]
    assert [v.parent_id for v in history] == [None, v1.id, v2.id]
    assert [(v.author, v.origin, v.status) for v in history] == [
        ("model-runner", "model", "draft"), ("alice", "corrected", "draft"), ("bob", "corrected", "accepted")]
    assert history[0].model_name == "smistad-unet" and history[0].model_sha256 == "ab" * 32
    assert history[0].uncertainty == pytest.approx(0.25)
    assert history[1].comment == "nerve was too small"
    assert np.array_equal(history[2].mask, history[1].mask)  # a status change keeps the mask
    assert store.current(frame.id).id == v3.id
    assert history[0].created < history[1].created < history[2].created
    assert history[1].classes == CLASSES


def test_restore_makes_a_new_version_with_the_old_mask(store):
    frame = store.add_frame(_image(), "s", 0)
    first = store.save_mask(frame.id, _mask(), CLASSES, "alice", "manual", None)
    second = store.save_mask(frame.id, _mask(box=(10, 10, 20, 20), label=2), CLASSES, "bob", "corrected", first.id)
    restored = store.restore(frame.id, first.id, "carol", second.id)
    assert restored.id > second.id and restored.parent_id == second.id
    assert np.array_equal(restored.mask, first.mask) and restored.author == "carol"
    assert restored.comment == f"restored version {first.id}"
    assert [v.id for v in store.history(frame.id)] == [first.id, second.id, restored.id]
    assert np.array_equal(store.version(second.id).mask, second.mask)  # nothing earlier changed


def test_stale_save_is_refused_naming_who_saved_the_newer_version(store):
    frame = store.add_frame(_image(), "s", 0)
    base = store.save_mask(frame.id, _mask(), CLASSES, "model", "model", None, model_name="m")
    theirs = store.save_mask(frame.id, _mask(box=(1, 1, 4, 4)), CLASSES, "alice", "corrected", base.id)
    mine = _mask(box=(5, 5, 8, 8))
    with pytest.raises(ConflictError) as caught:
        store.save_mask(frame.id, mine, CLASSES, "bob", "corrected", base.id)
    error = caught.value
    assert error.current_author == "alice" and error.current_id == theirs.id
    assert "alice" in str(error) and theirs.created in str(error)
    assert np.array_equal(error.mask, mine)  # the refused edit is handed back, not lost
    assert [v.id for v in store.history(frame.id)] == [base.id, theirs.id]
    with pytest.raises(ConflictError):  # a second "first save" is stale too
        store.save_mask(frame.id, mine, CLASSES, "bob", "manual", None)
    with pytest.raises(ConflictError):
        store.set_status(frame.id, "accepted", "bob", base.id)


def test_history_cannot_be_updated_or_deleted_even_with_raw_sql(store):
    frame = store.add_frame(_image(), "s", 0)
    version = store.save_mask(frame.id, _mask(), CLASSES, "alice", "manual", None)
    store.save_embedding(frame.id, "ab" * 32, np.ones((2, 3)))
    raw, mark, integrity_error = _raw_connection(store)
    statements = ["UPDATE versions SET author = 'mallory'", "DELETE FROM versions", "UPDATE frames SET subject = 'x'",
                  "DELETE FROM frames", "DELETE FROM masks", "UPDATE masks SET width = 1", "DELETE FROM meta",
                  "UPDATE schema_version SET version = 9", "UPDATE embeddings SET shape = '[6]'"]
    if store.engine == "postgresql":  # TRUNCATE skips DELETE's row triggers; a statement trigger refuses it
        statements += ["TRUNCATE versions CASCADE", "TRUNCATE frames CASCADE"]
    try:
        for statement in statements:
            with pytest.raises(integrity_error, match="append-only|never updated"):
                raw.execute(statement)
        # Two children of one parent would fork the history: the unique index refuses it.
        with pytest.raises(integrity_error):
            raw.execute("INSERT INTO versions (frame_id, parent_id, mask_sha256, classes, author, created, origin, "
                        "status) SELECT frame_id, parent_id, mask_sha256, classes, 'x', created, origin, status "
                        f"FROM versions WHERE id = {mark}", (version.id,))
    finally:
        raw.close()
    assert store.current(frame.id).author == "alice"
    assert store.integrity_check() == "ok"


def test_bad_masks_and_fields_are_refused_with_a_clear_error(store):
    frame = store.add_frame(_image(), "s", 0)
    with pytest.raises(ValueError, match="differs from frame"):
        store.save_mask(frame.id, np.zeros((5, 5), np.uint8), CLASSES, "a", "manual", None)
    with pytest.raises(ValueError, match=r"label values \[7\]"):
        store.save_mask(frame.id, _mask(label=7), CLASSES, "a", "manual", None)
    with pytest.raises(ValueError, match="origin"):
        store.save_mask(frame.id, _mask(), CLASSES, "a", "guessed", None)
    with pytest.raises(ValueError, match="status"):
        store.save_mask(frame.id, _mask(), CLASSES, "a", "manual", None, status="done")
    with pytest.raises(ValueError, match="model_name"):
        store.save_mask(frame.id, _mask(), CLASSES, "a", "model", None)
    with pytest.raises(ValueError, match="author"):
        store.save_mask(frame.id, _mask(), CLASSES, " ", "manual", None)
    with pytest.raises(KeyError, match="no frame 999"):
        store.save_mask(999, _mask(), CLASSES, "a", "manual", None)
    with pytest.raises(ValueError, match="grey"):
        store.add_frame(np.zeros((4, 4, 3), np.uint8), "rgb.png", 0)
    with pytest.raises(ValueError, match="has no mask yet"):
        store.set_status(frame.id, "accepted", "a", None)
    assert store.history(frame.id) == []


def test_frames_filter_on_the_current_status_and_unlabelled(store):
    a = store.add_frame(_image(10), "s", 0, subject="S1")
    b = store.add_frame(_image(11), "s", 1, subject="S2")
    c = store.add_frame(_image(12), "s", 2, subject="S1")
    va = store.save_mask(a.id, _mask(), CLASSES, "x", "manual", None)
    store.set_status(a.id, "accepted", "y", va.id)
    store.save_mask(b.id, _mask(), CLASSES, "x", "manual", None, status="needs-review")
    assert [f.id for f in store.frames(statuses=["accepted"])] == [a.id]
    assert [f.id for f in store.frames(statuses=["draft"])] == []  # a's first version was draft; current counts
    assert [f.id for f in store.frames(statuses=["unlabelled"])] == [c.id]
    assert [f.id for f in store.frames(statuses=["needs-review", "unlabelled"])] == [b.id, c.id]
    assert [f.id for f in store.frames(subject="S1")] == [a.id, c.id]
    assert [f.id for f in store.frames()] == [a.id, b.id, c.id]
    with pytest.raises(ValueError, match="status"):
        store.frames(statuses=["finished"])


def test_opening_a_file_that_is_not_a_store_fails_clearly(tmp_path):
    text = tmp_path / "notes.nsdb"
    text.write_text("not a database at all " * 100)
    with pytest.raises(NotAStoreError, match="not a NerveSeg annotation store"):
        AnnotationStore(text)
    other = tmp_path / "other.sqlite"
    connection = sqlite3.connect(str(other))
    connection.execute("CREATE TABLE patients (name TEXT)")
    connection.commit()
    connection.close()
    with pytest.raises(NotAStoreError, match="patients"):
        AnnotationStore(other)
    assert text.read_text().startswith("not a database")  # untouched


def test_store_is_in_wal_mode_with_full_sync_and_reopens(tmp_path):
    path = tmp_path / "p.nsdb"
    with AnnotationStore(path) as s:
        frame = s.add_frame(_image(), "s", 0)
        s.save_mask(frame.id, _mask(), CLASSES, "alice", "manual", None)
        assert s._conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert s._conn.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL
    with AnnotationStore(path) as s:
        assert s.integrity_check() == "ok"
        assert s.current(frame.id).author == "alice"
        copy = backup(s, tmp_path / "copy.nsdb")
        with pytest.raises(FileExistsError):
            backup(s, copy)
    with AnnotationStore(copy) as c:
        assert c.current(frame.id).author == "alice" and c.integrity_check() == "ok"


def test_a_store_of_a_newer_schema_is_refused_with_its_version(store_location):
    with AnnotationStore(store_location) as s:
        frame = s.add_frame(_image(), "s", 0)
    with AnnotationStore(store_location) as s:  # a newer NerveSeg upgraded it (inserting is not rewriting history)
        raw, mark, _ = _raw_connection(s)
        try:
            raw.execute(f"INSERT INTO schema_version VALUES ({mark}, {mark})", (2, "2031-01-01T00:00:00+00:00"))
            if s.engine == "sqlite":
                raw.commit()
        finally:
            raw.close()
    with pytest.raises(NotAStoreError, match=r"schema 2; this NerveSeg reads schema 1"):
        AnnotationStore(store_location)
    assert frame.id == 1


def test_ids_order_and_values_read_back_alike_on_both_engines(store):
    """What differs between engines stays inside the backend: ids from 1, text times, None for NULL, floats kept
    to the last bit, bytes of uint16 images."""
    frame = store.add_frame(_image(3, dtype=np.uint16), "s", -1, subject=None, metadata={"ü": "ß"})
    v = store.save_mask(frame.id, _mask(), CLASSES, "zoë", "model", None, model_name="m", uncertainty=1 / 3)
    assert (frame.id, v.id) == (1, 1)
    again = store.version(v.id)
    assert again.uncertainty == 1 / 3 and again.comment is None and again.parent_id is None
    assert store.frame(frame.id).metadata == {"ü": "ß"} and store.frame(frame.id).index == -1
    assert store.image(frame.id).dtype == np.uint16
    assert [f.id for f in store.frames(statuses=[])] == []
    assert store.summaries(current_only=True)[0].author == "zoë"


def test_a_store_made_before_an_origin_existed_takes_it_once_opened(store_location, monkeypatch):
    """ORIGINS is the one definition: a store whose versions table predates an origin is widened when opened (a
    CHECK that only grows: no stored row becomes invalid), on both engines."""
    import NerveSegLogic.store.database as store_module

    newest = ORIGINS[-1]
    with monkeypatch.context() as patch:
        patch.setattr(store_module, "_SCHEMA", store_module._SCHEMA.replace(f", '{newest}'", ""))
        patch.setattr(store_module, "ORIGINS", ORIGINS[:-1])
        with AnnotationStore(store_location) as old:
            frame = old.add_frame(_image(), "s", 0)
            first = old.save_mask(frame.id, _mask(), CLASSES, "alice", "manual", None)
            with old._read() as conn:
                assert newest not in old._backend.origins_allowed(conn)
    with AnnotationStore(store_location) as s:
        with s._read() as conn:
            assert list(s._backend.origins_allowed(conn)) == list(ORIGINS)
        raw, mark, integrity_error = _raw_connection(s)
        try:
            with pytest.raises(integrity_error):  # the CHECK is still there for what is no origin at all
                raw.execute("INSERT INTO versions (frame_id, parent_id, mask_sha256, classes, author, created, "
                            "origin, status) SELECT frame_id, id, mask_sha256, classes, 'x', created, 'guessed', "
                            f"status FROM versions WHERE id = {mark}", (first.id,))
        finally:
            raw.close()
        assert s.set_status(frame.id, "accepted", "bob", first.id).origin == "manual"
        assert s.integrity_check() == "ok"
