"""nnU-Net v2 raw data sets: ``dataset.json`` + ``imagesTr/CASE_0000.png`` + ``labelsTr/CASE.png`` (+ ``imagesTs``).

Reading: the classes come from ``dataset.json`` ``labels`` (``{"background": 0, "nerve": 1, ...}``; each name must be
a catalogue key or alias, or pass ``mapping={value: key}``). ``labelsTs/`` is read too when present (nnU-Net itself
ignores it; NerveSeg exports put the test labels there). Single-channel only: NerveSeg frames are grey.

Writing (:class:`NnunetWriter`): 2D PNG (labels as plain grey PNG: nnU-Net reads PNG through scikit-image, which
turns palette images into colours), one channel (``channel_names {"0": "US"}``), train and validation cases in
``imagesTr``/``labelsTr`` and ``splits_final.json`` (nnU-Net's own split file, one fold: our train/val) beside
``dataset.json`` so it can be copied into the preprocessed folder to train on exactly our split; test cases in
``imagesTs`` with their labels in ``labelsTs``.
"""

from __future__ import annotations

import json
from functools import partial
from pathlib import Path
from typing import Dict, List, Mapping, Optional, Sequence

import numpy as np

from NerveSegLogic.classes import SegmentClass

from .dataset import DatasetError, LabelledDataset, SampleRef
from .files import read_image, read_label_image, write_image
from .labels import index_mapping, read_class_file
from .layout import frame_extras, manifest_frames

NATURAL_ENDINGS = (".png", ".bmp", ".tif", ".tiff")


def looks_like_nnunet(path: Path) -> Optional[str]:
    if path.is_dir() and (path / "dataset.json").is_file() and (path / "imagesTr").is_dir():
        return "dataset.json with imagesTr/"
    return None


def _read_any(path: Path, labels: bool) -> np.ndarray:
    if path.name.lower().endswith(NATURAL_ENDINGS):
        return read_label_image(path) if labels else read_image(path)
    import SimpleITK as sitk  # medical formats (.nii.gz, .nrrd, .mha): one 2D slice

    array = sitk.GetArrayFromImage(sitk.ReadImage(str(path)))
    array = np.squeeze(array)
    if array.ndim != 2:
        raise DatasetError(f"{path}: expected a 2D image (or 3D with one slice), got shape {array.shape}")
    return array


def _load(image: Path, label: Path):
    return _read_any(image, labels=False), _read_any(label, labels=True)


