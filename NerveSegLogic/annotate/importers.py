"""Frames into the annotation store from image folders, videos, Slicer sequence files and NerveSeg recordings.

Each frame is stored once (the store keys frames by the sha256 of their pixels), with its source, its index in the
source (0-based: file order, video frame number, sequence item), its geometry when the source has one, and the
subject it belongs to: the pseudonymous id the user gives, else the source's name (folder name, or file name
without its extension(s)).

Colour frames are converted to grey (ITU-R BT.601 luminance, as the live path does). Pixel data must fit uint8 or
uint16; anything else is refused with the file and what was found.
"""

from __future__ import annotations

import logging
import re
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, Iterator, List, Mapping, Optional, Sequence, Tuple, Union

import cv2
import numpy as np

from NerveSegLogic.frame import ImageGeometry
from ..imaging.bounds import ImageTooLarge, check_image_size
from ..imaging.placement import to_grey

from ..store.database import AnnotationStore, ConflictError, default_author, pixel_sha256
from ..classes import canonical_key
from ..imaging.files import ImageFileError, read_image_file
from ..datasets.dataset import DatasetError
from ..datasets.safe_paths import resolve_inside
from ..classes import segment_class
from ..scene.readback import read_segmentation_sequence_items, read_sequence_file

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp")
VIDEO_SUFFIXES = (".mp4", ".avi", ".mov", ".mkv", ".m4v", ".mpg", ".mpeg", ".wmv", ".webm")
SEQUENCE_SUFFIXES = (".seq.nrrd", ".nrrd")

PathLike = Union[str, Path]


class SourceError(ValueError):
    """A source that cannot be imported (the message names the file and what was wrong)."""


@dataclass
class SourceFrame:
    """One frame read from a source, before it is stored."""

    image: np.ndarray  # (H, W) uint8 or uint16
    index: int
    geometry: Optional[ImageGeometry] = None
    metadata: dict = field(default_factory=dict)


@dataclass
class ImportReport:
    """What an import did: frame ids in source order, how many were new, and model masks added (recordings)."""

    source: str
    subject: Optional[str]
    frame_ids: List[int] = field(default_factory=list)
    added: int = 0
    duplicates: int = 0
    masks_added: int = 0
    masks_skipped: int = 0
    #: Files of a folder that could not be read, as (file name, why); the import went on with the others.
    unreadable: List[Tuple[str, str]] = field(default_factory=list)

    def summary(self) -> str:
        text = (f"{self.source}: {len(self.frame_ids)} frames read, {self.added} new, {self.duplicates} already "
                f"in the store (same pixels), subject {self.subject!r}")
        if self.masks_added or self.masks_skipped:
            text += f"; {self.masks_added} recorded masks added, {self.masks_skipped} skipped (frame had a mask)"
        if self.unreadable:
            text += (f"; {len(self.unreadable)} file(s) could not be read and were skipped: "
                     + ", ".join(name for name, _ in self.unreadable[:10]) + (", ..." if len(self.unreadable) > 10
                                                                             else ""))
        return text


# ------------------------------------------------------------------------------------------------ source kinds

def source_kind(source: PathLike) -> str:
    """``"recording"`` (a folder with a .mrml), ``"folder"``, ``"sequence"``, ``"video"`` or ``"image"``;
    FileNotFoundError / SourceError when it is none of them."""
    path = Path(source)
    if not path.exists():
        raise FileNotFoundError(f"import source {path} does not exist")
    if path.is_dir():
        return "recording" if any(path.glob("*.mrml")) else "folder"
    name = path.name.lower()
    if name.endswith(SEQUENCE_SUFFIXES):
        return "sequence"
    if name.endswith(VIDEO_SUFFIXES):
        return "video"
    if name.endswith(IMAGE_SUFFIXES):
        return "image"
    raise SourceError(f"{path}: unknown kind of source; expected a folder of images {IMAGE_SUFFIXES}, a video "
                       f"{VIDEO_SUFFIXES}, a Slicer sequence (.seq.nrrd) or a recording folder (with a .mrml)")


def subject_from_source(source: PathLike) -> str:
    """The subject id a source implies: its folder name, or its file name without extensions."""
    path = Path(source)
    name = path.name
    for suffix in sorted(SEQUENCE_SUFFIXES + VIDEO_SUFFIXES + IMAGE_SUFFIXES, key=len, reverse=True):
        if name.lower().endswith(suffix):
            return name[: -len(suffix)] or name
    return name


