"""The ``nerveseg export`` command: options, the last line it prints, its errors."""

import argparse
import json
import subprocess
import sys

import pytest

from NerveSegLogic.store.database import AnnotationStore
from NerveSegLogic.commands import export as export_command
from NerveSegLogic.datasets.readers import open_dataset
from NerveSegLogic.datasets.synthetic import fill_store


def _run(argv):
    parser = argparse.ArgumentParser(prog="nerveseg")
    export_command.register(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["export", "--no-progress", *argv])
    return args.func(args)


@pytest.fixture(scope="module")
def db(tmp_path_factory):
    path = tmp_path_factory.mktemp("store") / "annotations.db"
    with AnnotationStore(path) as store:
        fill_store(store, n_frames=10, n_subjects=5, height=210, width=290, statuses=("accepted", "draft"),
                   classes=((1, "nerve"), (2, "artery"), (3, "vein")))
    return path


def test_export_prints_the_folder_and_frames_per_split_on_its_last_line(db, tmp_path, capsys):
    out = tmp_path / "cohort"
    assert _run(["--store", str(db), "--format", "coco", "--out", str(out), "--split", "60,20,20", "--seed", "1"]) == 0
    last = capsys.readouterr().out.strip().splitlines()[-1]
    manifest = json.loads((out / "manifest.json").read_text())
    counts = manifest["splits"]
    assert sum(counts.values()) == 5  # only the accepted frames
    assert last == (f"exported 5 frames to {out} (train {counts['train']}, val {counts['val']}, "
                    f"test {counts['test']})")


def test_status_map_and_classes_options_reach_the_export(db, tmp_path, capsys):
    out = tmp_path / "merged"
    code = _run(["--store", str(db), "--format", "masks", "--out", str(out), "--status", "draft,accepted",
                 "--map", "artery=vessel,vein=vessel", "--classes", "nerve,vessel"])
    assert code == 0
    data = open_dataset(out)
    assert len(data) == 10
    assert [c.key for c in data.classes] == ["nerve", "blood_vessel"]


def test_deidentify_defaults_the_salt_beside_the_store_and_blanks_outside_the_sector(db, tmp_path, capsys):
    out = tmp_path / "shared"
    assert _run(["--store", str(db), "--format", "labelme", "--out", str(out), "--deidentify"]) == 0
    printed = capsys.readouterr().out
    assert "sector check picture" in printed
    assert (db.parent / (db.name + ".salt")).is_file()
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["deidentification"]["sector"] == "blank"
    assert all(f["subject"].startswith("sub-") for f in manifest["frames"])


def test_an_existing_folder_without_force_fails_with_a_message_and_exit_code_1(db, tmp_path, capsys):
    out = tmp_path / "taken"
    out.mkdir()
    assert _run(["--store", str(db), "--format", "nnunet", "--out", str(out)]) == 1
    assert "already exists" in capsys.readouterr().err
    assert _run(["--store", str(db), "--format", "nnunet", "--out", str(out), "--force"]) == 0


def test_a_missing_store_is_an_error_not_a_new_empty_store(tmp_path, capsys):
    missing = tmp_path / "nope.db"
    assert _run(["--store", str(missing), "--format", "coco", "--out", str(tmp_path / "o")]) == 1
    assert "no such annotation store" in capsys.readouterr().err
    assert not missing.exists()


def test_bad_split_and_map_options_are_explained(db, tmp_path, capsys):
    assert _run(["--store", str(db), "--format", "coco", "--out", str(tmp_path / "o"), "--split", "a,b"]) == 1
    assert "--split" in capsys.readouterr().err
    assert _run(["--store", str(db), "--format", "coco", "--out", str(tmp_path / "o"), "--map", "artery"]) == 1
    assert "FROM=TO" in capsys.readouterr().err


def test_converting_a_labelled_folder_with_data_option(tmp_path, capsys):
    from NerveSegLogic.resources import sample_dir

    out = tmp_path / "sample-nnunet"
    assert _run(["--data", str(sample_dir()), "--format", "nnunet", "--out", str(out)]) == 0
    assert capsys.readouterr().out.strip().splitlines()[-1].startswith(f"exported 24 frames to {out}")


def test_registering_the_command_imports_nothing_heavy():
    code = ("import argparse, sys\n"
            "from NerveSegLogic.commands import export\n"
            "export.register(argparse.ArgumentParser().add_subparsers())\n"
            "heavy = [m for m in ('torch', 'cv2', 'slicer', 'pycocotools', 'slicerio') if m in sys.modules]\n"
            "print(','.join(heavy))\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == ""
