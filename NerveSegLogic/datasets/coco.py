"""COCO instance segmentation JSON: reading (instances rasterised to class labels) and writing (one instance per
connected component, RLE masks), both through pycocotools' mask API.

Reading: ``open_dataset("instances.json")`` or a folder with ``annotations/*.json`` (or COCO JSON files directly).
Image files are looked for relative to the JSON's folder, ``../images``, ``images/`` and the folder above. Category
names map through ``mapping={name: class key}`` (default: each name as a catalogue key/alias); classes are numbered
in category-id order unless a ``classes.json`` says otherwise. Overlapping instances: the later annotation (by
position in the file) wins.

Writing (:class:`CocoWriter`): ``annotations/instances_<split>.json`` and ``images/<split>/<case>.png``; category id
= class label, ``file_name`` relative to ``images/``; each image entry also carries ``nerveseg_case``.
"""

from __future__ import annotations

import json
from functools import partial
from pathlib import Path
from typing import Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np

from NerveSegLogic.classes import SegmentClass

from .dataset import DatasetError, LabelledDataset, SampleRef
from .files import read_image, write_image
from .labels import name_mapping, read_class_file
from .layout import SPLIT_NAMES, frame_extras, manifest_frames
from .safe_paths import is_inside, resolve_inside

_COCO_KEYS = ("images", "annotations", "categories")


def _is_coco_file(path: Path) -> bool:
    if path.suffix.lower() != ".json" or not path.is_file() or path.name in ("manifest.json", "classes.json",
                                                                             "dataset.json", "sample.json"):
        return False
    try:
        with open(path, "rb") as handle:  # a cheap look at the start before parsing a large file
            head = handle.read(65536).decode("utf-8", errors="ignore")
        if '"annotations"' not in head and '"images"' not in head:
            return False
        content = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(content, dict) and all(k in content for k in _COCO_KEYS)


def coco_files(path: Path) -> List[Path]:
    """COCO JSON files at ``path``: the file itself, or those in ``path/annotations`` or ``path``."""
    if path.is_file():
        return [path] if _is_coco_file(path) else []
    for folder in (path / "annotations", path):
        if folder.is_dir():
            found = [p for p in sorted(folder.glob("*.json")) if _is_coco_file(p)]
            if found:
                return sorted(found, key=_split_order)
    return []


def _split_of(path: Path) -> Optional[str]:
    stem = path.stem.lower()
    for split in SPLIT_NAMES:
        if stem.endswith(f"_{split}") or stem == split:
            return split
    return None


def _split_order(path: Path):
    split = _split_of(path)
    return (SPLIT_NAMES.index(split) if split else len(SPLIT_NAMES), path.name)


def looks_like_coco(path: Path) -> Optional[str]:
    files = coco_files(path)
    if files:
        return f"COCO instance JSON {', '.join(p.name for p in files)}"
    return None


def _find_image(json_path: Path, file_name: str, where: str = "") -> Optional[Path]:
    """The image of a ``file_name`` entry: beside the JSON, in ``../images``, ``images/`` or ``..``. DatasetError when
    the entry is absolute or climbs out with ``..`` (it is never followed outside the data set)."""
    base = json_path.parent
    # The data set folder: the JSON's own, or the one above an annotations/ folder; nothing outside it is searched.
    root = base.parent if base.name == "annotations" else base
    where = where or f"{json_path}: field 'file_name'"
    resolve_inside(root, root, file_name, where)  # refuses absolute entries and those leading out of the data set
    for folder in (base, base.parent / "images", base / "images", base.parent):
        if not is_inside(root, folder):
            continue
        try:
            candidate = resolve_inside(root, folder, file_name, where)
        except DatasetError:  # '..' that leaves the data set from this folder: not a place to look
            continue
        if candidate.is_file():
            return candidate
    return None