def read_nnunet(root: Path, mapping: Optional[Mapping] = None, split: Optional[str] = None) -> LabelledDataset:
    """The labelled cases of an nnU-Net raw data set folder (imagesTr/labelsTr, and imagesTs/labelsTs if present)."""
    dataset_json = root / "dataset.json"
    try:
        info = json.loads(dataset_json.read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        raise DatasetError(f"{dataset_json}: not readable JSON ({error})") from None
    for key in ("labels", "file_ending"):
        if key not in info:
            raise DatasetError(f"{dataset_json}: missing field {key!r} (nnU-Net v2 needs labels, channel_names, "
                               "numTraining, file_ending)")
    channels = info.get("channel_names") or info.get("modality") or {"0": "?"}
    if len(channels) != 1:
        raise DatasetError(f"{dataset_json}: field 'channel_names' has {len(channels)} channels {channels}; "
                           "NerveSeg reads single-channel (grey) ultrasound")
    ending = str(info["file_ending"])
    if mapping is not None:
        classes, table = index_mapping(mapping, "mapping passed to open_dataset")
        source = "mapping passed to open_dataset"
    else:
        labels, _, found = read_class_file(root)  # classes.json wins over dataset.json when both are there
        classes, table = index_mapping(labels or {}, f"{found} field 'labels'")
        source = str(found)
    provenance = manifest_frames(root)
    refs: List[SampleRef] = []
    for images_dir, labels_dir, default_split in (("imagesTr", "labelsTr", "train"), ("imagesTs", "labelsTs", "test")):
        images_path, labels_path = root / images_dir, root / labels_dir
        if not images_path.is_dir() or (images_dir == "imagesTs" and not labels_path.is_dir()):
            continue
        if not labels_path.is_dir():
            raise DatasetError(f"{labels_path}: missing (every case in {images_dir}/ needs a label file)")
        images = sorted(p for p in images_path.iterdir() if p.name.endswith(ending))
        cases = {}
        for image in images:
            stem = image.name[:-len(ending)]
            if len(stem) < 6 or stem[-5] != "_" or not stem[-4:].isdigit():
                raise DatasetError(f"{image}: nnU-Net image files are named CASE_XXXX{ending} (XXXX = channel)")
            if stem[-4:] != "0000":
                raise DatasetError(f"{image}: channel {stem[-4:]} found; only one channel (_0000) is supported")
            cases[stem[:-5]] = image
        label_files = {p.name[:-len(ending)]: p for p in labels_path.iterdir() if p.name.endswith(ending)}
        for case, image in cases.items():
            label = label_files.get(case)
            if label is None:
                raise DatasetError(f"{image}: missing partner file: no label {labels_path / (case + ending)}")
            subject, spacing, metadata = frame_extras(provenance.get(case))
            metadata.setdefault("split", default_split)
            metadata.setdefault("files", [str(image), str(label)])
            if split is None or metadata["split"] == split:
                refs.append(SampleRef(case, partial(_load, image, label), (str(image), str(label)),
                                      spacing=spacing, subject=subject, metadata=metadata))
        orphans = sorted(set(label_files) - set(cases))
        if orphans:
            raise DatasetError(f"{label_files[orphans[0]]}: missing partner file: no image "
                               f"{images_path / (orphans[0] + '_0000' + ending)}")
    if split is not None and not refs:
        raise DatasetError(f"{root}: no cases in split {split!r}")
    description = f"nnunet: {len(refs)} labelled cases in {root} (classes from {source})"
    return LabelledDataset(root, "nnunet", classes, refs, table, source, description)


class NnunetWriter:
    """Writes an nnU-Net v2 raw data set (2D PNG). ``add`` per frame, then ``close``; returns written paths."""

    format = "nnunet"
    ending = ".png"

    def __init__(self, root: Path, classes: Sequence[SegmentClass], dataset_name: str = "NerveSeg export",
                 channel_name: str = "US", compress_level: int = 1):
        self.root = Path(root)
        self.classes = tuple(classes)
        self.dataset_name = dataset_name
        self.channel_name = channel_name
        self.compress_level = compress_level
        self._split_cases: Dict[str, List[str]] = {"train": [], "val": [], "test": []}
        for sub in ("imagesTr", "labelsTr"):
            (self.root / sub).mkdir(parents=True, exist_ok=True)

    def add(self, case: str, split: str, image: np.ndarray, mask: np.ndarray, **_) -> List[Path]:
        images, labels = ("imagesTs", "labelsTs") if split == "test" else ("imagesTr", "labelsTr")
        (self.root / images).mkdir(exist_ok=True)
        (self.root / labels).mkdir(exist_ok=True)
        image_path = self.root / images / f"{case}_0000{self.ending}"
        label_path = self.root / labels / f"{case}{self.ending}"
        write_image(image_path, image, self.compress_level)
        # plain grey, not a palette: nnU-Net reads PNG with scikit-image, which expands palettes to RGB colours
        write_image(label_path, mask, self.compress_level)
        self._split_cases.setdefault(split, []).append(case)
        return [image_path, label_path]

    def close(self) -> List[Path]:
        training = self._split_cases["train"] + self._split_cases["val"]
        labels = {"background": 0}
        labels.update({c.key: c.label for c in self.classes})
        dataset = {
            "name": self.dataset_name,
            "channel_names": {"0": self.channel_name},
            "labels": labels,
            "numTraining": len(training),
            "file_ending": self.ending,
            "overwrite_image_reader_writer": "NaturalImage2DIO",
            "description": "Exported by NerveSeg; labelsTs holds the test labels (nnU-Net ignores it). "
                           "splits_final.json is this export's train/val split as one nnU-Net fold.",
        }
        dataset_path = self.root / "dataset.json"
        dataset_path.write_text(json.dumps(dataset, indent=2) + "\n", encoding="utf-8")
        splits_path = self.root / "splits_final.json"
        splits_path.write_text(json.dumps([{"train": self._split_cases["train"], "val": self._split_cases["val"]}],
                                          indent=2) + "\n", encoding="utf-8")
        return [dataset_path, splits_path]
