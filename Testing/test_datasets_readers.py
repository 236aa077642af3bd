"""Readers: every format opens a tiny fixture written here, and every broken fixture fails naming its file."""

import base64
import io
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from NerveSegLogic.datasets.readers import DatasetError, Sample, detect_format, open_dataset
from NerveSegLogic.resources import sample_dir

H, W = 24, 32


def _image(seed=0, shape=(H, W)):
    return np.random.default_rng(seed).integers(0, 256, shape, dtype=np.uint8)


def _mask():
    mask = np.zeros((H, W), np.uint8)
    mask[4:10, 5:14] = 1
    mask[14:20, 18:28] = 2
    return mask


def _save_palette(path, mask):
    pil = Image.frombytes("P", (mask.shape[1], mask.shape[0]), mask.tobytes())
    pil.putpalette([0, 0, 0, 255, 255, 0, 255, 0, 0] + [0] * (256 * 3 - 9))
    pil.save(path)


def _folder(root: Path, n=3, rgb=False):
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    for i in range(n):
        image = _image(i)
        if rgb:
            Image.fromarray(np.dstack([image] * 3)).save(root / "images" / f"{i:04d}.png")
        else:
            Image.fromarray(image).save(root / "images" / f"{i:04d}.png")
        _save_palette(root / "masks" / f"{i:04d}.png", _mask())
    return root


# -- folder (usgra-seg layout) ------------------------------------------------------------------------------------

def test_folder_reads_palette_masks_and_rgb_images_as_grey_with_usgra_classes(tmp_path):
    data = open_dataset(_folder(tmp_path / "set", rgb=True))
    assert data.format == "folder"
    assert [c.key for c in data.classes] == ["nerve", "blood_vessel"]
    assert [c.label for c in data.classes] == [1, 2]
    assert data.names() == ["0000", "0001", "0002"]
    sample = data[1]
    assert isinstance(sample, Sample)
    assert sample.image.shape == (H, W) and sample.image.dtype == np.uint8
    np.testing.assert_array_equal(sample.image, _image(1))  # grey replicated in RGB comes back unchanged
    np.testing.assert_array_equal(sample.mask, _mask())
    assert sample.spacing is None and sample.subject is None


def test_folder_classes_json_beside_the_data_wins_over_the_default(tmp_path):
    root = _folder(tmp_path / "set")
    (root / "classes.json").write_text(json.dumps({"labels": {"1": "artery", "2": "nerve"}, "spacing_mm": [0.2, 0.3]}))
    data = open_dataset(root)
    assert [(c.label, c.key) for c in data.classes] == [(1, "artery"), (2, "nerve")]
    assert data[0].spacing == (0.2, 0.3)


def test_mapping_merges_and_drops_labels_and_numbers_classes_contiguously(tmp_path):
    root = _folder(tmp_path / "set")
    data = open_dataset(root, mapping={1: None, 2: "vein"})
    assert [(c.label, c.key) for c in data.classes] == [(1, "vein")]
    expected = np.where(_mask() == 2, 1, 0).astype(np.uint8)
    np.testing.assert_array_equal(data[0].mask, expected)


def test_folder_missing_mask_names_the_image_file(tmp_path):
    root = _folder(tmp_path / "set")
    (root / "masks" / "0001.png").unlink()
    with pytest.raises(DatasetError, match=r"0001\.png: missing partner file"):
        open_dataset(root)


def test_folder_mask_without_image_names_the_mask_file(tmp_path):
    root = _folder(tmp_path / "set")
    (root / "images" / "0002.png").unlink()
    with pytest.raises(DatasetError, match=r"masks/0002\.png: missing partner file"):
        open_dataset(root)


def test_folder_size_mismatch_names_the_mask_when_read(tmp_path):
    root = _folder(tmp_path / "set")
    _save_palette(root / "masks" / "0001.png", np.zeros((H + 1, W), np.uint8))
    data = open_dataset(root)  # pairing is fine; sizes are checked when the item is read
    data[0]
    with pytest.raises(DatasetError, match=r"masks/0001\.png: mask size 32x25 .* does not match"):
        data[1]