def _natural_key(path: Path):
    """Sort 'img2' before 'img10'."""
    return [int(t) if t.isdigit() else t.lower() for t in re.split(r"(\d+)", path.name)]


def _grey(image: np.ndarray, where: str) -> np.ndarray:
    if image.ndim == 3 and image.shape[2] in (3, 4):
        # OpenCV gives BGR(A); the luminance weights are for RGB.
        image = cv2.cvtColor(image, cv2.COLOR_BGRA2RGBA if image.shape[2] == 4 else cv2.COLOR_BGR2RGB)
    try:
        image = to_grey(image)
    except ValueError as exc:
        raise SourceError(f"{where}: {exc}") from None
    return _fit_dtype(image, where)


def _fit_dtype(image: np.ndarray, where: str) -> np.ndarray:
    """uint8/uint16 as they are; other integer or integral float data that fit 0..65535 converted; else refused."""
    if image.dtype in (np.uint8, np.uint16):
        return image
    if image.size == 0:
        raise SourceError(f"{where}: empty image")
    low, high = float(image.min()), float(image.max())
    integral = np.issubdtype(image.dtype, np.integer) or bool(np.all(image == np.round(image)))
    if integral and low >= 0 and high <= 65535:
        return image.astype(np.uint8 if high <= 255 else np.uint16)
    raise SourceError(f"{where}: pixel type {image.dtype} with values {low:g}..{high:g} does not fit uint8 or "
                       "uint16 grey; convert the data first")


# ------------------------------------------------------------------------------------------------ readers

def read_folder(folder: PathLike, unreadable: Optional[List[Tuple[str, str]]] = None) -> Iterator[SourceFrame]:
    """Frames of every image file in ``folder`` (not its subfolders), in natural name order; multi-page TIFFs give
    one frame per page. metadata: ``{"file": name}`` (and ``"page"`` for TIFF pages).

    unreadable: when given, a file that cannot be read is appended as (name, why) and skipped, and the others are
    still read; when None, the first such file raises SourceError."""
    folder = Path(folder)
    files = sorted((p for p in folder.iterdir() if p.is_file() and p.name.lower().endswith(IMAGE_SUFFIXES)),
                   key=_natural_key)
    if not files:
        raise SourceError(f"{folder}: no image files ({', '.join(IMAGE_SUFFIXES)}) in this folder")
    index = 0
    for path in files:
        try:
            pages = list(_read_image_file(path))
        except SourceError as exc:
            if unreadable is None:
                raise
            unreadable.append((path.name, str(exc)))
            log.warning("skipped %s", exc)
            continue
        for page, image in pages:
            meta = {"file": path.name}
            if page is not None:
                meta["page"] = page
            yield SourceFrame(image=image, index=index, metadata=meta)
            index += 1


def _read_image_file(path: Path) -> Iterator[Tuple[Optional[int], np.ndarray]]:
    if path.suffix.lower() in (".tif", ".tiff"):
        ok, pages = cv2.imreadmulti(str(path), flags=cv2.IMREAD_UNCHANGED)
        if not ok or not pages:
            raise SourceError(f"{path}: OpenCV could not read this TIFF")
        for page, image in enumerate(pages):
            try:
                check_image_size(image.shape[0], image.shape[1], f"{path} page {page}")
            except ImageTooLarge as exc:
                raise SourceError(str(exc)) from None
            yield (page if len(pages) > 1 else None), _grey(image, f"{path} page {page}")
        return
    try:  # refuses an oversize image from its header, before decoding
        image = read_image_file(path)
    except ImageFileError as exc:
        raise SourceError(str(exc)) from None
    yield None, _grey(image, str(path))


def read_video(path: PathLike) -> Iterator[SourceFrame]:
    """Frames of a video file (cv2.VideoCapture), in order; metadata ``{"time_s": position, "fps": rate}``."""
    path = Path(path)
    capture = cv2.VideoCapture(str(path))
    if not capture.isOpened():
        raise SourceError(f"{path}: OpenCV could not open this video (unsupported codec or not a video)")
    try:
        fps = float(capture.get(cv2.CAP_PROP_FPS) or 0.0)
        index = 0
        while True:
            ok, image = capture.read()
            if not ok:
                break
            meta = {"time_s": round(index / fps, 6) if fps > 0 else None, "fps": fps or None}
            yield SourceFrame(image=_grey(image, f"{path} frame {index}"), index=index, metadata=meta)
            index += 1
    finally:
        capture.release()
    if index == 0:
        raise SourceError(f"{path}: the video has no readable frames")


