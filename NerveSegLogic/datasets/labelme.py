"""Labelme JSON (one file per image, the format the brachial plexus and usgra-seg annotators used).

Reading: a folder of ``*.json`` files (or one file) with ``shapes``; ``imagePath`` is relative to the JSON (the
embedded ``imageData`` is used when the file is not there). Shapes painted in file order (later wins): ``polygon``,
``rectangle``, ``circle`` and ``mask`` (labelme 5.3+: a base64 PNG of the shape's box); ``line``, ``linestrip``,
``point`` have no area and are skipped. Labels map through ``mapping={name: class key}`` (default: each label as a
catalogue key/alias; ``_background_`` is background).

Writing (:class:`LabelmeWriter`): ``<split>/<case>.png`` + ``<split>/<case>.json``, one polygon per connected
component traced with ``cv2.findContours``. A component a polygon cannot reproduce exactly (a hole, a one- or two-
pixel sliver) is written as a ``mask`` shape instead, so the masks read back are identical.
"""

from __future__ import annotations

import base64
import io
import json
from functools import partial
from pathlib import Path
from typing import Dict, List, Mapping, Optional, Sequence

import numpy as np

from NerveSegLogic.classes import SegmentClass

from .dataset import DatasetError, LabelledDataset, SampleRef
from .files import read_image, write_image
from .labels import name_mapping, read_class_file
from .layout import frame_extras, manifest_frames, split_parts
from .safe_paths import resolve_inside
from .coco import instances

AREA_SHAPES = ("polygon", "rectangle", "circle", "mask")
LABELME_VERSION = "5.5.0"


def _labelme_files(folder: Path) -> List[Path]:
    found = []
    for path in sorted(folder.glob("*.json")):
        try:
            with open(path, "rb") as handle:
                head = handle.read(4096).decode("utf-8", errors="ignore")
        except OSError:
            continue
        if '"shapes"' in head or '"imagePath"' in head:
            found.append(path)
    return found


def looks_like_labelme(path: Path) -> Optional[str]:
    if path.is_file() and path.suffix.lower() == ".json":
        return "a Labelme JSON file" if path in _labelme_files(path.parent) else None
    if path.is_dir():
        parts = split_parts(path, lambda f: bool(_labelme_files(f)))
        if parts:
            return f"{sum(len(_labelme_files(p)) for _, p in parts)} Labelme JSON files"
    return None


def _decode_png(b64: str) -> np.ndarray:
    from PIL import Image

    with Image.open(io.BytesIO(base64.b64decode(b64))) as image:
        return np.asarray(image)


def _encode_png(array: np.ndarray) -> str:
    from PIL import Image

    buffer = io.BytesIO()
    Image.frombytes("L", (array.shape[1], array.shape[0]), np.ascontiguousarray(array, dtype=np.uint8).tobytes()
                    ).save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def _paint(mask: np.ndarray, shape: dict, label: int, json_path: Path) -> None:
    import cv2

    kind = shape.get("shape_type") or "polygon"
    points = np.asarray(shape.get("points") or [], dtype=np.float64).reshape(-1, 2)
    try:
        if kind == "polygon":
            if len(points) < 1:
                return
            cv2.fillPoly(mask, [np.round(points).astype(np.int32)], int(label))
        elif kind == "rectangle":
            (x1, y1), (x2, y2) = np.round(points[:2]).astype(int)
            cv2.rectangle(mask, (min(x1, x2), min(y1, y2)), (max(x1, x2), max(y1, y2)), int(label), thickness=-1)
        elif kind == "circle":
            (cx, cy), (px, py) = points[:2]
            radius = int(round(float(np.hypot(px - cx, py - cy))))
            cv2.circle(mask, (int(round(cx)), int(round(cy))), radius, int(label), thickness=-1)
        elif kind == "mask":
            region = _decode_png(shape["mask"]) > 0
            if region.ndim == 3:
                region = region[:, :, 0]
            x0, y0 = (int(round(v)) for v in points[0])
            h = min(region.shape[0], mask.shape[0] - y0)
            w = min(region.shape[1], mask.shape[1] - x0)
            mask[y0:y0 + h, x0:x0 + w][region[:h, :w]] = label
    except (ValueError, KeyError, IndexError, TypeError) as error:
        raise DatasetError(f"{json_path}: shape {shape.get('label')!r} ({kind}) field 'points'/'mask' is invalid "
                           f"({error})") from None


