"""Image/mask pairs: ``images/`` + ``masks/`` folders (like usgra-seg) and Kaggle-style ``N_M.tif`` + ``N_M_mask.tif``.

folder: ``images/NAME.png`` pairs with ``masks/NAME.png`` (any of PNG/TIFF/JPEG/BMP for images; masks must be
lossless). Masks hold class indices (palette or grey). Default mapping: usgra-seg's ``{1: nerve, 2: blood_vessel}``.

kaggle: ``N_M.tif`` and ``N_M_mask.tif`` in one folder (the Kaggle ultrasound nerve segmentation layout: N is the
subject, M the image). Default mapping ``{255: nerve}`` (the Kaggle masks are 0/255).

A ``classes.json`` / ``sample.json`` beside the data (or at the export root) replaces the default mapping.
"""

from __future__ import annotations

import re
from functools import partial
from pathlib import Path
from typing import List, Mapping, Optional, Sequence

import numpy as np

from NerveSegLogic.classes import USGRA_SEG_MAPPING

from .dataset import DatasetError, LabelledDataset, SampleRef
from .files import find_partner, IMAGE_SUFFIXES, read_image, read_label_image, write_image, write_label_image
from .labels import index_mapping, read_class_file
from .layout import frame_extras, manifest_frames, split_parts
from .labelme import write_classes_json

MASK_SUFFIXES = (".png", ".tif", ".tiff", ".bmp")
KAGGLE_DEFAULT_MAPPING = {255: "nerve"}
_KAGGLE_NAME = re.compile(r"^(\d+)_(\d+)$")


def _files(folder: Path, suffixes: Sequence[str]) -> List[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in suffixes
                  and not p.name.startswith("."))


def _load_pair(image_path: Path, mask_path: Path):
    return read_image(image_path), read_label_image(mask_path)


def resolve_index_classes(root: Path, part_folders: Sequence[Path], mapping: Optional[Mapping],
                          default: Mapping[int, str], default_name: str):
    """(classes, value table, where the mapping came from, spacing from the class file) for index masks."""
    if mapping is not None:
        classes, table = index_mapping(mapping, "mapping passed to open_dataset")
        source = "mapping passed to open_dataset"
        spacing = None
        for folder in list(part_folders) + [root]:
            _, spacing, found = read_class_file(folder)
            if found:
                break
        return classes, table, source, spacing
    for folder in list(part_folders) + [root]:
        labels, spacing, found = read_class_file(folder)
        if labels is not None:
            classes, table = index_mapping(labels, str(found))
            return classes, table, str(found), spacing
    classes, table = index_mapping(default, default_name)
    return classes, table, default_name, None


def _has_folder_pairs(folder: Path) -> bool:
    return (folder / "images").is_dir() and (folder / "masks").is_dir()


def looks_like_folder(path: Path) -> Optional[str]:
    if path.is_dir():
        parts = split_parts(path, _has_folder_pairs)
        if parts:
            where = ", ".join(str(p.relative_to(path)) or "." for _, p in parts)
            return f"images/ and masks/ folders in {where}"
    return None


def read_folder(root: Path, mapping: Optional[Mapping] = None, split: Optional[str] = None) -> LabelledDataset:
    """``images/`` + ``masks/`` pairs under ``root`` (or under each split folder of ``root``)."""
    parts = _select(split_parts(root, _has_folder_pairs), split, root, "images/ and masks/ folders")
    classes, table, source, spacing = resolve_index_classes(
        root, [p for _, p in parts], mapping, USGRA_SEG_MAPPING, "usgra-seg default mapping (USGRA_SEG_MAPPING)")
    provenance = manifest_frames(root)
    refs: List[SampleRef] = []
    for split_name, folder in parts:
        images = _files(folder / "images", IMAGE_SUFFIXES)
        masks = _files(folder / "masks", MASK_SUFFIXES + (".jpg", ".jpeg"))
        mask_by_stem = {}
        for m in masks:
            if m.stem in mask_by_stem:
                raise DatasetError(f"{m}: two masks for {m.stem!r} ({mask_by_stem[m.stem].name}, {m.name})")
            mask_by_stem[m.stem] = m
        image_stems = set()
        for image in images:
            if image.stem in image_stems:
                raise DatasetError(f"{image}: two images named {image.stem!r} in {image.parent}")
            image_stems.add(image.stem)
            partner = mask_by_stem.get(image.stem)
            if partner is None:
                raise DatasetError(f"{image}: missing partner file: no mask {folder / 'masks' / image.stem}"
                                   f"{{{','.join(MASK_SUFFIXES)}}}")
            if partner.suffix.lower() in (".jpg", ".jpeg"):
                raise DatasetError(f"{partner}: masks must be lossless (PNG/TIFF/BMP); JPEG changes class indices")
            refs.append(_ref(image.stem, image, partner, split_name, provenance, spacing))
        orphans = sorted(set(mask_by_stem) - image_stems)
        if orphans:
            raise DatasetError(f"{mask_by_stem[orphans[0]]}: missing partner file: no image "
                               f"{folder / 'images' / orphans[0]}.* ({len(orphans)} masks without an image)")
    if not refs:
        raise DatasetError(f"{root}: images/ holds no image files ({', '.join(IMAGE_SUFFIXES)})")
    description = (f"folder: {len(refs)} image/mask pairs in {root} "
                   f"({', '.join((s or '.') for s, _ in parts)}; classes from {source})")
    return LabelledDataset(root, "folder", classes, refs, table, source, description)