def test_folder_unknown_label_value_lists_the_mapping(tmp_path):
    root = _folder(tmp_path / "set")
    bad = _mask()
    bad[0, 0] = 7
    _save_palette(root / "masks" / "0002.png", bad)
    data = open_dataset(root)
    with pytest.raises(DatasetError, match=r"masks/0002\.png: unknown label value\(s\) \[7\].*1 -> nerve, "
                                           r"2 -> blood_vessel"):
        data[2]


def test_validate_reads_everything_and_reports_every_bad_file(tmp_path):
    root = _folder(tmp_path / "set", n=4)
    bad = _mask()
    bad[0, 0] = 9
    _save_palette(root / "masks" / "0001.png", bad)
    _save_palette(root / "masks" / "0003.png", bad)
    data = open_dataset(root)
    with pytest.raises(DatasetError) as error:
        data.validate()
    assert "2 of 4 frames" in str(error.value)
    assert "0001.png" in str(error.value) and "0003.png" in str(error.value)


def test_colour_coded_rgb_masks_are_refused_with_the_file_name(tmp_path):
    root = _folder(tmp_path / "set", n=1)
    colour = np.zeros((H, W, 3), np.uint8)
    colour[2:5, 2:5] = (255, 0, 0)
    Image.fromarray(colour).save(root / "masks" / "0000.png")
    with pytest.raises(DatasetError, match=r"0000\.png: mask is a colour image"):
        open_dataset(root)[0]


def test_unreadable_image_file_is_named(tmp_path):
    root = _folder(tmp_path / "set", n=1)
    (root / "images" / "0000.png").write_bytes(b"not a png")
    with pytest.raises(DatasetError, match=r"images/0000\.png: unreadable"):
        open_dataset(root)[0]


def test_split_folders_are_read_together_with_the_split_in_metadata(tmp_path):
    _folder(tmp_path / "set" / "train", n=2)
    _folder(tmp_path / "set" / "test", n=1)
    data = open_dataset(tmp_path / "set")
    assert [s.metadata["split"] for s in data] == ["train", "train", "test"]
    assert len(open_dataset(tmp_path / "set", split="test")) == 1


def test_bundled_usgra_seg_sample_reads_24_real_pairs_with_nerve_in_every_mask():
    data = open_dataset(sample_dir())
    assert len(data) == 24
    assert [c.key for c in data.classes] == ["nerve", "blood_vessel"]
    data.validate()
    for sample in data:
        assert sample.image.ndim == 2 and sample.image.dtype == np.uint8
        assert sample.mask.shape == sample.image.shape
        assert (sample.mask == 1).any(), sample.name  # usgra-seg: a nerve in every image
        assert set(np.unique(sample.mask)) <= {0, 1, 2}
    assert data[0].spacing == (0.1, 0.1)  # nominal spacing from sample.json


# -- kaggle ------------------------------------------------------------------------------------------------------

def _kaggle(root: Path):
    root.mkdir(parents=True)
    for subject, image_no in ((1, 1), (1, 2), (2, 1)):
        Image.fromarray(_image(subject * 10 + image_no)).save(root / f"{subject}_{image_no}.tif")
        Image.fromarray((_mask() == 1).astype(np.uint8) * 255).save(root / f"{subject}_{image_no}_mask.tif")
    return root


def test_kaggle_pairs_read_0_255_masks_as_nerve_with_subject_from_the_name(tmp_path):
    data = open_dataset(_kaggle(tmp_path / "kaggle"))
    assert data.format == "kaggle"
    assert [c.key for c in data.classes] == ["nerve"]
    assert data.names() == ["1_1", "1_2", "2_1"]
    assert data.subjects() == ["1", "1", "2"]
    np.testing.assert_array_equal(data[2].mask, (_mask() == 1).astype(np.uint8))
    np.testing.assert_array_equal(data[0].image, _image(11))


def test_kaggle_image_without_mask_names_the_image(tmp_path):
    root = _kaggle(tmp_path / "kaggle")
    (root / "2_1_mask.tif").unlink()
    with pytest.raises(DatasetError, match=r"2_1\.tif: missing partner file"):
        open_dataset(root, format="kaggle")


# -- nnU-Net -----------------------------------------------------------------------------------------------------