def _load(json_path: Path, image_path: Optional[Path], labels: Mapping[str, int]):
    content = json.loads(json_path.read_text(encoding="utf-8"))
    if image_path is not None:
        image = read_image(image_path)
    else:
        image = _decode_png(content["imageData"])
    height = int(content.get("imageHeight") or image.shape[0])
    width = int(content.get("imageWidth") or image.shape[1])
    if (height, width) != image.shape[:2]:
        raise DatasetError(f"{json_path}: fields imageHeight x imageWidth {height}x{width} do not match the image "
                           f"{image_path or 'imageData'} of {image.shape[0]}x{image.shape[1]}")
    mask = np.zeros((height, width), dtype=np.uint8)
    for shape in content.get("shapes") or []:
        if (shape.get("shape_type") or "polygon") in AREA_SHAPES:
            label = labels[str(shape["label"])]
            if label:
                _paint(mask, shape, label, json_path)
    return image, mask


def read_labelme(root: Path, mapping: Optional[Mapping] = None, split: Optional[str] = None) -> LabelledDataset:
    """Every Labelme JSON in ``root`` (a folder, its split folders, or one file) with its image."""
    if root.is_file():
        parts, files_of = [(None, root.parent)], {root.parent: [root]}
        folder_root = root.parent
    else:
        parts = split_parts(root, lambda f: bool(_labelme_files(f)))
        files_of = {p: _labelme_files(p) for _, p in parts}
        folder_root = root
    if split is not None:
        parts = [p for p in parts if p[0] == split]
    if not parts:
        raise DatasetError(f"{root}: no Labelme JSON files" + (f" in split {split!r}" if split else ""))
    names: List[str] = []
    found_in: Dict[str, str] = {}
    entries = []
    for split_name, folder in parts:
        for path in files_of[folder]:
            try:
                content = json.loads(path.read_text(encoding="utf-8"))
            except (OSError, ValueError) as error:
                raise DatasetError(f"{path}: not readable JSON ({error})") from None
            if not isinstance(content.get("shapes"), list):
                raise DatasetError(f"{path}: field 'shapes' must be a list of shapes")
            for shape in content["shapes"]:
                if "label" not in shape:
                    raise DatasetError(f"{path}: a shape has no field 'label'")
                if (shape.get("shape_type") or "polygon") in AREA_SHAPES and str(shape["label"]) not in names:
                    names.append(str(shape["label"]))
                    found_in[str(shape["label"])] = f"{path} field 'shapes'"
            image_path = None
            if content.get("imagePath"):
                candidate = resolve_inside(folder_root, path.parent, content["imagePath"],
                                           f"{path}: field 'imagePath'")
                if candidate.is_file():
                    image_path = candidate
            if image_path is None and not content.get("imageData"):
                raise DatasetError(f"{path}: missing partner file: field 'imagePath' {content.get('imagePath')!r} "
                                   f"not found relative to {path.parent} and no 'imageData' embedded")
            entries.append((split_name, path, image_path))
    fixed, class_file = None, None
    if mapping is None:
        for folder in [p for _, p in parts] + [folder_root]:
            fixed, _, class_file = read_class_file(folder)
            if fixed:
                break
    where = "mapping passed to open_dataset" if mapping is not None else (
        f"{class_file}" if fixed else f"Labelme labels in {folder_root}")
    classes, label_of_name = name_mapping(names, mapping, where, fixed, found_in)
    provenance = manifest_frames(folder_root)
    refs = []
    for split_name, path, image_path in entries:
        subject, spacing, metadata = frame_extras(provenance.get(path.stem))
        if split_name:
            metadata.setdefault("split", split_name)
        metadata.setdefault("files", [str(image_path or path), str(path)])
        refs.append(SampleRef(path.stem, partial(_load, path, image_path, label_of_name),
                              (str(image_path or path), str(path)), raw_mask=False, spacing=spacing,
                              subject=subject, metadata=metadata))
    source = "mapping passed to open_dataset" if mapping is not None else (str(class_file) if fixed
                                                                             else "the Labelme label names")
    description = f"labelme: {len(refs)} JSON files in {folder_root} (classes from {source})"
    return LabelledDataset(folder_root, "labelme", classes, refs, None, source, description)


