"""Open a labelled data set in any supported format: ``open_dataset(path)``.

Formats (see each module for the layout and defaults):

========  =====================================================================  ===========================
format    layout                                                                  module
========  =====================================================================  ===========================
folder    ``images/`` + ``masks/`` with the same stems (usgra-seg)                :mod:`.pairs`
kaggle    ``N_M.tif`` + ``N_M_mask.tif`` in one folder                            :mod:`.pairs`
coco      instance JSON (+ images), rasterised with pycocotools                   :mod:`.coco`
labelme   one JSON per image, polygons; image path relative to the JSON           :mod:`.labelme`
slicer    ``NAME.seg.nrrd`` + its volume ``NAME.nrrd`` (2D or 2D+t)               :mod:`.slicer`
nnunet    ``dataset.json`` + ``imagesTr/`` + ``labelsTr/``                        :mod:`.nnunet`
store     an annotation store file (``project.nsdb`` / ``.db``): accepted frames   :mod:`.store_reader`
========  =====================================================================  ===========================

An annotation store gives the current version of each frame whose status is accepted (``statuses`` widens it), the
classes each frame labels in ``Sample.metadata["labelled"]``, and its recordings (``sources()``) for splits.
Each of the file formats also reads a NerveSeg export's split folders (``train/``, ``val/``, ``test/``), setting
``Sample.metadata["split"]``, and takes subject, spacing and metadata from its ``manifest.json``.

Example::

    from NerveSegLogic.datasets.readers import open_dataset
    data = open_dataset("Resources/Sample")           # format and classes found automatically
    print(data.description, [c.key for c in data.classes])
    sample = data[0]                                  # Sample(image (H, W) uint8, mask (H, W) uint8, name, ...)
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Callable, Mapping, Optional, Sequence, Tuple, Union

from ..store.location import is_url
from .coco import looks_like_coco, read_coco
from .dataset import DatasetError, LabelledDataset, Sample, SampleRef
from .labelme import looks_like_labelme, read_labelme
from .nnunet import looks_like_nnunet, read_nnunet
from .pairs import looks_like_folder, looks_like_kaggle, read_folder, read_kaggle
from .slicer import looks_like_slicer, read_slicer
from .splits import block_splits, contiguous_folds
from .store_reader import looks_like_store, read_store

__all__ = ["open_dataset", "detect_format", "FORMATS", "Sample", "SampleRef", "LabelledDataset", "DatasetError",
           "block_splits", "contiguous_folds"]

log = logging.getLogger(__name__)

#: Format names in the order auto-detection tries them (the most specific first).
FORMATS = ("store", "nnunet", "coco", "slicer", "folder", "kaggle", "labelme")


def _reader(format: str) -> Tuple[Callable, Callable]:
    """(looks_like, read) of a format; imported on demand so opening one format loads only its libraries."""
    if format == "store":
        return looks_like_store, read_store
    if format == "folder":
        return looks_like_folder, read_folder
    if format == "kaggle":
        return looks_like_kaggle, read_kaggle
    if format == "nnunet":
        return looks_like_nnunet, read_nnunet
    if format == "coco":
        return looks_like_coco, read_coco
    if format == "labelme":
        return looks_like_labelme, read_labelme
    if format == "slicer":
        return looks_like_slicer, read_slicer
    raise DatasetError(f"unknown data set format {format!r}; expected 'auto' or one of {', '.join(FORMATS)}")


def detect_format(path: Union[str, Path]) -> Tuple[str, str]:
    """(format, what was found) for ``path``; DatasetError saying what is there when no format matches."""
    path = Path(path)
    if not path.exists():
        raise DatasetError(f"{path}: no such file or folder")
    for name in FORMATS:
        looks_like, _ = _reader(name)
        found = looks_like(path)
        if found:
            return name, found
    if path.is_dir():
        listing = sorted(p.name + ("/" if p.is_dir() else "") for p in path.iterdir())[:12]
        contents = ", ".join(listing) or "nothing"
    else:
        contents = f"a {path.suffix or 'plain'} file"
    raise DatasetError(f"{path}: no labelled data set format recognised (found {contents}); expected one of: "
                       "images/ + masks/ folders, N_M.tif + N_M_mask.tif, COCO JSON, Labelme JSON, .seg.nrrd + "
                       ".nrrd, an nnU-Net folder with dataset.json, or a NerveSeg annotation store (.nsdb / .db)")


def open_dataset(path: Union[str, Path], format: str = "auto", mapping: Optional[Mapping] = None,
                 split: Optional[str] = None, statuses: Optional[Sequence[str]] = None) -> LabelledDataset:
    """Open the labelled data set at ``path``.

    format: ``"auto"`` (detected; the data set's ``description`` says what was found) or one of :data:`FORMATS`.
    mapping: ``{label value: class key}`` for index masks (folder, kaggle, nnunet) or ``{class name in the file:
        class key}`` for named formats (coco, labelme, slicer); ``None`` uses the format's default, or a
        ``classes.json`` / ``dataset.json`` beside the data when there is one. Keys may merge (several -> one class)
        or drop (``None`` -> background). The data set's classes are numbered 1..N.
    split: only this split (``train``, ``val``, ``test``) of a data set that has split folders or files.
    statuses: an annotation store's version statuses to use (default: accepted only); refused for other formats.

    The pairing of files is checked now; pixels are read when an item is indexed (``validate()`` reads all).
    Raises DatasetError (a ValueError) naming the file, the field and what was expected. An annotation store on a
    server (``postgresql://USER@HOST[:PORT]/DB``) is a store."""
    if is_url(path):
        if format not in ("auto", "store"):
            raise DatasetError(f"{path}: an annotation store's address, not a {format} data set")
        _, read = _reader("store")
        dataset = read(str(path), mapping=mapping, split=split, statuses=statuses)
        log.info("%s", dataset.description)
        return dataset
    path = Path(path)
    if not path.exists():
        raise DatasetError(f"{path}: no such file or folder")
    if format == "auto":
        format, found = detect_format(path)
        log.info("%s: detected %s data set (%s)", path, format, found)
    _, read = _reader(format)
    if format == "store":
        dataset = read(path, mapping=mapping, split=split, statuses=statuses)
    elif statuses is not None:
        raise DatasetError(f"{path}: statuses ({', '.join(statuses)}) choose frames of an annotation store, but this "
                           f"is a {format} data set")
    else:
        dataset = read(path, mapping=mapping, split=split)
    log.info("%s", dataset.description)
    return dataset