def _decode(segmentation, height: int, width: int) -> np.ndarray:
    from pycocotools import mask as mask_utils

    if isinstance(segmentation, list):  # polygons
        rles = mask_utils.frPyObjects(segmentation, height, width)
        rle = mask_utils.merge(rles)
    elif isinstance(segmentation, dict) and isinstance(segmentation.get("counts"), list):  # uncompressed RLE
        rle = mask_utils.frPyObjects(segmentation, height, width)
    elif isinstance(segmentation, dict):
        rle = dict(segmentation)
        if isinstance(rle["counts"], str):
            rle["counts"] = rle["counts"].encode("ascii")
    else:
        raise ValueError(f"segmentation must be polygons or RLE, got {type(segmentation).__name__}")
    return mask_utils.decode(rle)


def _load(image_path: Path, json_path: Path, width: int, height: int, annotations: Sequence[dict],
          label_of_category: Mapping[int, int]):
    image = read_image(image_path)
    if image.shape[:2] != (height, width):
        raise DatasetError(f"{json_path}: images entry for {image_path.name} says width x height {width}x{height}, "
                           f"but {image_path} is {image.shape[1]}x{image.shape[0]}")
    mask = np.zeros((height, width), dtype=np.uint8)
    for annotation in annotations:
        label = label_of_category[annotation["category_id"]]
        try:
            region = _decode(annotation["segmentation"], height, width)
        except Exception as error:
            raise DatasetError(f"{json_path}: annotation id {annotation.get('id')} field 'segmentation' is not valid "
                               f"COCO polygons/RLE ({error})") from None
        if label:
            mask[region > 0] = label
    return image, mask


def read_coco(root: Path, mapping: Optional[Mapping] = None, split: Optional[str] = None) -> LabelledDataset:
    """The images of one or more COCO instance JSON files, each with its instances painted as class labels."""
    files = coco_files(root)
    if split is not None:
        files = [f for f in files if _split_of(f) == split]
    if not files:
        raise DatasetError(f"{root}: no COCO instance JSON (with images, annotations, categories)"
                           + (f" for split {split!r}" if split else ""))
    contents = []
    names: List[str] = []
    found_in: Dict[str, str] = {}
    for path in files:
        try:
            content = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as error:
            raise DatasetError(f"{path}: not readable JSON ({error})") from None
        for category in sorted(content["categories"], key=lambda c: c.get("id", 0)):
            if "id" not in category or "name" not in category:
                raise DatasetError(f"{path}: each entry of 'categories' needs 'id' and 'name', got {category}")
            if category["name"] not in names:
                names.append(str(category["name"]))
                found_in[str(category["name"])] = f"{path} field 'categories'"
        contents.append((path, content))
    folder = root if root.is_dir() else root.parent
    fixed, _, class_file = (None, None, None) if mapping is not None else read_class_file(folder)
    where = "mapping passed to open_dataset" if mapping is not None else f"{files[0]} field 'categories'"
    classes, label_of_name = name_mapping(names, mapping, where, fixed, found_in)
    provenance = manifest_frames(folder)
    refs: List[SampleRef] = []
    for path, content in contents:
        label_of_category = {c["id"]: label_of_name[str(c["name"])] for c in content["categories"]}
        by_image: Dict[int, List[dict]] = {}
        for annotation in content["annotations"]:
            for key in ("image_id", "category_id", "segmentation"):
                if key not in annotation:
                    raise DatasetError(f"{path}: annotation id {annotation.get('id')} has no field {key!r}")
            if annotation["category_id"] not in label_of_category:
                raise DatasetError(f"{path}: annotation id {annotation.get('id')} field 'category_id' "
                                   f"{annotation['category_id']} is not in 'categories' {sorted(label_of_category)}")
            by_image.setdefault(annotation["image_id"], []).append(annotation)
        image_ids = set()
        for entry in content["images"]:
            for key in ("id", "file_name", "width", "height"):
                if key not in entry:
                    raise DatasetError(f"{path}: images entry {entry} has no field {key!r}")
            image_ids.add(entry["id"])
            image_path = _find_image(path, entry["file_name"],
                                     f"{path}: images entry id {entry['id']} field 'file_name'")
            if image_path is None:
                raise DatasetError(f"{path}: missing partner file: images entry id {entry['id']} field 'file_name' "
                                   f"{entry['file_name']!r} not found beside the JSON, in ../images or images/")
            case = str(entry.get("nerveseg_case") or Path(entry["file_name"]).stem)
            subject, spacing, metadata = frame_extras(provenance.get(case))
            if entry.get("spacing_mm"):
                spacing = spacing or (float(entry["spacing_mm"][0]), float(entry["spacing_mm"][1]))
            if _split_of(path):
                metadata.setdefault("split", _split_of(path))
            metadata.setdefault("files", [str(image_path), str(path)])
            metadata["coco_image_id"] = entry["id"]
            load = partial(_load, image_path, path, int(entry["width"]), int(entry["height"]),
                           by_image.get(entry["id"], []), label_of_category)
            refs.append(SampleRef(case, load, (str(image_path), str(path)), raw_mask=False, spacing=spacing,
                                  subject=subject, metadata=metadata))
        stray = sorted(set(by_image) - image_ids)
        if stray:
            raise DatasetError(f"{path}: annotations refer to image_id {stray[:5]} not in 'images'")
    source = "mapping passed to open_dataset" if mapping is not None else str(class_file or files[0])
    description = f"coco: {len(refs)} images in {', '.join(p.name for p in files)} (classes from {source})"
    return LabelledDataset(folder, "coco", classes, refs, None, source, description)