def _nnunet(root: Path, labels=None):
    (root / "imagesTr").mkdir(parents=True)
    (root / "labelsTr").mkdir()
    for i in range(2):
        Image.fromarray(_image(i)).save(root / "imagesTr" / f"case_{i:03d}_0000.png")
        Image.fromarray(_mask()).save(root / "labelsTr" / f"case_{i:03d}.png")
    (root / "dataset.json").write_text(json.dumps({
        "channel_names": {"0": "US"}, "labels": labels or {"background": 0, "nerve": 1, "blood_vessel": 2},
        "numTraining": 2, "file_ending": ".png"}))
    return root


def test_nnunet_reads_cases_with_classes_from_dataset_json(tmp_path):
    data = open_dataset(_nnunet(tmp_path / "Dataset001_X"))
    assert data.format == "nnunet"
    assert [c.key for c in data.classes] == ["nerve", "blood_vessel"]
    assert data.names() == ["case_000", "case_001"]
    np.testing.assert_array_equal(data[1].mask, _mask())
    assert data[0].metadata["split"] == "train"


def test_nnunet_missing_label_names_the_image(tmp_path):
    root = _nnunet(tmp_path / "d")
    (root / "labelsTr" / "case_001.png").unlink()
    with pytest.raises(DatasetError, match=r"case_001_0000\.png: missing partner file"):
        open_dataset(root)


def test_nnunet_unknown_class_name_in_dataset_json_is_named(tmp_path):
    root = _nnunet(tmp_path / "d", labels={"background": 0, "thing": 1, "blood_vessel": 2})
    with pytest.raises(DatasetError, match=r"dataset\.json field 'labels'.*unknown class 'thing'"):
        open_dataset(root)


# -- COCO --------------------------------------------------------------------------------------------------------

def _coco(root: Path, categories=None):
    from pycocotools import mask as mask_utils

    (root / "images").mkdir(parents=True)
    Image.fromarray(_image(3)).save(root / "images" / "a.png")
    rle = mask_utils.encode(np.asfortranarray((_mask() == 2).astype(np.uint8)))
    content = {
        "images": [{"id": 7, "file_name": "a.png", "width": W, "height": H}],
        "annotations": [
            # polygon of the nerve rectangle, pixel corners so pycocotools fills exactly rows 4..9, cols 5..13
            {"id": 1, "image_id": 7, "category_id": 3, "iscrowd": 0,
             "segmentation": [[5, 4, 14, 4, 14, 10, 5, 10]]},
            {"id": 2, "image_id": 7, "category_id": 5, "iscrowd": 0,
             "segmentation": {"size": [H, W], "counts": rle["counts"].decode("ascii")}},
        ],
        "categories": categories or [{"id": 3, "name": "Nerve"}, {"id": 5, "name": "artery"}],
    }
    (root / "annotations.json").write_text(json.dumps(content))
    return root


def test_coco_polygons_and_rle_are_rasterised_to_class_labels(tmp_path):
    data = open_dataset(_coco(tmp_path / "coco"))
    assert data.format == "coco"
    assert [(c.label, c.key) for c in data.classes] == [(1, "nerve"), (2, "artery")]
    assert data.names() == ["a"]
    np.testing.assert_array_equal(data[0].mask, _mask())
    np.testing.assert_array_equal(data[0].image, _image(3))


def test_coco_mapping_merges_categories_by_name(tmp_path):
    root = _coco(tmp_path / "coco")
    data = open_dataset(root / "annotations.json", mapping={"Nerve": "nerve", "artery": "blood_vessel"})
    assert [c.key for c in data.classes] == ["nerve", "blood_vessel"]


def test_coco_unknown_category_name_is_named(tmp_path):
    root = _coco(tmp_path / "coco", categories=[{"id": 3, "name": "Nerve"}, {"id": 5, "name": "blob"}])
    with pytest.raises(DatasetError, match=r"annotations\.json field 'categories'.*class name 'blob'"):
        open_dataset(root)


def test_coco_missing_image_names_the_json_and_field(tmp_path):
    root = _coco(tmp_path / "coco")
    (root / "images" / "a.png").unlink()
    with pytest.raises(DatasetError, match=r"annotations\.json: missing partner file: images entry id 7 field "
                                           r"'file_name' 'a\.png'"):
        open_dataset(root)


def test_coco_declared_size_mismatch_names_the_json(tmp_path):
    root = _coco(tmp_path / "coco")
    Image.fromarray(_image(3, (H, W + 2))).save(root / "images" / "a.png")
    with pytest.raises(DatasetError, match=r"annotations\.json: images entry for a\.png says width x height 32x24"):
        open_dataset(root)[0]