# -- Slicer sequences -----------------------------------------------------------------------------------------

_SPACES = {
    "right-anterior-superior": np.array([1.0, 1.0, 1.0]), "RAS": np.array([1.0, 1.0, 1.0]),
    "left-posterior-superior": np.array([-1.0, -1.0, 1.0]), "LPS": np.array([-1.0, -1.0, 1.0]),
}


@dataclass
class SequenceData:
    """A 2D+t Slicer sequence: frames (N, H, W), one geometry for all, index values, segment metadata if any."""

    frames: np.ndarray
    geometry: ImageGeometry
    index_name: str
    index_unit: str
    index_values: List[str]
    data_node_class: str
    header: dict


def read_sequence(path: PathLike) -> SequenceData:
    """Read a Slicer volume sequence file (``.seq.nrrd``: 3 spatial axes of kind domain, one of size 1, plus one
    ``list`` axis, first or last as different Slicer versions write it) with pynrrd. Geometry comes from ``space``,
    ``space directions`` and ``space origin`` (LPS converted to RAS). Raises SourceError naming the field."""
    import nrrd  # pynrrd; imported here so the rest of the importers work without it

    path = Path(path)
    try:
        data, header = nrrd.read(str(path))  # Fortran index order: data axes follow the header's axes
    except Exception as exc:  # pynrrd raises several types for malformed files
        raise SourceError(f"{path}: not a readable NRRD file ({exc})") from None
    kinds = [str(k).lower() for k in header.get("kinds", [])]
    if len(kinds) != data.ndim:
        raise SourceError(f"{path}: field 'kinds' must name every axis ({data.ndim}), got {header.get('kinds')}")
    list_axes = [a for a, k in enumerate(kinds) if k == "list"]
    domain_axes = [a for a, k in enumerate(kinds) if k in ("domain", "space")]
    component_axes = [a for a, k in enumerate(kinds) if a not in list_axes and a not in domain_axes]
    if len(list_axes) != 1 or len(domain_axes) != 3 or len(component_axes) > 1:
        raise SourceError(f"{path}: field 'kinds' {header.get('kinds')} is not a Slicer volume sequence "
                           "(expected three domain axes and one list axis)")
    list_axis = list_axes[0]
    sizes = [data.shape[a] for a in domain_axes]
    if sizes[2] != 1:
        raise SourceError(f"{path}: field 'sizes' gives {sizes[2]} slices per item; 2D frames (one slice) expected")
    # -> (N, I, J, K[, C]) then (N, J, I[, C]) = (N, H, W[, C])
    order = [list_axis] + domain_axes + component_axes
    arranged = np.transpose(data, order)[:, :, :, 0]
    arranged = np.swapaxes(arranged, 1, 2)
    where = str(path)
    if component_axes:
        frames = np.stack([_grey(np.ascontiguousarray(f), where) for f in arranged])
    else:
        frames = np.stack([_fit_dtype(np.ascontiguousarray(f), where) for f in arranged])

    geometry = _sequence_geometry(header, domain_axes, where)
    index_name, index_unit = _axis_label(header, "labels", list_axis), _axis_label(header, "units", list_axis)
    values_text = header.get(f"axis {list_axis} index values")
    if values_text is None:  # older files keep the custom fields on axis 0 whatever the list axis is
        values_text = header.get("axis 0 index values")
    values = str(values_text).split() if values_text is not None else [str(i) for i in range(frames.shape[0])]
    if len(values) != frames.shape[0]:
        raise SourceError(f"{path}: field 'axis {list_axis} index values' has {len(values)} values for "
                           f"{frames.shape[0]} items")
    return SequenceData(frames=frames, geometry=geometry, index_name=index_name or "index", index_unit=index_unit,
                        index_values=values, data_node_class=str(header.get("DataNodeClassName", "")),
                        header=dict(header))


def _axis_label(header: dict, key: str, axis: int) -> str:
    values = header.get(key)
    if values is None or len(values) <= axis:
        return ""
    return str(values[axis]).strip('"')