def instances(mask: np.ndarray, label: int) -> Tuple[int, np.ndarray]:
    """(count, component image) of the 8-connected components of ``mask == label`` (components numbered 1..count)."""
    import cv2

    count, components = cv2.connectedComponents((mask == label).astype(np.uint8), connectivity=8)
    return count - 1, components


class CocoWriter:
    """Writes COCO instance JSON per split plus PNG images. ``add`` per frame, then ``close``."""

    format = "coco"

    def __init__(self, root: Path, classes: Sequence[SegmentClass], compress_level: int = 1, description: str = ""):
        self.root = Path(root)
        self.classes = tuple(classes)
        self.compress_level = compress_level
        self.description = description or "NerveSeg export"
        self._splits: Dict[str, dict] = {}
        self._next_annotation = 1
        self._next_image = 1

    def _split(self, split: str) -> dict:
        if split not in self._splits:
            self._splits[split] = {
                "info": {"description": self.description, "version": "1.0"},
                "images": [], "annotations": [],
                "categories": [{"id": c.label, "name": c.key, "supercategory": "tissue"} for c in self.classes],
            }
            (self.root / "images" / split).mkdir(parents=True, exist_ok=True)
        return self._splits[split]

    def add(self, case: str, split: str, image: np.ndarray, mask: np.ndarray,
            spacing: Optional[Tuple[float, float]] = None, **_) -> List[Path]:
        from pycocotools import mask as mask_utils

        content = self._split(split)
        image_path = self.root / "images" / split / f"{case}.png"
        write_image(image_path, image, self.compress_level)
        image_id = self._next_image
        self._next_image += 1
        height, width = mask.shape
        entry = {"id": image_id, "file_name": f"{split}/{case}.png", "width": int(width), "height": int(height),
                 "nerveseg_case": case}
        if spacing:
            entry["spacing_mm"] = [float(spacing[0]), float(spacing[1])]
        content["images"].append(entry)
        for cls in self.classes:
            count, components = instances(mask, cls.label)
            for component in range(1, count + 1):
                binary = np.asfortranarray((components == component).astype(np.uint8))
                rle = mask_utils.encode(binary)
                x, y, w, h = (float(v) for v in mask_utils.toBbox(rle))
                content["annotations"].append({
                    "id": self._next_annotation, "image_id": image_id, "category_id": cls.label,
                    "segmentation": {"size": [int(height), int(width)], "counts": rle["counts"].decode("ascii")},
                    "area": float(mask_utils.area(rle)), "bbox": [x, y, w, h], "iscrowd": 0,
                })
                self._next_annotation += 1
        return [image_path]

    def close(self) -> List[Path]:
        written = []
        (self.root / "annotations").mkdir(parents=True, exist_ok=True)
        for split, content in self._splits.items():
            path = self.root / "annotations" / f"instances_{split}.json"
            path.write_text(json.dumps(content), encoding="utf-8")
            written.append(path)
        return written
