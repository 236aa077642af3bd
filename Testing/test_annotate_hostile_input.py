"""``nerveseg annotate`` on hostile numbers and failing disks: one error line, a non-zero exit, nothing saved; a
correction that changes nothing saves nothing and leaves the status alone."""

from __future__ import annotations

import argparse

import cv2
import numpy as np
import pytest

from NerveSegLogic.store import database as store_module
from NerveSegLogic.store.database import AnnotationStore, StoreError
from NerveSegLogic.cli import main
from NerveSegLogic.commands import annotate as command


def nerveseg(*argv):
    parser = argparse.ArgumentParser(prog="nerveseg")
    command.register(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["annotate", *argv])
    return args.func(args)


@pytest.fixture
def accepted(tmp_path):
    """A store with one 24 x 32 frame whose mask (a nerve square) was accepted."""
    db = tmp_path / "project.nsdb"
    with AnnotationStore(db) as store:
        frame = store.add_frame(np.full((24, 32), 90, np.uint8), "scan", 0)
        mask = np.zeros((24, 32), np.uint8)
        mask[5:10, 5:10] = 1
        draft = store.save_mask(frame.id, mask, {1: "nerve"}, "dana", "manual", None)
        store.set_status(frame.id, "accepted", "erin", draft.id)
    return db, frame.id


def versions_and_status(db, frame_id):
    with AnnotationStore(db) as store:
        current = store.current(frame_id)
        return len(store.history(frame_id)), current.status


@pytest.mark.parametrize("op", [
    ["paint", "--center", "5", "5", "--radius", "nan", "--label", "1"],
    ["paint", "--center", "nan", "5", "--radius", "3", "--label", "1"],
    ["paint", "--center", "5", "5", "--radius", "inf", "--label", "1"],
    ["erase", "--center", "5", "5", "--radius", "-2"],
    ["polygon", "--points", "nan,10", "20,10", "20,20", "--label", "1"],
    ["polygon", "--points", "1e300,10", "20,10", "20,20", "--label", "1"],
    ["paint", "--center", "5000", "5000", "--radius", "6", "--label", "1"],  # far outside the frame
])
def test_bad_numbers_fail_with_one_line_and_save_nothing(accepted, capsys, op):
    db, frame_id = accepted
    before = versions_and_status(db, frame_id)
    assert nerveseg("correct", "--store", str(db), str(frame_id), *op) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err
    assert versions_and_status(db, frame_id) == before == (2, "accepted")


def test_a_correction_that_changes_nothing_saves_nothing_and_keeps_accepted(accepted, capsys):
    db, frame_id = accepted
    assert nerveseg("correct", "--store", str(db), str(frame_id),
                    "paint", "--center", "7", "7", "--radius", "1", "--label", "1") == 0
    assert "nothing saved" in capsys.readouterr().out
    assert versions_and_status(db, frame_id) == (2, "accepted")


def test_a_real_change_is_still_saved_as_a_draft(accepted, capsys):
    db, frame_id = accepted
    assert nerveseg("correct", "--store", str(db), str(frame_id),
                    "paint", "--center", "20", "15", "--radius", "2", "--label", "1") == 0
    assert versions_and_status(db, frame_id) == (3, "draft")


def test_a_store_on_read_only_media_opens_read_only_and_says_so_when_written(accepted, capsys, monkeypatch):
    db, frame_id = accepted
    monkeypatch.setattr(store_module, "_writable", lambda path: False)  # what os.access says on read-only media
    with AnnotationStore(db) as store:
        assert store.read_only
        assert store.current(frame_id).status == "accepted"
        with pytest.raises(StoreError, match="read-only"):
            store.set_status(frame_id, "rejected", "erin", store.current(frame_id).id)
    assert nerveseg("status", "--store", str(db)) == 0
    capsys.readouterr()
    assert nerveseg("accept", "--store", str(db), str(frame_id)) == 1
    err = capsys.readouterr().err
    assert "read-only" in err and "not a NerveSeg annotation store" not in err


def test_a_full_disk_during_a_save_is_one_error_line_and_exit_1(accepted, capsys, monkeypatch):
    db, frame_id = accepted
    original = AnnotationStore._open

    def open_then_fill(self):  # the store cannot grow by a single page: SQLite's own "disk is full" path
        original(self)
        pages = self._conn.execute("PRAGMA page_count").fetchone()[0]
        self._conn.execute(f"PRAGMA max_page_count = {pages}")

    folder = db.parent / "S01"
    folder.mkdir()
    noise = np.random.default_rng(0).integers(0, 256, (200, 200), dtype=np.uint8)  # ~40 KB that cannot fit
    assert cv2.imwrite(str(folder / "a.png"), noise)
    monkeypatch.setattr(AnnotationStore, "_open", open_then_fill)
    code = main(["annotate", "import", str(folder), "--store", str(db)])
    err = capsys.readouterr().err.strip()
    assert code == 1 and "full" in err
    assert [line for line in err.splitlines() if line.startswith("error: ")]
    assert "Traceback" not in err
    monkeypatch.setattr(AnnotationStore, "_open", original)
    with AnnotationStore(db) as store:
        assert store.frame_count() == 1


def test_a_damaged_sqlite_file_is_named_as_such_not_as_a_foreign_file(tmp_path, capsys):
    db = tmp_path / "broken.nsdb"
    db.write_bytes(b"SQLite format 3\x00" + b"\xff" * 200)  # SQLite's header, then garbage
    assert main(["annotate", "status", "--store", str(db)]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err and str(db) in err
    assert "could not be opened" in err and "not a NerveSeg annotation store" not in err


def test_import_goes_on_past_a_corrupt_image_names_it_and_exits_1(tmp_path, capsys):
    folder = tmp_path / "S02"
    folder.mkdir()
    for name, value in (("f1.png", 10), ("f3.png", 30)):
        assert cv2.imwrite(str(folder / name), np.full((20, 30), value, np.uint8))
    (folder / "f2.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 30)  # cut short
    db = tmp_path / "p.nsdb"
    assert nerveseg("import", str(folder), "--store", str(db)) == 1
    captured = capsys.readouterr()
    assert "skipped" in captured.err and "f2.png" in captured.err
    assert "2 frames read, 2 new" in captured.err and "1 file(s) could not be read" in captured.err
    with AnnotationStore(db) as store:
        assert [r.metadata["file"] for r in store.frames()] == ["f1.png", "f3.png"]
