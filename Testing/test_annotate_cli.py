"""``nerveseg annotate``: import, prelabel, queue, status, accept/reject, correct, history, restore, agreement."""

from __future__ import annotations

import argparse
import json
import subprocess
import sys

import cv2
import numpy as np
import pytest

from NerveSegLogic.store.database import AnnotationStore
from NerveSegLogic.commands import annotate as command


def nerveseg(*argv):
    """Run ``nerveseg annotate ...`` in-process through the command's own parser; returns the exit code."""
    parser = argparse.ArgumentParser(prog="nerveseg")
    command.register(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["annotate", *argv])
    return args.func(args)


@pytest.fixture
def project(tmp_path):
    folder = tmp_path / "S05"
    folder.mkdir()
    for i in range(3):
        image = np.full((24, 32), 40 + 60 * i, np.uint8)
        image[8:16, 10:20] = 255 - 40 * i
        cv2.imwrite(str(folder / f"f{i}.png"), image)
    return tmp_path / "project.nsdb", folder


def test_import_status_correct_accept_history_restore(project, capsys, monkeypatch):
    db, folder = project
    monkeypatch.setenv("NERVESEG_AUTHOR", "dana")
    assert nerveseg("import", str(folder), "--store", str(db), "--spacing", "0.1", "0.1") == 0
    assert "3 new" in capsys.readouterr().out

    assert nerveseg("status", "--store", str(db), "--json") == 0
    status = json.loads(capsys.readouterr().out)
    assert {"frames", "by_status", "by_annotator"} <= set(status)
    assert status["frames"] == 3 and status["by_status"]["unlabelled"] == 3 and status["by_annotator"] == {}
    assert status["by_subject"] == {"S05": 3}

    assert nerveseg("correct", "--store", str(db), "1", "--class", "1=nerve",
                    "paint", "--center", "5", "5", "--radius", "2", "--label", "1") == 0
    assert "13 pixels changed" in capsys.readouterr().out  # a radius-2 disc
    assert nerveseg("correct", "--store", str(db), "1", "polygon", "--points", "20,2", "28,2", "28,6",
                    "--label", "1") == 0
    assert nerveseg("accept", "--store", str(db), "1", "2", "--author", "erin") == 1  # frame 2 cannot be
    captured = capsys.readouterr()
    assert "version 3 accepted by erin" in captured.out and "frame 2: no mask yet" in captured.err

    with AnnotationStore(db) as store:
        history = store.history(1)
        assert [(v.author, v.origin, v.status) for v in history] == [
            ("dana", "manual", "draft"), ("dana", "corrected", "draft"), ("erin", "corrected", "accepted")]
        assert store.frame(1).geometry.spacing == (0.1, 0.1, 1.0)

    assert nerveseg("restore", "--store", str(db), "1", "1") == 0
    assert nerveseg("history", "--store", str(db), "1") == 0
    out = capsys.readouterr().out
    assert "restored version 1" in out and "erin" in out and "dana" in out
    assert nerveseg("history", "--store", str(db), "1", "--json") == 0
    versions = json.loads(capsys.readouterr().out)
    assert [v["id"] for v in versions] == [1, 2, 3, 4] and versions[3]["parent_id"] == 3

    assert nerveseg("status", "--store", str(db), "--json") == 0
    status = json.loads(capsys.readouterr().out)
    # The restore brought back version 1 as it was (a draft), so nothing is accepted now.
    assert status["by_status"]["draft"] == 1 and status["by_status"]["accepted"] == 0
    assert status["by_status"]["unlabelled"] == 2
    assert status["by_annotator"]["dana"]["frames"] == 1 and status["by_annotator"]["dana"]["versions"] == 3
    assert status["by_annotator"]["dana"]["accepted"] == 0
    assert status["by_annotator"]["erin"] == {"frames": 1, "versions": 1, "accepted": 0, "rejected": 0}

    assert nerveseg("queue", "--store", str(db), "--json") == 0
    queue = json.loads(capsys.readouterr().out)
    assert [e["frame_id"] for e in queue] == [1, 2, 3] and queue[1]["status"] == "unlabelled"

    assert nerveseg("agreement", "--store", str(db)) == 0
    assert "dana vs erin" in capsys.readouterr().out


def test_bad_input_and_conflicts_give_clear_errors_and_exit_codes(project, capsys, monkeypatch):
    db, folder = project
    nerveseg("import", str(folder), "--store", str(db))
    assert nerveseg("correct", "--store", str(db), "2", "--class", "1=nerve", "paint", "--center", "1", "1",
                    "--radius", "1", "--label", "1") == 0
    assert nerveseg("restore", "--store", str(db), "2", "99") == 2
    assert "not a version of frame 2" in capsys.readouterr().err
    assert nerveseg("history", "--store", str(db), "42") == 2
    assert "no frame 42" in capsys.readouterr().err
    assert nerveseg("correct", "--store", str(db), "2", "paint", "--center", "1", "1", "--radius", "1",
                    "--label", "4") == 1
    assert "label values [4]" in capsys.readouterr().err
    bad = db.parent / "notes.txt"
    bad.write_text("hello" * 50)
    assert nerveseg("status", "--store", str(bad)) == 1
    assert "not a NerveSeg annotation store" in capsys.readouterr().err
    # Someone saves between this command's read and its write: refused, exit code 3, naming them.
    real_current = AnnotationStore.current

    def current_then_someone_saves(store, frame_id):
        seen = real_current(store, frame_id)
        store.set_status(frame_id, "needs-review", "frank", seen.id)
        return seen

    monkeypatch.setattr(AnnotationStore, "current", current_then_someone_saves)
    assert nerveseg("correct", "--store", str(db), "2", "erase", "--center", "1", "1", "--radius", "1") == 3
    assert "frank saved version" in capsys.readouterr().err


def test_prelabel_command_runs_the_registered_model_and_records_it(project, capsys, tmp_path):
    import torch

    from NerveSegLogic.models import registry
    from NerveSegLogic.models.weights import sha256_file

    torch.manual_seed(0)
    weights = tmp_path / "smistad-unet-test.safetensors"
    registry.save_weights(registry.build_from_card(registry.card("smistad-unet")), weights)
    db, folder = project
    nerveseg("import", str(folder), "--store", str(db))
    assert nerveseg("prelabel", "--store", str(db), "--model", "smistad-unet", "--weights", str(weights),
                    "--author", "runner") == 0
    assert "3 frames pre-labelled by smistad-unet" in capsys.readouterr().out
    card_sha = sha256_file(registry.card("smistad-unet").path)
    with AnnotationStore(db) as store:
        for frame in store.frames():
            v = store.current(frame.id)
            assert (v.origin, v.model_name, v.model_sha256, v.author) == ("model", "smistad-unet", card_sha, "runner")
            assert v.uncertainty is not None and 0 <= v.uncertainty <= np.log(3) + 1e-6
            assert sha256_file(weights) in v.comment
    assert nerveseg("queue", "--store", str(db)) == 0
    assert "draft" in capsys.readouterr().out


def test_registering_the_command_imports_nothing_heavy():
    code = ("import argparse, sys; from NerveSegLogic.commands import annotate; "
            "annotate.register(argparse.ArgumentParser().add_subparsers()); "
            "print(sorted(m for m in ('torch', 'cv2', 'slicer', 'sqlite3', 'nrrd') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
