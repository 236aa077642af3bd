"""What a labelled data set is, whatever format it came in: a list of lazily read :class:`Sample` s and its classes.

Every reader (``folder``, ``kaggle``, ``coco``, ``labelme``, ``slicer``, ``nnunet``) builds a
:class:`LabelledDataset` from a list of :class:`SampleRef`: the pairing of files is checked when the data set is
opened (a missing partner fails at once), pixels are read only when an item is indexed, and the checks that need
pixels (image/mask size, unknown label values) run then, or all at once with :meth:`LabelledDataset.validate`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np

from NerveSegLogic.classes import SegmentClass
from ..imaging.placement import to_grey


class DatasetError(ValueError):
    """A data set file is missing, unreadable or inconsistent. The message names the file, the field and what was
    expected."""


@dataclass
class Sample:
    """One labelled frame.

    image: (H, W) grey, uint8 or uint16 (colour files are converted to grey by luminance).
    mask: (H, W) uint8 class labels of the data set's :attr:`LabelledDataset.classes` (0 = background).
    name: the case name (file stem), unique within one data set part.
    spacing: pixel size in mm as (along a row = i = width, along a column = j = height), or None when unknown.
    subject: who the frame was acquired from (a pseudonym in exported sets), or None when the format has none.
    metadata: everything else the source says about the frame (``split``, ``region``, ``scanner``, files...).
    """

    image: np.ndarray
    mask: np.ndarray
    name: str
    spacing: Optional[Tuple[float, float]] = None
    subject: Optional[str] = None
    metadata: Dict = field(default_factory=dict)


#: What a reader's loader returns: the image (any grey/colour array) and the mask.
Loaded = Tuple[np.ndarray, np.ndarray]


@dataclass
class SampleRef:
    """A frame of a data set before its pixels are read.

    load: reads the files; returns (image, mask). With ``raw_mask`` the mask holds the file's own label values and
        the data set maps them through its label table; otherwise the loader already produced class labels.
    files: the files this frame comes from (named in error messages).
    """

    name: str
    load: Callable[[], Loaded]
    files: Tuple[str, ...]
    raw_mask: bool = True
    spacing: Optional[Tuple[float, float]] = None
    subject: Optional[str] = None
    metadata: Dict = field(default_factory=dict)


class LabelledDataset:
    """A sequence of :class:`Sample` with the classes its masks use.

    classes: the classes, labels 1..N contiguous, in label order.
    description: one line saying what was found where (format, counts, where the classes came from).
    """

    def __init__(self, root: Path, format: str, classes: Sequence[SegmentClass], refs: Sequence[SampleRef],
                 label_table: Optional[Mapping[int, int]] = None, class_source: str = "", description: str = ""):
        self.root = Path(root)
        self.format = format
        self.classes: Tuple[SegmentClass, ...] = tuple(classes)
        labels = [c.label for c in self.classes]
        if labels != list(range(1, len(labels) + 1)):
            raise DatasetError(f"{root}: class labels must be 1..N in order, got {labels}")
        self._refs: List[SampleRef] = list(refs)
        self._label_table = dict(label_table or {})
        self._lut = _lookup_table(self._label_table)
        self.class_source = class_source
        self.description = description or f"{format}: {len(self._refs)} frames in {root}"

    # -- sequence protocol ------------------------------------------------------------------------------------------

    def __len__(self) -> int:
        return len(self._refs)

    def __getitem__(self, index: int) -> Sample:
        if not -len(self._refs) <= index < len(self._refs):
            raise IndexError(f"index {index} out of range for a data set of {len(self._refs)} frames")
        return self._read(self._refs[index])

    def __iter__(self):
        for ref in self._refs:
            yield self._read(ref)

    def names(self) -> List[str]:
        """Case names in item order."""
        return [r.name for r in self._refs]

    def subjects(self) -> List[Optional[str]]:
        """Subject of each item (None where the format does not say), without reading pixels."""
        return [r.subject for r in self._refs]

    def ref(self, index: int) -> SampleRef:
        """The unread item (name, files, subject, metadata) without touching pixels."""
        return self._refs[index]

    @property
    def label_mapping(self) -> Dict[int, str]:
        """``{label value: class key}`` of the masks this data set returns."""
        return {c.label: c.key for c in self.classes}

    def subset(self, indices: Sequence[int]) -> "LabelledDataset":
        """The same data set restricted to ``indices`` (e.g. one fold of :func:`contiguous_folds`)."""
        return LabelledDataset(self.root, self.format, self.classes, [self._refs[i] for i in indices],
                               self._label_table, self.class_source,
                               f"{self.description} (subset of {len(indices)})")

    def validate(self) -> None:
        """Read every item; raise one :class:`DatasetError` listing every problem found (up to 20)."""
        problems = []
        for ref in self._refs:
            try:
                self._read(ref)
            except DatasetError as error:
                problems.append(str(error))
        if problems:
            shown = problems[:20]
            more = f"\n... and {len(problems) - 20} more" if len(problems) > 20 else ""
            raise DatasetError(f"{len(problems)} of {len(self._refs)} frames in {self.root} are invalid:\n"
                               + "\n".join(shown) + more)

    def __repr__(self) -> str:
        return f"LabelledDataset({self.description!r}, classes={[c.key for c in self.classes]})"

    # -- reading ----------------------------------------------------------------------------------------------------

    def _read(self, ref: SampleRef) -> Sample:
        try:
            image, mask = ref.load()
        except DatasetError:
            raise
        except Exception as error:  # a decoder's own exception: say which file and keep the cause
            raise DatasetError(f"{', '.join(ref.files)}: unreadable ({type(error).__name__}: {error})") from error
        image = np.asarray(image)
        try:
            image = to_grey(image)
        except ValueError as error:
            raise DatasetError(f"{ref.files[0]}: image {error}") from None
        if image.dtype not in (np.uint8, np.uint16):
            image = _integer_image(image, ref.files[0])
        mask = np.asarray(mask)
        if mask.ndim != 2:
            raise DatasetError(f"{ref.files[-1]}: mask must be one class index per pixel (H, W), got shape "
                               f"{mask.shape}")
        if mask.shape != image.shape:
            raise DatasetError(f"{ref.files[-1]}: mask size {mask.shape[1]}x{mask.shape[0]} (width x height) does not "
                               f"match its image {ref.files[0]} of {image.shape[1]}x{image.shape[0]}")
        mask = self._map_labels(mask, ref) if ref.raw_mask else mask.astype(np.uint8, copy=False)
        return Sample(image=image, mask=mask, name=ref.name, spacing=ref.spacing, subject=ref.subject,
                      metadata=dict(ref.metadata))

    def _map_labels(self, mask: np.ndarray, ref: SampleRef) -> np.ndarray:
        if mask.dtype.kind not in "ub" or mask.dtype.itemsize > 2:
            if mask.dtype.kind in "if" and mask.size and (mask.min() < 0 or np.any(mask != np.round(mask))):
                raise DatasetError(f"{ref.files[-1]}: mask values must be non-negative integers (class indices), "
                                   f"got dtype {mask.dtype}")
            if mask.size and mask.max() > 65535:
                raise DatasetError(f"{ref.files[-1]}: mask value {int(mask.max())} is not a class index")
            mask = mask.astype(np.uint16)
        mapped = self._lut[mask]
        if mapped.size and mapped.max() == _UNKNOWN:
            values = np.unique(mask[mapped == _UNKNOWN]).tolist()
            raise DatasetError(
                f"{ref.files[-1]}: unknown label value(s) {values} in the mask; the mapping knows "
                f"{_describe_table(self._label_table, self.classes)} (pass mapping={{value: class key}} to "
                "open_dataset, or put a classes.json beside the data)")
        return mapped.astype(np.uint8, copy=False)


_UNKNOWN = 256  # marker in the lookup table for a value the mapping does not know


def _lookup_table(table: Mapping[int, int]) -> np.ndarray:
    lut = np.full(65536, _UNKNOWN, dtype=np.uint16)
    lut[0] = 0
    for value, label in table.items():
        lut[int(value)] = int(label)
    return lut


def _describe_table(table: Mapping[int, int], classes: Sequence[SegmentClass]) -> str:
    keys = {c.label: c.key for c in classes}
    parts = ["0 -> background"] + [f"{v} -> {keys.get(l, 'background')}" for v, l in sorted(table.items()) if v != 0]
    return "{" + ", ".join(parts) + "}"


def _integer_image(image: np.ndarray, path: str) -> np.ndarray:
    """Float or wider-integer images become uint16 when they hold integers in 0..65535, else it is an error."""
    if image.size == 0:
        raise DatasetError(f"{path}: empty image")
    if np.issubdtype(image.dtype, np.integer) or np.all(np.isfinite(image)) and np.all(image == np.round(image)):
        lo, hi = float(image.min()), float(image.max())
        if lo >= 0 and hi <= 255:
            return image.astype(np.uint8)
        if lo >= 0 and hi <= 65535:
            return image.astype(np.uint16)
    raise DatasetError(f"{path}: image pixels must be uint8 or uint16 grey values; got dtype {image.dtype} with range "
                       f"{float(np.nanmin(image))}..{float(np.nanmax(image))}")
