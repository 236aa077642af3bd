"""De-identification: the sector is found on frames with burned-in text, and nothing identifying leaves."""

import json
import os
import stat

import numpy as np
import pytest

from NerveSegLogic.store.database import AnnotationStore
from NerveSegLogic.datasets.deidentify import (METADATA_ALLOW_LIST, SectorNotFound, allowed_metadata, apply_sector,
                                               find_sector, load_or_create_salt, pseudonym)
from NerveSegLogic.datasets.export import (ExportError, ExportOptions, check_picture_path, export_cohort,
                                           frames_from_store)
from NerveSegLogic.datasets.readers import open_dataset
from NerveSegLogic.datasets.synthetic import BURNED_IN_TEXT, sector_mask, synthetic_frame, text_pixels

H, W = 420, 580


@pytest.mark.parametrize("shape", ["fan", "linear"])
def test_sector_is_found_on_a_frame_with_burned_in_text_outside_it(shape):
    image, _ = synthetic_frame(np.random.default_rng(7), H, W, shape=shape)
    text = text_pixels(H, W, shape)
    assert image[text].max() == 255  # the text really is on the frame
    sector = find_sector(image)
    truth = sector_mask(H, W, shape)
    iou = (sector.mask & truth).sum() / (sector.mask | truth).sum()
    assert iou > 0.9, iou
    assert not (sector.mask & text).any(), "burned-in text inside the found sector"

    blanked, _, offset = apply_sector(image, np.zeros_like(image), sector, "blank")
    assert blanked.shape == image.shape and offset == (0, 0)
    assert blanked[text].max() == 0
    np.testing.assert_array_equal(blanked[sector.mask], image[sector.mask])

    mask = (truth * 3).astype(np.uint8)
    cropped, cropped_mask, (x, y) = apply_sector(image, mask, sector, "crop")
    bx, by, bw, bh = sector.box
    assert (x, y) == (bx, by) and cropped.shape == cropped_mask.shape == (bh, bw)
    np.testing.assert_array_equal(cropped_mask, mask[by:by + bh, bx:bx + bw])
    assert cropped.max() > 0 and not text[by:by + bh, bx:bx + bw][cropped > 0].any()


def test_a_frame_without_a_sector_is_reported_not_guessed():
    with pytest.raises(SectorNotFound, match="no bright region"):
        find_sector(np.zeros((100, 120), np.uint8))
    speck = np.zeros((100, 120), np.uint8)
    speck[10:20, 10:20] = 200
    with pytest.raises(SectorNotFound, match="covers only"):
        find_sector(speck)


def test_pseudonyms_are_keyed_by_the_salt_and_the_salt_file_is_created_private(tmp_path):
    salt_path = tmp_path / "secret" / "salt"
    salt = load_or_create_salt(salt_path)
    assert len(salt) == 32 and load_or_create_salt(salt_path) == salt
    assert stat.S_IMODE(os.stat(salt_path).st_mode) == 0o600
    assert pseudonym("Jane Doe", salt) == pseudonym("Jane Doe", salt)
    assert pseudonym("Jane Doe", salt) != pseudonym("Jane Doe", b"another salt of enough length")
    assert pseudonym("Jane Doe", salt).startswith("sub-") and "Jane" not in pseudonym("Jane Doe", salt)
    (tmp_path / "short").write_bytes(b"abc")
    with pytest.raises(ValueError, match="at least 16"):
        load_or_create_salt(tmp_path / "short")


def test_metadata_pass_the_allow_list_only():
    kept = allowed_metadata({"region": "femoral", "scanner": "S1", "patient_name": "Jane", "acquired": "2024-01-01",
                             "operator": "Dr X", "depth_mm": 40})
    assert kept == {"region": "femoral", "scanner": "S1", "depth_mm": 40}
    assert "patient_name" not in METADATA_ALLOW_LIST


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    from NerveSegLogic.datasets.synthetic import fill_store

    path = tmp_path_factory.mktemp("store") / "annotations.db"
    with AnnotationStore(path) as opened:
        fill_store(opened, n_frames=8, n_subjects=4, height=H, width=W)
        yield opened