def _sequence_geometry(header: dict, domain_axes: Sequence[int], where: str) -> ImageGeometry:
    space = header.get("space")
    if space is None:
        raise SourceError(f"{where}: field 'space' missing; expected right-anterior-superior or "
                           "left-posterior-superior")
    if space not in _SPACES:
        raise SourceError(f"{where}: field 'space' is {space!r}; expected one of {', '.join(_SPACES)}")
    flip = _SPACES[space]
    directions = np.asarray(header.get("space directions"), dtype=float)
    if directions.ndim != 2 or directions.shape[1] != 3:
        raise SourceError(f"{where}: field 'space directions' must give a 3-vector per spatial axis")
    axes = np.stack([directions[a] for a in domain_axes], axis=1) * flip[:, np.newaxis]  # columns i, j, k (RAS)
    if not np.all(np.isfinite(axes)):
        raise SourceError(f"{where}: field 'space directions' has 'none' for a spatial axis")
    origin = np.asarray(header.get("space origin", [0.0, 0.0, 0.0]), dtype=float) * flip
    matrix = np.eye(4)
    matrix[:3, :3] = axes
    matrix[:3, 3] = origin
    matrix = np.round(matrix, 9) + 0.0  # drop float noise from the text header and the -0.0 of sign flips
    try:
        return ImageGeometry.from_ijk_to_ras(matrix)
    except ValueError as exc:
        raise SourceError(f"{where}: field 'space directions': {exc}") from None


def read_sequence_frames(path: PathLike) -> Iterator[SourceFrame]:
    """Frames of a ``.seq.nrrd`` with the sequence's geometry; metadata ``{"sequence_index": value, "index_name":
    ..., "index_unit": ...}``."""
    seq = read_sequence(path)
    for i, image in enumerate(seq.frames):
        meta = {"sequence_index": seq.index_values[i], "index_name": seq.index_name}
        if seq.index_unit:
            meta["index_unit"] = seq.index_unit
        yield SourceFrame(image=image, index=i, geometry=seq.geometry, metadata=meta)


# -- recordings made by NerveSeg ------------------------------------------------------------------------------

_IMAGE_NODE_CLASSES = ("vtkMRMLScalarVolumeNode", "vtkMRMLVectorVolumeNode")
_MASK_NODE_CLASSES = ("vtkMRMLSegmentationNode", "vtkMRMLLabelMapVolumeNode")


@dataclass
class RecordingFiles:
    mrml: Path
    image_sequence: Path
    segmentation_sequence: Optional[Path]  # .seq.mrb (segmentation nodes) or .seq.nrrd (labelmap volumes)
    model_name: Optional[str] = None  # from the segmentation sequence's NerveSeg.model attribute, if the scene has it
    model_sha256: Optional[str] = None


def _mrml_attributes(text: str) -> Dict[str, str]:
    """MRML's ``attributes="key:value;key:value"``."""
    out = {}
    for item in text.split(";"):
        key, sep, value = item.partition(":")
        if sep:
            out[key] = value
    return out


def find_recording_files(folder: PathLike) -> RecordingFiles:
    """The scene file and the image / segmentation sequence files of a recording folder.

    Read from the .mrml: each ``<Sequence>`` element's DataNodeClassName says what it holds (volumes or
    segmentations) and its storage node names its file. Raises SourceError when there is not exactly one image
    sequence or more than one segmentation sequence.
    """
    folder = Path(folder)
    mrmls = sorted(folder.glob("*.mrml"))
    if len(mrmls) != 1:
        raise SourceError(f"{folder}: a recording folder holds exactly one .mrml scene, found {len(mrmls)}")
    try:
        root = ET.parse(mrmls[0]).getroot()
    except ET.ParseError as exc:
        raise SourceError(f"{mrmls[0]}: not a readable MRML scene ({exc})") from None
    by_id = {e.attrib["id"]: e for e in root.iter() if "id" in e.attrib}
    images, masks = [], []
    for element in root.iter("Sequence"):
        attributes = _mrml_attributes(element.attrib.get("attributes", ""))
        node_class = attributes.get("DataNodeClassName", "")
        storage_id = _mrml_attributes(element.attrib.get("references", "")).get("storage")
        storage = by_id.get(storage_id) if storage_id else None
        file_name = storage.attrib.get("fileName") if storage is not None else None
        if not file_name:
            continue

        try:  # a scene file is input too: its file names are followed only inside the recording folder
            where = f"{mrmls[0]}: sequence {element.attrib.get('name')!r} storage field 'fileName'"
            path = resolve_inside(folder, folder, file_name, where)
        except DatasetError as exc:
            raise SourceError(str(exc)) from None
        if not path.is_file():
            raise SourceError(f"{mrmls[0]}: sequence {element.attrib.get('name')!r} refers to {file_name}, "
                               "which is not in the folder")
        if node_class in _IMAGE_NODE_CLASSES:
            images.append(path)
        elif node_class in _MASK_NODE_CLASSES:
            masks.append((path, attributes))
    if len(images) != 1:
        raise SourceError(f"{mrmls[0]}: expected one image sequence in the recording, found "
                           f"{[p.name for p in images]}")
    if len(masks) > 1:
        raise SourceError(f"{mrmls[0]}: expected at most one segmentation sequence, found "
                           f"{[p.name for p, _ in masks]}")
    mask_path, mask_attributes = masks[0] if masks else (None, {})
    return RecordingFiles(mrml=mrmls[0], image_sequence=images[0], segmentation_sequence=mask_path,
                          model_name=mask_attributes.get("NerveSeg.model") or None,
                          model_sha256=mask_attributes.get("NerveSeg.modelSha256") or None)