def component_shapes(mask: np.ndarray, cls: SegmentClass) -> List[dict]:
    """Labelme shapes for every 8-connected component of class ``cls`` in ``mask``: a polygon where the traced
    outline fills back to exactly the component, else a ``mask`` shape."""
    import cv2

    shapes = []
    count, components = instances(mask, cls.label)
    for component in range(1, count + 1):
        binary = (components == component).astype(np.uint8)
        contours, hierarchy = cv2.findContours(binary, cv2.RETR_CCOMP, cv2.CHAIN_APPROX_SIMPLE)
        outer = max(contours, key=len)
        points = outer.reshape(-1, 2)
        exact = False
        if len(contours) == 1 and len(points) >= 3:
            refill = np.zeros_like(binary)
            cv2.fillPoly(refill, [points.astype(np.int32)], 1)
            exact = np.array_equal(refill, binary)
        if exact:
            shapes.append({"label": cls.key, "points": points.astype(float).tolist(), "group_id": None,
                           "description": "", "shape_type": "polygon", "flags": {}, "mask": None})
        else:
            x, y, w, h = cv2.boundingRect(binary)
            shapes.append({"label": cls.key, "points": [[float(x), float(y)], [float(x + w - 1), float(y + h - 1)]],
                           "group_id": None, "description": "", "shape_type": "mask", "flags": {},
                           "mask": _encode_png(binary[y:y + h, x:x + w] * 255)})
    return shapes


class LabelmeWriter:
    """Writes one Labelme JSON and PNG per frame into ``<split>/``, and ``classes.json`` at the root."""

    format = "labelme"

    def __init__(self, root: Path, classes: Sequence[SegmentClass], compress_level: int = 1):
        self.root = Path(root)
        self.classes = tuple(classes)
        self.compress_level = compress_level

    def add(self, case: str, split: str, image: np.ndarray, mask: np.ndarray, **_) -> List[Path]:
        folder = self.root / split
        folder.mkdir(parents=True, exist_ok=True)
        image_path = folder / f"{case}.png"
        write_image(image_path, image, self.compress_level)
        shapes = []
        for cls in self.classes:
            shapes.extend(component_shapes(mask, cls))
        content = {"version": LABELME_VERSION, "flags": {}, "shapes": shapes, "imagePath": image_path.name,
                   "imageData": None, "imageHeight": int(mask.shape[0]), "imageWidth": int(mask.shape[1])}
        json_path = folder / f"{case}.json"
        json_path.write_text(json.dumps(content), encoding="utf-8")
        return [image_path, json_path]

    def close(self) -> List[Path]:
        return [write_classes_json(self.root, self.classes)]


def write_classes_json(root: Path, classes: Sequence[SegmentClass]) -> Path:
    """``classes.json`` (``{"labels": {"1": "nerve", ...}}``) that the readers use to number the classes."""
    path = Path(root) / "classes.json"
    content = {"labels": {str(c.label): c.key for c in classes},
               "names": {str(c.label): c.name for c in classes},
               "colors": {str(c.label): list(c.color_uint8()) for c in classes}}
    path.write_text(json.dumps(content, indent=2) + "\n", encoding="utf-8")
    return path
