"""Export safety and provenance: all-or-nothing writing, --force, checksums, subject splits, selection, classes."""

import json
from collections import defaultdict
from pathlib import Path

import numpy as np
import pytest

from NerveSegLogic.store.database import AnnotationStore
from NerveSegLogic.datasets.export import (ExportError, ExportFrame, ExportOptions, export_cohort, frames_from_store)
from NerveSegLogic.datasets.manifest import sha256_file, verify_manifest
from NerveSegLogic.datasets.readers import open_dataset
from NerveSegLogic.datasets.splits import parse_fractions
from NerveSegLogic.datasets.synthetic import fill_store

H, W = 210, 290


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    path = tmp_path_factory.mktemp("store") / "annotations.db"
    with AnnotationStore(path) as opened:
        # 24 frames of 12 subjects over 3 regions; statuses cycle accepted, draft, rejected, accepted
        fill_store(opened, n_frames=24, n_subjects=12, height=H, width=W,
                   statuses=("accepted", "draft", "rejected", "accepted"),
                   classes=((1, "nerve"), (2, "artery")))
        yield opened


def _options(fmt="masks", **kw):
    return ExportOptions(format=fmt, progress=False, **kw)


def _no_leftovers(parent: Path, name: str):
    return [p.name for p in parent.iterdir() if p.name.startswith(f".{name}.")]


@pytest.mark.parametrize("error", [RuntimeError("disk on fire"), KeyboardInterrupt()])
def test_an_export_interrupted_mid_way_leaves_no_half_data_set(store, tmp_path, error):
    frames = frames_from_store(store, ["accepted"])
    out = tmp_path / "cohort"

    def fail_on_third(n, frame):
        if n == 3:
            raise error

    with pytest.raises(type(error)):
        export_cohort(frames, out, _options(), on_frame=fail_on_third)
    assert not out.exists()
    assert _no_leftovers(tmp_path, "cohort") == []
    assert list(tmp_path.iterdir()) == []


def test_an_existing_target_is_refused_without_force_and_replaced_with_it(store, tmp_path):
    frames = frames_from_store(store, ["accepted"])
    out = tmp_path / "cohort"
    out.mkdir()
    (out / "precious.txt").write_text("keep me")
    with pytest.raises(ExportError, match="already exists.*--force"):
        export_cohort(frames, out, _options())
    assert (out / "precious.txt").read_text() == "keep me"
    result = export_cohort(frames, out, _options(force=True))
    assert not (out / "precious.txt").exists()
    assert (out / "manifest.json").is_file() and sum(result.counts.values()) == len(frames)
    assert _no_leftovers(tmp_path, "cohort") == []


def test_a_failed_forced_export_keeps_the_previous_data_set(store, tmp_path):
    frames = frames_from_store(store, ["accepted"])
    out = tmp_path / "cohort"
    export_cohort(frames, out, _options())
    before = sha256_file(out / "manifest.json")

    def fail(n, frame):
        raise RuntimeError("stop")

    with pytest.raises(RuntimeError):
        export_cohort(frames, out, _options(force=True), on_frame=fail)
    assert sha256_file(out / "manifest.json") == before
    assert verify_manifest(out) == []


@pytest.mark.parametrize("fmt", ["nnunet", "coco", "labelme", "masks", "slicer"])
def test_manifest_lists_every_file_with_a_matching_sha256_and_the_provenance_of_every_frame(store, tmp_path, fmt):
    frames = frames_from_store(store, ["accepted"])
    out = tmp_path / fmt
    export_cohort(frames, out, _options(fmt))
    manifest = json.loads((out / "manifest.json").read_text())
    on_disk = sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file())
    assert sorted(f["path"] for f in manifest["files"]) == [p for p in on_disk if p != "manifest.json"]
    for entry in manifest["files"]:
        assert sha256_file(out / entry["path"]) == entry["sha256"]
    assert verify_manifest(out) == []
    assert "README.md" in {f["path"] for f in manifest["files"]}
    by_id = {f.frame_id: f for f in frames}
    assert sorted(f["frame_id"] for f in manifest["frames"]) == sorted(by_id)
    for entry in manifest["frames"]:
        frame = by_id[entry["frame_id"]]
        assert entry["version_id"] == frame.version_id and entry["version_id"] == store.current(frame.frame_id).id
        assert entry["annotator"] == "annotator-a" and entry["status"] == "accepted"
        assert entry["model_name"] == "smistad-unet" and entry["model_sha256"] == "ab" * 32
        assert entry["files"] and all((out / f).is_file() for f in entry["files"])
    # a changed byte is found
    victim = out / manifest["files"][0]["path"]
    victim.write_bytes(victim.read_bytes() + b"x")
    assert verify_manifest(out) == [f"{manifest['files'][0]['path']}: sha256 differs from the manifest"]


