"""Data files are input: paths written in them never lead outside the data set, and images too large or too oddly
shaped are refused from their header, before their pixels are decoded."""

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from NerveSegLogic.datasets.readers import DatasetError, open_dataset

H, W = 24, 32
OUTSIDE = np.full((H, W), 77, np.uint8)  # the "secret" image a hostile entry points at


def _outside_image(tmp_path: Path) -> Path:
    secret = tmp_path / "private" / "secret.png"
    secret.parent.mkdir(parents=True)
    Image.fromarray(OUTSIDE).save(secret)
    return secret


def _labelme(root: Path, image_path: str) -> Path:
    root.mkdir(parents=True)
    content = {"version": "5.5.0", "flags": {}, "imagePath": image_path, "imageData": None, "imageHeight": H,
               "imageWidth": W, "shapes": [{"label": "nerve", "shape_type": "polygon",
                                            "points": [[5, 4], [13, 4], [13, 9]], "flags": {}}]}
    (root / "f1.json").write_text(json.dumps(content))
    return root


def _coco(root: Path, file_name: str, in_annotations=False) -> Path:
    (root / "images").mkdir(parents=True)
    Image.fromarray(np.zeros((H, W), np.uint8)).save(root / "images" / "a.png")
    content = {"images": [{"id": 7, "file_name": file_name, "width": W, "height": H}], "annotations": [],
               "categories": [{"id": 3, "name": "nerve"}]}
    folder = root / "annotations" if in_annotations else root
    folder.mkdir(exist_ok=True)
    (folder / ("instances_train.json" if in_annotations else "annotations.json")).write_text(json.dumps(content))
    return root


def hostile_entries(secret: Path, data_root: Path):
    relative = Path("..") / secret.relative_to(data_root.parent)
    return [str(secret), relative.as_posix(), str(relative).replace("/", "\\"), "C:\\private\\secret.png",
            "sub/../../private/secret.png"]


@pytest.mark.parametrize("index", range(5))
def test_labelme_image_path_outside_the_data_set_is_refused_naming_the_entry(tmp_path, index):
    secret = _outside_image(tmp_path)
    root = tmp_path / "lm"
    entry = hostile_entries(secret, root)[index]
    _labelme(root, entry)
    with pytest.raises(DatasetError) as caught:
        open_dataset(root)
    message = str(caught.value)
    assert "f1.json: field 'imagePath'" in message and repr(entry) in message
    assert "absolute" in message or "climbs out" in message


@pytest.mark.parametrize("index", range(5))
def test_coco_file_name_outside_the_data_set_is_refused_naming_the_entry(tmp_path, index):
    secret = _outside_image(tmp_path)
    root = tmp_path / "coco"
    entry = hostile_entries(secret, root)[index]
    _coco(root, entry)
    with pytest.raises(DatasetError) as caught:
        open_dataset(root)
    message = str(caught.value)
    assert "images entry id 7 field 'file_name'" in message and repr(entry) in message
    assert "absolute" in message or "climbs out" in message


def test_coco_in_an_annotations_folder_never_looks_above_the_data_set(tmp_path):
    _outside_image(tmp_path)
    (tmp_path / "a.png").write_bytes(b"")  # a file of the same name just above the data set: must not be used
    root = _coco(tmp_path / "coco", "a.png", in_annotations=True)
    data = open_dataset(root)
    assert Path(data.ref(0).files[0]).resolve() == (root / "images" / "a.png").resolve()


def test_labelme_backslashes_and_dot_dot_that_stay_inside_the_data_set_are_followed(tmp_path):
    root = tmp_path / "lm"
    _labelme(root, "pics\\..\\images\\f1.png")  # Labelme on Windows writes backslashes
    (root / "images").mkdir()
    Image.fromarray(OUTSIDE).save(root / "images" / "f1.png")
    data = open_dataset(root)
    np.testing.assert_array_equal(data[0].image, OUTSIDE)


def test_an_image_file_of_one_column_and_20000_rows_is_refused_from_its_header(tmp_path):
    root = tmp_path / "data"
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    Image.fromarray(np.zeros((20000, 1), np.uint8)).save(root / "images" / "a.png")
    Image.fromarray(np.zeros((20000, 1), np.uint8)).save(root / "masks" / "a.png")
    data = open_dataset(root)
    with pytest.raises(DatasetError, match=r"a\.png: 1 x 20000 pixels.*at most"):
        data[0]


def test_a_manifest_entry_outside_the_export_is_reported_not_hashed(tmp_path):
    from NerveSegLogic.datasets.manifest import sha256_file, verify_manifest

    secret = _outside_image(tmp_path)
    root = tmp_path / "export"
    root.mkdir()
    entries = [{"path": "../private/secret.png", "sha256": sha256_file(secret)},
               {"path": str(secret), "sha256": sha256_file(secret)}]
    (root / "manifest.json").write_text(json.dumps({"files": entries}))
    problems = verify_manifest(root)
    assert len(problems) == 2 and "climbs out" in problems[0] and "absolute" in problems[1]