def _ref(name, image, mask, split_name, provenance, spacing, subject=None) -> SampleRef:
    m_subject, m_spacing, metadata = frame_extras(provenance.get(name))
    if split_name and "split" not in metadata:
        metadata["split"] = split_name
    metadata.setdefault("files", [str(image), str(mask)])
    return SampleRef(name=name, load=partial(_load_pair, image, mask), files=(str(image), str(mask)),
                     spacing=m_spacing or spacing, subject=m_subject or subject, metadata=metadata)


def _select(parts, split, root, what):
    if not parts:
        raise DatasetError(f"{root}: no {what} found (nor in train/, val/, test/ subfolders)")
    if split is None:
        return parts
    chosen = [p for p in parts if p[0] == split]
    if not chosen:
        raise DatasetError(f"{root}: no split {split!r}; found {[s for s, _ in parts]}")
    return chosen


# -- Kaggle ---------------------------------------------------------------------------------------------------------

def _kaggle_masks(folder: Path) -> List[Path]:
    return sorted(p for p in folder.glob("*_mask.*") if p.suffix.lower() in (".tif", ".tiff", ".png"))


def looks_like_kaggle(path: Path) -> Optional[str]:
    if path.is_dir():
        parts = split_parts(path, lambda f: bool(_kaggle_masks(f)))
        if parts:
            count = sum(len(_kaggle_masks(p)) for _, p in parts)
            return f"{count} N_M_mask.tif files beside their images"
    return None


def read_kaggle(root: Path, mapping: Optional[Mapping] = None, split: Optional[str] = None) -> LabelledDataset:
    """``NAME.tif`` + ``NAME_mask.tif`` pairs in ``root`` (or its split folders); subject = N of ``N_M``."""
    parts = _select(split_parts(root, lambda f: bool(_kaggle_masks(f))), split, root, "NAME_mask.tif files")
    classes, table, source, spacing = resolve_index_classes(
        root, [p for _, p in parts], mapping, KAGGLE_DEFAULT_MAPPING, "Kaggle default mapping {255: nerve}")
    provenance = manifest_frames(root)
    refs = []
    for split_name, folder in parts:
        masks = sorted(_kaggle_masks(folder), key=lambda m: _kaggle_order(m.stem[:-len("_mask")]))
        mask_stems = {m.stem[:-len("_mask")] for m in masks}
        for mask in masks:
            stem = mask.stem[:-len("_mask")]
            image = find_partner(folder, stem, (mask.suffix.lower(),) + IMAGE_SUFFIXES)
            if image is None:
                raise DatasetError(f"{mask}: missing partner file: no image {folder / stem}{mask.suffix}")
            match = _KAGGLE_NAME.match(stem)
            refs.append(_ref(stem, image, mask, split_name, provenance, spacing,
                             subject=match.group(1) if match else None))
        for image in _files(folder, (".tif", ".tiff")):
            if not image.stem.endswith("_mask") and image.stem not in mask_stems:
                raise DatasetError(f"{image}: missing partner file: no mask {folder / image.stem}_mask{image.suffix}")
    description = f"kaggle: {len(refs)} N_M.tif/N_M_mask.tif pairs in {root} (classes from {source})"
    return LabelledDataset(root, "kaggle", classes, refs, table, source, description)


def _kaggle_order(name: str):
    match = _KAGGLE_NAME.match(name)
    return (0, int(match.group(1)), int(match.group(2)), "") if match else (1, 0, 0, name)


# -- writing -------------------------------------------------------------------------------------------------------

class MasksWriter:
    """Image/mask pairs with class-index masks that carry a palette (a person sees the classes in colour).

    ``png`` (default): ``<split>/images/<case>.png`` + ``<split>/masks/<case>.png`` (the usgra-seg layout).
    ``tif``: ``<split>/<case>.tif`` + ``<split>/<case>_mask.tif`` (the Kaggle nerve set's layout; the masks hold
    class indices, not 0/255, and ``classes.json`` says which).
    ``classes.json`` at the root names the labels for every reader."""

    format = "masks"

    def __init__(self, root: Path, classes, image_format: str = "png", compress_level: int = 1):
        if image_format not in ("png", "tif"):
            raise ValueError(f"image format for masks export must be 'png' or 'tif', got {image_format!r}")
        self.root = Path(root)
        self.classes = tuple(classes)
        self.image_format = image_format
        self.compress_level = compress_level
        self._colors = [c.color_uint8() for c in self.classes]

    def add(self, case: str, split: str, image: np.ndarray, mask: np.ndarray, **_) -> List[Path]:
        if self.image_format == "png":
            image_path = self.root / split / "images" / f"{case}.png"
            mask_path = self.root / split / "masks" / f"{case}.png"
        else:
            image_path = self.root / split / f"{case}.tif"
            mask_path = self.root / split / f"{case}_mask.tif"
        image_path.parent.mkdir(parents=True, exist_ok=True)
        mask_path.parent.mkdir(parents=True, exist_ok=True)
        write_image(image_path, image, self.compress_level)
        write_label_image(mask_path, mask, self._colors, self.compress_level)
        return [image_path, mask_path]

    def close(self) -> List[Path]:
        return [write_classes_json(self.root, self.classes)]