# -- Labelme -----------------------------------------------------------------------------------------------------

def _labelme(root: Path, label="nerve", image_path="pics/f1.png"):
    (root / "pics").mkdir(parents=True)
    Image.fromarray(_image(5)).save(root / "pics" / "f1.png")
    region = (_mask() == 2).astype(np.uint8)[14:20, 18:28] * 255
    buffer = io.BytesIO()
    Image.fromarray(region).save(buffer, format="PNG")
    content = {"version": "5.5.0", "flags": {}, "imagePath": image_path, "imageData": None,
               "imageHeight": H, "imageWidth": W, "shapes": [
                   {"label": label, "shape_type": "polygon", "points": [[5, 4], [13, 4], [13, 9], [5, 9]],
                    "group_id": None, "flags": {}},
                   {"label": "vessel", "shape_type": "mask", "points": [[18, 14], [27, 19]],
                    "mask": base64.b64encode(buffer.getvalue()).decode("ascii"), "group_id": None, "flags": {}},
                   {"label": "nerve", "shape_type": "point", "points": [[1, 1]], "group_id": None, "flags": {}},
               ]}
    (root / "f1.json").write_text(json.dumps(content))
    return root


def test_labelme_polygons_and_mask_shapes_are_painted_with_image_relative_to_json(tmp_path):
    data = open_dataset(_labelme(tmp_path / "lm"))
    assert data.format == "labelme"
    assert [c.key for c in data.classes] == ["nerve", "blood_vessel"]
    np.testing.assert_array_equal(data[0].mask, _mask())
    np.testing.assert_array_equal(data[0].image, _image(5))


def test_labelme_unknown_label_is_named_with_the_mapping_hint(tmp_path):
    root = _labelme(tmp_path / "lm", label="plexus?")
    with pytest.raises(DatasetError, match=r"f1\.json field .shapes.*class name .plexus\?. \(pass mapping"):
        open_dataset(root)


def test_labelme_missing_image_names_the_json(tmp_path):
    root = _labelme(tmp_path / "lm", image_path="pics/absent.png")
    with pytest.raises(DatasetError, match=r"f1\.json: missing partner file: field 'imagePath' 'pics/absent\.png'"):
        open_dataset(root)


# -- Slicer ------------------------------------------------------------------------------------------------------

def _slicer_pair(folder: Path, stem: str, images: np.ndarray, masks: np.ndarray, crop=None):
    """A volume (i, j, k) = frames along k, and a segmentation cropped to ``crop`` (i0, j0) .. end, as Slicer does."""
    import slicerio

    folder.mkdir(parents=True, exist_ok=True)
    spacing = np.diag([0.2, 0.3, 1.0])
    ijk = np.eye(4)
    ijk[:3, :3] = spacing
    ijk[:3, 3] = (10.0, 20.0, 0.0)
    slicerio.write_volume(str(folder / f"{stem}.nrrd"),
                          {"voxels": np.transpose(images, (2, 1, 0)), "ijkToLPS": ijk, "spaceDimension": 3})
    seg_voxels = np.transpose(masks, (2, 1, 0))
    seg_ijk = ijk.copy()
    if crop:
        i0, j0 = crop
        seg_voxels = seg_voxels[i0:, j0:, :]
        seg_ijk[:3, 3] = ijk[:3, 3] + spacing @ np.array([i0, j0, 0])
    slicerio.write_segmentation(str(folder / f"{stem}.seg.nrrd"), {
        "voxels": np.ascontiguousarray(seg_voxels), "ijkToLPS": seg_ijk,
        "segments": [{"id": "S1", "name": "nerve", "labelValue": 1, "layer": 0, "color": [1, 1, 0]},
                     {"id": "S2", "name": "Segment_2", "labelValue": 2, "layer": 0, "color": [1, 0, 0],
                      "terminology": {"contextName": "x", "category": ["SCT", "85756007", "Tissue"],
                                      "type": ["SCT", "51114001", "Artery"]}}]})