def segment_classes_from_header(header: dict) -> Dict[int, str]:
    """``{label value: class key}`` from Slicer segmentation fields (``Segment<N>_LabelValue`` with
    ``Segment<N>_ID`` / ``_Name``) if the header has them; class keys are canonical catalogue keys where known."""
    out: Dict[int, str] = {}
    n = 0
    while f"Segment{n}_LabelValue" in header or f"Segment{n}_ID" in header:
        label = int(header.get(f"Segment{n}_LabelValue", n + 1))
        out[label] = _class_key(header.get(f"Segment{n}_ID"), header.get(f"Segment{n}_Name"), n)
        n += 1
    return out


def _class_key(segment_id, name, n: int) -> str:
    for candidate in (segment_id, name):
        if candidate:
            try:
                return canonical_key(str(candidate))
            except ValueError:
                pass
    return str(segment_id or name or f"segment_{n}")


def _recorded_masks(path: Path, classes: Optional[Mapping[int, str]], where: str):
    """(index values, masks (N, H, W) uint8, {label: class key}) of a recorded segmentation sequence."""
    if path.name.lower().endswith(".seq.nrrd"):
        seq = read_sequence(path)
        found = dict(classes) if classes else segment_classes_from_header(seq.header)
        return seq.index_values, seq.frames.astype(np.uint8), found
    if path.name.lower().endswith(".seq.mrb"):
        values = read_sequence_file(path).index_values
        items = read_segmentation_sequence_items(path)
        if classes:
            found = dict(classes)
        else:  # segments in their order get labels 1..N (the order LiveScene creates them: the card's label order)
            segments = items[0].segments if items else []
            found = {n + 1: _class_key(s.id, s.name, n) for n, s in enumerate(segments)}
        wanted = tuple(segment_class(key, label) for label, key in sorted(found.items()))
        return values, np.stack([item.labelmap(wanted) for item in items]) if items else np.zeros((0, 0, 0)), found
    raise SourceError(f"{where}: segmentation sequence {path.name} is neither .seq.nrrd nor .seq.mrb")


def _same_index(a: str, b: str) -> bool:
    if a == b:
        return True
    try:
        return abs(float(a) - float(b)) < 1e-6
    except ValueError:
        return False


# ------------------------------------------------------------------------------------------------ import

def import_frames(store: AnnotationStore, frames, source: str, subject: Optional[str],
                  progress: bool = False) -> ImportReport:
    """Store ``frames`` (an iterable of SourceFrame) from ``source``; returns what was added."""
    report = ImportReport(source=source, subject=subject)
    iterator = frames
    if progress:
        from tqdm import tqdm

        iterator = tqdm(frames, desc=f"importing {Path(source).name}", unit="frame")
    for item in iterator:
        existing = store.frame_by_sha256(pixel_sha256(item.image))
        record = store.add_frame(item.image, source=source, index=item.index, subject=subject,
                                 geometry=item.geometry, metadata=item.metadata)
        report.frame_ids.append(record.id)
        if existing is None:
            report.added += 1
        else:  # same pixels already stored (from this or another source): the first record is kept
            report.duplicates += 1
    return report