def test_splits_are_by_subject_reproducible_from_the_seed_and_stratified_by_region(store, tmp_path):
    frames = frames_from_store(store, ["accepted", "draft", "rejected"])
    assignments = []
    for run, seed in enumerate((5, 5, 6)):
        out = tmp_path / f"run{run}"
        export_cohort(frames, out, _options(statuses=("accepted", "draft", "rejected"), seed=seed,
                                            fractions=parse_fractions("50,25,25")))
        manifest = json.loads((out / "manifest.json").read_text())
        assignments.append({f["frame_id"]: f["split"] for f in manifest["frames"]})
        splits_of_subject = defaultdict(set)
        regions_of_split = defaultdict(set)
        for f in manifest["frames"]:
            splits_of_subject[f["subject"]].add(f["split"])
            regions_of_split[f["split"]].add(f["metadata"]["region"])
        assert all(len(s) == 1 for s in splits_of_subject.values()), "a subject is in two splits"
        assert len(splits_of_subject) == 12
        for split in ("train", "val", "test"):  # 12 subjects, 4 per region: every region in every split
            assert regions_of_split[split] == {"femoral", "axillary", "interscalene"}, (split, regions_of_split)
    assert assignments[0] == assignments[1]
    assert assignments[0] != assignments[2]


def test_status_selection_defaults_to_accepted_and_widens_on_request(store, tmp_path):
    accepted = frames_from_store(store, ["accepted"])
    wider = frames_from_store(store, ["draft", "accepted"])
    assert len(accepted) == 12 and len(wider) == 18
    assert {f.status for f in wider} == {"draft", "accepted"}
    assert ExportOptions(format="coco").statuses == ("accepted",)


def test_classes_are_merged_and_selected_on_the_way_out(store, tmp_path):
    frames = frames_from_store(store, ["accepted"])
    out = tmp_path / "merged"
    result = export_cohort(frames, out, _options(class_map={"artery": "vessel"}, classes=["vessel", "nerve"]))
    assert [(c.label, c.key) for c in result.classes] == [(1, "blood_vessel"), (2, "nerve")]
    data = open_dataset(out)
    manifest = json.loads((out / "manifest.json").read_text())
    frame_of = {f["case"]: f["frame_id"] for f in manifest["frames"]}
    for sample in data:
        source = store.current(frame_of[sample.name]).mask  # 1 nerve, 2 artery
        expected = np.select([source == 2, source == 1], [1, 2], 0).astype(np.uint8)
        np.testing.assert_array_equal(sample.mask, expected)
    only = export_cohort(frames, tmp_path / "nerve-only", _options(classes=["nerve"]))
    assert [c.key for c in only.classes] == ["nerve"]
    sample = open_dataset(tmp_path / "nerve-only")[0]
    assert set(np.unique(sample.mask)) <= {0, 1}


def test_unknown_class_name_and_bad_mask_values_are_refused_before_anything_is_left(tmp_path):
    frame = ExportFrame(frame_id=1, load=lambda: (np.zeros((8, 8), np.uint8), np.full((8, 8), 3, np.uint8)),
                        classes={1: "nerve"}, subject="a")
    with pytest.raises(ExportError, match="unknown class 'plexus'"):
        export_cohort([frame], tmp_path / "x", _options(classes=["plexus"]))
    with pytest.raises(ExportError, match=r"frame 1 .*mask values \[3\] are not in the version's classes"):
        export_cohort([frame], tmp_path / "x", _options())
    assert list(tmp_path.iterdir()) == []


def test_dataset_card_counts_splits_and_classes_and_credits_usgra_seg(tmp_path):
    from NerveSegLogic.datasets.export import frames_from_dataset
    from NerveSegLogic.resources import sample_dir

    frames = frames_from_dataset(open_dataset(sample_dir()))
    for i, frame in enumerate(frames):
        frame.subject = f"volunteer-{i // 4}"
    out = tmp_path / "card"
    result = export_cohort(frames, out, _options("coco", fractions=parse_fractions("4,1,1")))
    card = (out / "README.md").read_text()
    for split, count in result.counts.items():
        assert f"| {split} | {count} |" in card
    assert "nerve frames / regions" in card and "blood_vessel frames / regions" in card
    assert "| train | 16 | 4 | 16 / " in card  # every usgra-seg frame shows a nerve
    assert "0.1 x 0.1 mm" in card
    assert "CC BY 4.0" in card and "Timm Kandaouroff" in card and "https://github.com/tmkand/usgra-seg" in card
    assert "Mindray TE7" in card
    assert "## How to cite" in card