def test_slicer_segmentation_cropped_to_its_extent_is_placed_on_the_volume(tmp_path):
    _slicer_pair(tmp_path / "sl", "scan", _image(8)[np.newaxis], _mask()[np.newaxis], crop=(3, 2))
    data = open_dataset(tmp_path / "sl")
    assert data.format == "slicer"
    # the unnamed segment is recognised by its terminology type (Artery)
    assert [c.key for c in data.classes] == ["nerve", "artery"]
    assert data.names() == ["scan"]
    np.testing.assert_array_equal(data[0].image, _image(8))
    np.testing.assert_array_equal(data[0].mask, _mask())
    assert data[0].spacing == pytest.approx((0.2, 0.3))


def test_slicer_2d_plus_t_stack_gives_one_frame_per_slice(tmp_path):
    images = np.stack([_image(i) for i in range(3)])
    masks = np.stack([np.roll(_mask(), i, axis=1) for i in range(3)])
    _slicer_pair(tmp_path / "sl", "clip", images, masks)
    data = open_dataset(tmp_path / "sl" / "clip.seg.nrrd")
    assert data.names() == ["clip_0000", "clip_0001", "clip_0002"]
    for i in range(3):
        np.testing.assert_array_equal(data[i].image, images[i])
        np.testing.assert_array_equal(data[i].mask, masks[i])


def test_slicer_segmentation_without_volume_names_the_file(tmp_path):
    _slicer_pair(tmp_path / "sl", "scan", _image(8)[np.newaxis], _mask()[np.newaxis])
    _slicer_pair(tmp_path / "sl", "other", _image(9)[np.newaxis], _mask()[np.newaxis])
    (tmp_path / "sl" / "scan.nrrd").unlink()
    with pytest.raises(DatasetError, match=r"scan\.seg\.nrrd: missing partner file"):
        open_dataset(tmp_path / "sl")


# -- detection ---------------------------------------------------------------------------------------------------

def test_auto_detection_names_each_format_and_says_what_it_found(tmp_path):
    assert detect_format(_folder(tmp_path / "f"))[0] == "folder"
    assert detect_format(_kaggle(tmp_path / "k"))[0] == "kaggle"
    assert detect_format(_nnunet(tmp_path / "n"))[0] == "nnunet"
    assert detect_format(_coco(tmp_path / "c"))[0] == "coco"
    assert detect_format(_labelme(tmp_path / "l"))[0] == "labelme"
    _slicer_pair(tmp_path / "s", "x", _image(1)[np.newaxis], _mask()[np.newaxis])
    fmt, found = detect_format(tmp_path / "s")
    assert fmt == "slicer" and ".seg.nrrd" in found


def test_unrecognised_folder_error_lists_what_is_there(tmp_path):
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "notes.txt").write_text("x")
    with pytest.raises(DatasetError, match=r"no labelled data set format recognised \(found notes\.txt\)"):
        open_dataset(tmp_path / "junk")


def test_dataset_error_is_a_value_error():
    assert issubclass(DatasetError, ValueError)


def test_an_annotation_store_is_recognised_by_its_application_id_not_its_name(tmp_path):
    import sqlite3

    from NerveSegLogic.store.database import AnnotationStore

    with AnnotationStore(tmp_path / "project.db") as store:
        record = store.add_frame(_image(), source="clip", index=0)
        store.save_mask(record.id, _mask(), {1: "nerve", 2: "vessel"}, author="a", origin="manual", parent_id=None,
                        status="accepted")
    fmt, found = detect_format(tmp_path / "project.db")
    assert fmt == "store" and "annotation store" in found
    data = open_dataset(tmp_path / "project.db")
    assert [c.key for c in data.classes] == ["nerve", "blood_vessel"] and data.names() == ["clip~000000"]
    assert np.array_equal(data[0].mask, _mask()) and data[0].metadata["labelled"] == ("nerve", "blood_vessel")
    renamed = open_dataset(tmp_path / "project.db", mapping={"vessel": "artery"})
    assert [c.key for c in renamed.classes] == ["nerve", "artery"]
    other = tmp_path / "other.nsdb"  # an SQLite file of some other program
    with sqlite3.connect(other) as connection:
        connection.execute("CREATE TABLE t (x)")
    with pytest.raises(DatasetError, match="no labelled data set format recognised"):
        open_dataset(other)
    with pytest.raises(DatasetError, match="choose frames of an annotation store"):
        open_dataset(tmp_path / "project.db", format="folder", statuses=["accepted"])