def import_source(store: AnnotationStore, source: PathLike, subject: Optional[str] = None,
                  spacing_mm: Optional[Sequence[float]] = None, author: Optional[str] = None,
                  classes: Optional[Mapping[int, str]] = None, progress: bool = False) -> ImportReport:
    """Import a folder of images, a video, a ``.seq.nrrd``, a single image or a recording folder.

    subject: pseudonymous subject id (default: derived from the source name). spacing_mm: (x, y) pixel size in mm
    for sources without geometry (folders, videos, images). author: who the recorded model masks are attributed to
    as importer and classes their label values (recordings only; see :func:`import_recording`).
    Raises FileNotFoundError / SourceError naming the file and what was wrong.
    """
    path = Path(source)
    kind = source_kind(path)
    subject = subject if subject is not None else subject_from_source(path)
    geometry = None
    if spacing_mm is not None:
        sx, sy = (float(v) for v in spacing_mm)
        geometry = ImageGeometry(spacing=(sx, sy, 1.0))
    if kind == "recording":
        return import_recording(store, path, subject=subject, author=author, classes=classes, progress=progress)
    unreadable: List[Tuple[str, str]] = []
    if kind == "folder":
        frames = read_folder(path, unreadable)
    elif kind == "video":
        frames = read_video(path)
    elif kind == "image":
        frames = (SourceFrame(image=image, index=i, metadata={"file": path.name} if page is None else
                              {"file": path.name, "page": page})
                  for i, (page, image) in enumerate(_read_image_file(path)))
    else:
        frames = read_sequence_frames(path)
    if geometry is not None and kind != "sequence":
        frames = (_with_geometry(f, geometry) for f in frames)
    report = import_frames(store, frames, str(path), subject, progress=progress)
    report.unreadable = unreadable
    return report


def _with_geometry(frame: SourceFrame, geometry: ImageGeometry) -> SourceFrame:
    frame.geometry = geometry
    return frame


def import_recording(store: AnnotationStore, folder: PathLike, subject: Optional[str] = None,
                     author: Optional[str] = None, classes: Optional[Mapping[int, str]] = None,
                     progress: bool = False) -> ImportReport:
    """Import a recording saved by NerveSeg (``nerveseg demo``, LiveScene.save): its image sequence, and, when the
    scene has a segmentation sequence (``.seq.mrb`` of segmentation nodes, or a labelmap ``.seq.nrrd``), each
    recorded mask as a "model" draft version of its frame, matched by sequence index value. Only frames without a
    version get one: a frame that already has a history keeps it untouched.

    classes: {label value: class key} to give the recorded masks (default: the segments in their order, labelled
    1..N, or the ``Segment<N>_`` header fields of a labelmap sequence). The model is named by the sequence node's
    ``NerveSeg.model`` attribute when the scene has one, else "recorded"; its card sha256 by ``NerveSeg.modelSha256``.
    """
    folder = Path(folder)
    files = find_recording_files(folder)
    subject = subject if subject is not None else subject_from_source(folder)
    frames = list(read_sequence_frames(files.image_sequence))
    report = import_frames(store, frames, str(folder), subject, progress=progress)
    if files.segmentation_sequence is None:
        return report
    where = str(files.segmentation_sequence)
    values, masks, found = _recorded_masks(files.segmentation_sequence, classes, where)
    if len(masks) and masks.shape[1:] != frames[0].image.shape:
        raise SourceError(f"{where}: masks are {masks.shape[2]}x{masks.shape[1]} but frames are "
                           f"{frames[0].image.shape[1]}x{frames[0].image.shape[0]} (width x height)")
    model_name = files.model_name or "recorded"
    who = author or default_author()
    for frame_id, item in zip(report.frame_ids, frames):
        j = next((k for k, v in enumerate(values) if _same_index(v, item.metadata["sequence_index"])), None)
        if j is None:
            continue  # no mask recorded for this item
        mask = masks[j]
        missing = {int(v) for v in np.unique(mask) if v} - set(found)
        if missing:
            raise SourceError(f"{where}: item {j} has label values {sorted(missing)} that the file does not name "
                               f"(known: {found}); give the classes, e.g. --labels 1=nerve,2=blood_vessel")
        if store.current(frame_id) is not None:
            report.masks_skipped += 1
            continue
        try:
            store.save_mask(frame_id, mask, found, who, "model", None, model_name=model_name,
                            model_sha256=files.model_sha256, comment=f"recorded in {folder.name}")
            report.masks_added += 1
        except ConflictError:  # someone labelled it meanwhile: theirs stays
            report.masks_skipped += 1
    return report