def _all_bytes(folder):
    return {p: p.read_bytes() for p in folder.rglob("*") if p.is_file()}


@pytest.mark.parametrize("fmt", ["labelme", "slicer", "coco", "nnunet", "masks"])
def test_deidentified_export_carries_no_subject_no_disallowed_metadata_no_dates_and_not_the_salt(store, tmp_path,
                                                                                                 fmt):
    frames = frames_from_store(store)
    salt_file = tmp_path / "keys" / "export.salt"
    out = tmp_path / "share" / "cohort"
    result = export_cohort(frames, out, ExportOptions(format=fmt, deidentify=True, salt_file=salt_file,
                                                      sector="crop", progress=False))
    salt = salt_file.read_bytes()
    # subject names, the metadata values and keys that are not allowed, the acquisition date, the source path
    forbidden = [b"Subject Name", b"Patient", b"Dr Example", b"patient_name", b'"operator"', b'"acquired"',
                 b"2024-05-01", b"/scans", salt, salt.hex().encode()]
    for record in store.frames():
        forbidden.append(record.created[:19].encode())  # when the frame was stored
        forbidden.append(record.sha256.encode())  # the original image hash would link back to the store
    for path, content in _all_bytes(out).items():
        for word in forbidden:
            assert word not in content, f"{word[:20]!r} found in {path.relative_to(out)}"
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["deidentified"] is True
    for entry in manifest["frames"]:
        assert entry["subject"].startswith("sub-") and entry["source"].startswith("rec-")
        assert set(entry["metadata"]) <= set(METADATA_ALLOW_LIST)
        assert entry["sector"]["mode"] == "crop"
    # the burned-in text is gone from the images: read back, no frame has bright pixels in its top text rows
    for sample in open_dataset(out):
        assert sample.image.shape[1] < W  # cropped to the sector
    # the check picture lies beside the export, not inside, and the salt stayed outside
    assert result.check_pictures == [check_picture_path(out)] and check_picture_path(out).is_file()
    assert check_picture_path(out).parent == out.parent
    assert salt_file.parent not in out.parents and not any(p.name == "export.salt" for p in out.rglob("*"))


def test_blanking_removes_the_burned_in_text_pixels_from_exported_images(store, tmp_path):
    frames = frames_from_store(store)
    out = tmp_path / "blank"
    export_cohort(frames, out, ExportOptions(format="masks", deidentify=True, salt_file=tmp_path / "salt",
                                             sector="blank", progress=False))
    text = text_pixels(H, W, "fan") | text_pixels(H, W, "linear")
    for sample in open_dataset(out):
        assert sample.image.shape == (H, W)
        assert sample.image[text].max() == 0, sample.name


def test_pseudonyms_are_stable_across_exports_with_the_same_salt(store, tmp_path):
    frames = frames_from_store(store)
    subjects = []
    for run in range(2):
        out = tmp_path / f"run{run}"
        export_cohort(frames, out, ExportOptions(format="coco", deidentify=True, salt_file=tmp_path / "salt",
                                                 progress=False))
        manifest = json.loads((out / "manifest.json").read_text())
        subjects.append({f["frame_id"]: f["subject"] for f in manifest["frames"]})
    assert subjects[0] == subjects[1]
    assert len(set(subjects[0].values())) == 4


def test_a_salt_file_inside_the_export_and_a_missing_salt_are_refused(store, tmp_path):
    frames = frames_from_store(store)
    out = tmp_path / "cohort"
    with pytest.raises(ExportError, match="must not be inside the export"):
        export_cohort(frames, out, ExportOptions(format="coco", deidentify=True, salt_file=out / "salt",
                                                 progress=False))
    with pytest.raises(ExportError, match="needs a salt file"):
        export_cohort(frames, out, ExportOptions(format="coco", deidentify=True, progress=False))
    assert not out.exists()


def test_burned_in_text_constants_are_what_the_frames_show():
    # guards the forbidden-word list above: the synthetic subject text is a name and a date
    assert "JANE" in BURNED_IN_TEXT[0] and "1957" in BURNED_IN_TEXT[0]
