"""From the labels a file uses to NerveSeg classes: the small, explicit mapping every reader goes through.

Two kinds of source:
- index masks (folder, kaggle, nnU-Net): ``{label value in the file: class key}``, e.g. usgra-seg ``{1: "nerve",
  2: "blood_vessel"}``; value 0 is always background.
- named annotations (COCO, Labelme, Slicer): ``{class name in the file: class key}``, e.g. ``{"artery":
  "blood_vessel", "vein": "blood_vessel"}``; without a mapping each name is read as a catalogue key or alias
  (:func:`NerveSegLogic.classes.canonical_key`).

Several source labels may map to one key (merging); a key of ``None``/``"background"`` drops that label to 0. The
resulting classes are numbered 1..N in the order their keys first appear (index masks: by increasing source value).

A ``classes.json`` beside the data (``{"labels": {"1": "nerve", "2": "blood_vessel"}}``, what NerveSeg's exports
write; ``sample.json`` of the bundled sample has the same block) or an nnU-Net ``dataset.json``
(``{"labels": {"background": 0, "nerve": 1}}``) is used when no mapping is passed.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Dict, Iterable, List, Mapping, Optional, Sequence, Tuple, Union

from NerveSegLogic.classes import SegmentClass, canonical_key, segment_class

from .dataset import DatasetError

#: Target spellings that mean "this source label is background".
BACKGROUND_KEYS = (None, "", "background", "_background_")

#: Files beside the data that say what the labels mean, in the order they are looked for.
CLASS_FILES = ("classes.json", "sample.json", "dataset.json")


def _is_background(key) -> bool:
    return key is None or (isinstance(key, str) and key.strip().lower() in BACKGROUND_KEYS)


def _key(name: str, where: str) -> str:
    try:
        return canonical_key(name)
    except ValueError as error:
        raise DatasetError(f"{where}: {error}") from None


def _number(keys: Iterable[str]) -> Tuple[SegmentClass, ...]:
    ordered: List[str] = []
    for key in keys:
        if key not in ordered:
            ordered.append(key)
    return tuple(segment_class(key, label) for label, key in enumerate(ordered, start=1))


def index_mapping(mapping: Mapping[Union[int, str], Optional[str]], where: str
                  ) -> Tuple[Tuple[SegmentClass, ...], Dict[int, int]]:
    """Classes and ``{source value: output label}`` for index masks. ``where`` names the mapping's origin in errors.

    Raises DatasetError for a value that is not an integer 1..65535 or a class name the catalogue does not know."""
    table_keys: Dict[int, Optional[str]] = {}
    for value, key in mapping.items():
        try:
            number = int(value)
        except (TypeError, ValueError):
            raise DatasetError(f"{where}: label value {value!r} is not an integer") from None
        if not 0 <= number <= 65535:
            raise DatasetError(f"{where}: label value {number} out of range 0..65535")
        table_keys[number] = None if _is_background(key) else _key(str(key), where)
    if table_keys.get(0):
        raise DatasetError(f"{where}: value 0 is background and cannot be mapped to {table_keys[0]!r}")
    classes = _number(k for _, k in sorted(table_keys.items()) if k is not None)
    label_of = {c.key: c.label for c in classes}
    table = {v: (label_of[k] if k is not None else 0) for v, k in table_keys.items()}
    table[0] = 0
    return classes, table


def name_mapping(names: Sequence[str], mapping: Optional[Mapping[str, Optional[str]]], where: str,
                 fixed: Optional[Mapping[int, str]] = None, found_in: Optional[Mapping[str, str]] = None
                 ) -> Tuple[Tuple[SegmentClass, ...], Dict[str, int]]:
    """Classes and ``{class name in the files: output label}`` for named annotations.

    names: every class name the files use, in the order first met. mapping: explicit ``{name: key}``; names not in
    it are an error. fixed: ``{label: key}`` from a classes file, which then sets the labels (and may list classes
    no file uses). found_in: ``{name: file where it was first met}`` for the error message. Raises DatasetError
    naming the file (or ``where``) for an unknown name."""
    keys: Dict[str, Optional[str]] = {}
    for name in names:
        if found_in and name in found_in:
            where_name = f"{found_in[name]} (classes from {where})"
        else:
            where_name = where
        if mapping is not None:
            if name not in mapping:
                raise DatasetError(f"{where_name}: unknown class name {name!r}; the mapping knows "
                                   f"{sorted(mapping)} (pass mapping={{name in file: class key}})")
            target = mapping[name]
            keys[name] = None if _is_background(target) else _key(str(target), f"{where_name} (mapping of {name!r})")
        else:
            keys[name] = None if _is_background(name) else _key(name, f"{where_name}: class name {name!r} (pass "
                                                                      "mapping={name in file: class key})")
    if fixed:
        classes = tuple(segment_class(key, int(label)) for label, key in sorted(fixed.items(), key=lambda kv: int(kv[0])))
        if [c.label for c in classes] != list(range(1, len(classes) + 1)):
            raise DatasetError(f"{where}: classes file labels must be 1..N, got {sorted(int(l) for l in fixed)}")
        label_of = {c.key: c.label for c in classes}
        for name, key in keys.items():
            if key is not None and key not in label_of:
                raise DatasetError(f"{found_in.get(name, where) if found_in else where}: class {name!r} ({key}) is "
                                   f"not in the classes file "
                                   f"{ {c.label: c.key for c in classes} }")
    else:
        classes = _number(k for k in keys.values() if k is not None)
        label_of = {c.key: c.label for c in classes}
    return classes, {name: (label_of[key] if key is not None else 0) for name, key in keys.items()}


def read_class_file(folder: Path) -> Tuple[Optional[Dict[int, str]], Optional[Tuple[float, float]], Optional[Path]]:
    """``({label: class name}, spacing (x, y) mm, file)`` from the first class file found in ``folder``, or
    ``(None, None, None)``. Raises DatasetError for a class file that cannot be parsed."""
    for name in CLASS_FILES:
        path = Path(folder) / name
        if not path.is_file():
            continue
        try:
            content = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as error:
            raise DatasetError(f"{path}: not readable JSON ({error})") from None
        labels = content.get("labels") if isinstance(content, dict) else None
        if not isinstance(labels, dict):
            if name == "classes.json":
                raise DatasetError(f"{path}: field 'labels' must be an object {{\"1\": \"nerve\", ...}}")
            continue
        table = _labels_block(labels, path)
        spacing = content.get("spacing_mm")
        spacing_xy = None
        if isinstance(spacing, (list, tuple)) and len(spacing) >= 2:
            spacing_xy = (float(spacing[0]), float(spacing[1]))
        return table, spacing_xy, path
    return None, None, None


def _labels_block(labels: Mapping, path: Path) -> Dict[int, str]:
    table: Dict[int, str] = {}
    for k, v in labels.items():
        if isinstance(v, (int, float)) and not isinstance(v, bool):  # nnU-Net: {"nerve": 1}
            if isinstance(v, float) and v != int(v):
                raise DatasetError(f"{path}: field 'labels' value {v!r} for {k!r} is not an integer label")
            value, name = int(v), str(k)
        elif isinstance(v, (list, tuple)):
            raise DatasetError(f"{path}: field 'labels' entry {k!r}: {list(v)} is an nnU-Net region (several labels); "
                               "NerveSeg reads one class per label value")
        else:  # NerveSeg: {"1": "nerve"}
            try:
                value = int(k)
            except ValueError:
                raise DatasetError(f"{path}: field 'labels' key {k!r} must be a label value (\"1\") or the value "
                                   "must be one (nnU-Net style)") from None
            name = str(v)
        if value == 0:
            if not _is_background(name):
                raise DatasetError(f"{path}: field 'labels': value 0 is background, got {name!r}")
            continue
        table[value] = name
    return table
