"""Export a cohort: frames from the annotation store (or any labelled data set) to nnU-Net, COCO, Labelme,
image/mask pairs or Slicer ``.seg.nrrd``, split by subject, optionally de-identified, with a manifest.

What happens, in order (:func:`export_cohort`):
1. Selection: the frames whose current version has one of the wanted statuses (:func:`frames_from_store`).
2. Classes: each version's ``{label: key}`` is mapped (``class_map``, e.g. artery -> blood_vessel) and filtered
   (``classes``, which also sets the output order); output labels are 1..N.
3. Splits by subject (frames without a subject are grouped by their recording), seeded, stratified by
   ``metadata["region"]``; a check that no subject is in two splits.
4. Writing into a hidden temporary folder beside the target; de-identification on the way (pseudonyms, metadata
   allow-list, sector blanking/cropping); ``README.md`` and ``manifest.json`` last; every file and folder fsynced;
   then one rename into place (:mod:`.atomic_dir`). Any error or interruption removes the temporary folder: a
   half-written data set never appears, and what a killed run left (recognised by name and its marker file) is
   removed by the next export to the same target. An existing target is replaced only with ``force``, and never
   goes missing meanwhile: swapped atomically where the system can, else renamed aside only once the new one is
   complete and put back if the replacement fails.
5. One sector-check picture beside the export (with a sector mode), replacing the previous run's.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable, Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np

from NerveSegLogic.classes import SegmentClass, canonical_key, segment_class
from NerveSegLogic.frame import ImageGeometry

from .atomic_dir import (clean_leftovers, fsync_tree, glob_escape, marker_of, move_into_place, staging_path,
                         write_marker)
from .deidentify import (METADATA_ALLOW_LIST, SECTOR_MODES, SectorNotFound, allowed_metadata, apply_sector,
                         find_sector, load_or_create_salt, pseudonym, sector_thumbnail, write_sector_sheets)
from .manifest import dataset_card, known_source_of_folder, KNOWN_SOURCES, source_dataset, write_manifest
from .splits import SPLITS, check_subjects_disjoint, parse_fractions, split_by_subject
from .coco import CocoWriter, instances
from .labelme import LabelmeWriter
from .nnunet import NnunetWriter
from .pairs import MasksWriter
from .slicer import SlicerWriter

log = logging.getLogger(__name__)

EXPORT_FORMATS = ("nnunet", "coco", "labelme", "masks", "slicer")

LAYOUTS = {
    "nnunet": "nnU-Net v2 raw layout: `dataset.json`, `imagesTr/CASE_0000.png` + `labelsTr/CASE.png` (train and val), "
              "`imagesTs/` + `labelsTs/` (test), `splits_final.json` (train/val as one nnU-Net fold).",
    "coco": "COCO instance segmentation: `annotations/instances_<split>.json` (one instance per connected region, "
            "RLE masks, category id = class label) and `images/<split>/CASE.png`.",
    "labelme": "Labelme: `<split>/CASE.png` + `<split>/CASE.json` (one polygon per connected region; `mask` shapes "
               "where a polygon cannot be exact); `classes.json` numbers the classes.",
    "masks": "Image/mask pairs: `<split>/images/CASE.png` + `<split>/masks/CASE.png` (palette PNG, one class index "
             "per pixel); `classes.json` numbers the classes. Read masks with Pillow (`np.array(Image.open(path))` "
             "gives the indices); OpenCV's imread turns palettes into colours.",
    "masks-tif": "Image/mask pairs as TIFF (Kaggle layout): `<split>/CASE.tif` + `<split>/CASE_mask.tif` (palette "
                 "TIFF, one class index per pixel, not 0/255); `classes.json` numbers the classes. Read masks with "
                 "Pillow or tifffile; OpenCV's imread turns palettes into colours.",
    "slicer": "3D Slicer: `<split>/CASE.nrrd` (the frame as a one-slice volume) + `<split>/CASE.seg.nrrd` (one "
              "segment per class with terminology); `classes.json` numbers the classes.",
}


class ExportError(ValueError):
    """The export cannot be made as asked (target exists, bad option, unknown class...); nothing was written."""


@dataclass
class ExportFrame:
    """One frame chosen for export, before its pixels are read.

    load: returns (image (H, W) uint8/uint16, mask (H, W) uint8 in the version's label values).
    classes: the version's ``{label value: class key}``.
    """

    frame_id: int
    load: Callable[[], Tuple[np.ndarray, np.ndarray]]
    classes: Dict[int, str]
    subject: Optional[str] = None
    source: str = ""
    index: int = 0
    metadata: Dict = field(default_factory=dict)
    geometry: Optional[ImageGeometry] = None
    version_id: Optional[int] = None
    status: Optional[str] = None
    author: Optional[str] = None
    origin: Optional[str] = None
    model_name: Optional[str] = None
    model_sha256: Optional[str] = None
    annotated: Optional[str] = None
    image_sha256: Optional[str] = None


@dataclass
class ExportOptions:
    """What to export and how.

    fractions: target share of subjects per split, as :func:`parse_fractions` gives. classes: class keys to keep, in
    output label order (None keeps every class met). class_map: ``{from key: to key}`` merges classes.
    deidentify: pseudonyms, metadata allow-list, no dates; needs ``salt_file``. sector: none/blank/crop (works with
    or without ``deidentify``). image_format: png or tif for the ``masks`` format."""

    format: str
    statuses: Tuple[str, ...] = ("accepted",)
    fractions: Mapping[str, float] = field(default_factory=lambda: parse_fractions("70,15,15"))
    seed: int = 0
    classes: Optional[Sequence[str]] = None
    class_map: Mapping[str, str] = field(default_factory=dict)
    deidentify: bool = False
    salt_file: Optional[Path] = None
    sector: str = "none"
    force: bool = False
    image_format: str = "png"
    title: str = "NerveSeg ultrasound cohort"
    license_text: Optional[str] = None
    progress: bool = True


@dataclass
class ExportResult:
    root: Path
    counts: Dict[str, int]
    classes: Tuple[SegmentClass, ...]
    manifest: Path
    check_pictures: List[Path]
    seconds: float

    def summary(self) -> str:
        per_split = ", ".join(f"{s} {self.counts.get(s, 0)}" for s in SPLITS)
        return f"exported {sum(self.counts.values())} frames to {self.root} ({per_split})"


# -- sources of frames -----------------------------------------------------------------------------------------------

#: Which version of a selected frame is exported: its current one, or (``consensus``) its latest consensus version
#: when it has one (``nerveseg annotate consensus``), even where a later version is current.
PREFER = ("current", "consensus")


def frames_from_store(store, statuses: Sequence[str] = ("accepted",), prefer: str = "current") -> List[ExportFrame]:
    """Frames of an :class:`~NerveSegLogic.store.database.AnnotationStore` whose current version has one of
    ``statuses``; pixels are read from the store when the frame is written. ``prefer`` (:data:`PREFER`): export
    each frame's current version, or its latest ``consensus`` version where it has one whose status is one of
    ``statuses`` (the others: their current version)."""
    if prefer not in PREFER:
        raise ValueError(f"--prefer {prefer!r} unknown; expected one of {', '.join(PREFER)}")
    records = store.frames(statuses=list(statuses))
    current = {}
    if hasattr(store, "summaries"):  # versions without their mask pixels: cheap for thousands of frames
        wanted = {r.id for r in records}
        current = {v.frame_id: v for v in store.summaries(current_only=True) if v.frame_id in wanted}
        if prefer == "consensus":
            for v in store.summaries():  # oldest first: the last consensus version of a frame wins
                if v.frame_id in wanted and v.origin == "consensus" and v.status in statuses:
                    current[v.frame_id] = v
    frames = []
    for record in records:
        version = current.get(record.id) or store.current(record.id)
        if version is None:
            continue

        def load(frame_id=record.id, version_id=version.id):
            return store.image(frame_id), store.version(version_id).mask

        frames.append(ExportFrame(
            frame_id=record.id, load=load, classes=dict(version.classes), subject=record.subject,
            source=record.source, index=record.index, metadata=dict(record.metadata or {}),
            geometry=record.geometry, version_id=version.id, status=version.status, author=version.author,
            origin=version.origin, model_name=version.model_name, model_sha256=version.model_sha256,
            annotated=version.created, image_sha256=record.sha256))
    return frames


def frames_from_dataset(dataset, source: Optional[str] = None) -> List[ExportFrame]:
    """Frames of a :class:`~NerveSegLogic.datasets.readers.LabelledDataset` (to convert a data set between
    formats); subject and spacing as the data set gives them; a public source named in the folder's
    ATTRIBUTION.md/README.md/sample.json (usgra-seg) is recorded so the card credits it."""
    frames = []
    mapping = dataset.label_mapping
    known = known_source_of_folder(dataset.root)
    for i, name in enumerate(dataset.names()):
        ref = dataset.ref(i)

        def load(i=i):
            sample = dataset[i]
            return sample.image, sample.mask

        spacing = ref.spacing
        geometry = ImageGeometry(spacing=(spacing[0], spacing[1], 1.0)) if spacing else None
        metadata = {k: v for k, v in ref.metadata.items() if k not in ("files", "split")}
        if known:  # credit the public source in the card, and say which scanner it used
            metadata.setdefault("dataset", known)
            metadata.setdefault("scanner", KNOWN_SOURCES[known]["scanner"])
        frames.append(ExportFrame(frame_id=i + 1, load=load, classes=dict(mapping), subject=ref.subject,
                                  source=source or str(dataset.root), index=i, metadata=metadata,
                                  geometry=geometry, status="accepted"))
    return frames


# -- classes ---------------------------------------------------------------------------------------------------------

def plan_classes(frames: Sequence[ExportFrame], classes: Optional[Sequence[str]], class_map: Mapping[str, str]
                 ) -> Tuple[Tuple[SegmentClass, ...], Dict[Tuple[Tuple[int, str], ...], np.ndarray]]:
    """Output classes and, per distinct version class table, a 256-entry lookup table version label -> output
    label. Raises ExportError for an unknown class name."""
    try:
        mapped = {canonical_key(k): canonical_key(v) for k, v in class_map.items()}
        wanted = [canonical_key(k) for k in classes] if classes else None
    except ValueError as error:
        raise ExportError(str(error)) from None
    order: List[str] = list(dict.fromkeys(wanted)) if wanted else []
    tables = {}
    for frame in frames:
        signature = tuple(sorted((int(l), k) for l, k in frame.classes.items()))
        if signature in tables:
            continue
        for label, key in signature:
            try:
                target = mapped.get(canonical_key(key), canonical_key(key))
            except ValueError as error:
                raise ExportError(f"frame {frame.frame_id} version {frame.version_id}: {error}") from None
            if wanted is None and target not in order:
                order.append(target)
        tables[signature] = None
    out_classes = tuple(segment_class(key, label) for label, key in enumerate(order, start=1))
    label_of = {c.key: c.label for c in out_classes}
    luts = {}
    for signature in tables:
        lut = np.zeros(256, dtype=np.uint8)
        for label, key in signature:
            target = mapped.get(canonical_key(key), canonical_key(key))
            lut[label] = label_of.get(target, 0)
        luts[signature] = lut
    return out_classes, luts


def _writer(options: ExportOptions, root: Path, classes):
    if options.format == "nnunet":
        return NnunetWriter(root, classes, dataset_name=options.title)
    if options.format == "coco":
        return CocoWriter(root, classes, description=options.title)
    if options.format == "labelme":
        return LabelmeWriter(root, classes)
    if options.format == "masks":
        return MasksWriter(root, classes, image_format=options.image_format)
    if options.format == "slicer":
        return SlicerWriter(root, classes)
    raise ExportError(f"unknown export format {options.format!r}; expected one of {', '.join(EXPORT_FORMATS)}")


def check_picture_path(out: Path) -> Path:
    """Where the sector check picture of an export to ``out`` goes: beside it, never inside."""
    out = Path(out)
    return out.parent / f"{out.name}.sector-check.png"


# -- the export ------------------------------------------------------------------------------------------------------

def export_cohort(frames: Sequence[ExportFrame], out: Path, options: ExportOptions,
                  on_frame: Optional[Callable[[int, ExportFrame], None]] = None) -> ExportResult:
    """Write ``frames`` as a data set at ``out`` (see the module docstring). ``on_frame(n, frame)`` is called after
    each frame is written (progress hooks, tests). Raises ExportError before writing anything for a bad request;
    any error while writing leaves no trace at ``out``."""
    import time

    started = time.perf_counter()
    out = Path(out).absolute()
    if options.format not in EXPORT_FORMATS:
        raise ExportError(f"unknown export format {options.format!r}; expected one of {', '.join(EXPORT_FORMATS)}")
    if options.sector not in SECTOR_MODES:
        raise ExportError(f"sector mode {options.sector!r} unknown; expected one of {', '.join(SECTOR_MODES)}")
    if out.exists() and not options.force:
        raise ExportError(f"{out} already exists; choose another --out or pass --force to replace it")
    if not frames:
        raise ExportError(f"no frames to export (statuses {', '.join(options.statuses)}); "
                          "nothing was written")
    salt = None
    if options.deidentify:
        if options.salt_file is None:
            raise ExportError("de-identification needs a salt file (--salt-file) kept outside the export")
        salt_path = Path(options.salt_file).absolute()
        if salt_path == out or out in salt_path.parents:
            raise ExportError(f"the salt file {salt_path} must not be inside the export {out}")
        salt = load_or_create_salt(salt_path)

    classes, luts = plan_classes(frames, options.classes, options.class_map)
    if not classes:
        raise ExportError("no classes left to export after --classes/--map")

    # Subjects: frames without one are kept together by recording, which is the safe unit.
    subject_keys = [f.subject if f.subject is not None else f"recording:{f.source}" for f in frames]
    unknown = sum(f.subject is None for f in frames)
    if unknown:
        log.warning("%d frames have no subject; they are split by recording (source) instead", unknown)
    regions = [f.metadata.get("region") for f in frames]
    strata = regions if any(r is not None for r in regions) else None
    splits = split_by_subject(subject_keys, options.fractions, options.seed, strata)
    check_subjects_disjoint(subject_keys, splits)

    out.parent.mkdir(parents=True, exist_ok=True)
    clean_leftovers(out)
    tmp = staging_path(out)
    write_marker(tmp, out, "partial")
    tmp.mkdir()
    try:
        entries, thumbnails, class_counts, sources = _write_frames(frames, splits, subject_keys, classes, luts,
                                                                   options, tmp, salt, on_frame)
        now = datetime.now(timezone.utc).replace(microsecond=0)
        # a de-identified export states only the day: an export made right after a scan would date the scan
        created = now.date().isoformat() if options.deidentify else now.isoformat()
        deid = ({"subject_ids": "HMAC-SHA256, secret salt kept outside the export",
                 "metadata_allow_list": list(METADATA_ALLOW_LIST), "sector": options.sector}
                if options.deidentify else None)
        selection = {"statuses": list(options.statuses), "seed": options.seed,
                     "split": ",".join(f"{options.fractions.get(s, 0) * 100:g}" for s in SPLITS),
                     "classes": list(options.classes) if options.classes else None,
                     "map": dict(options.class_map) or None}
        layout = LAYOUTS["masks-tif" if options.format == "masks" and options.image_format == "tif"
                         else options.format]
        card = dataset_card(title=options.title, format=options.format, created=created, classes=classes,
                            frames=entries, class_counts=class_counts, selection=selection,
                            deidentification=deid, layout=layout, sources=sources,
                            license_text=options.license_text)
        (tmp / "README.md").write_text(card, encoding="utf-8")
        counts = {s: sum(e["split"] == s for e in entries) for s in SPLITS}
        header = {"nerveseg_export": options.format, "title": options.title, "created": created,
                  "classes": [{"label": c.label, "key": c.key, "name": c.name, "color": list(c.color_uint8()),
                               "terminology": c.terminology()} for c in classes],
                  "splits": counts, "selection": selection, "deidentified": bool(options.deidentify),
                  "deidentification": deid}
        write_manifest(tmp, header, entries)
        fsync_tree(tmp)
        _move_into_place(tmp, out, options.force)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        marker_of(tmp).unlink(missing_ok=True)
        raise
    pictures = []
    if thumbnails:
        pictures = [_write_check_picture(thumbnails, check_picture_path(out))]
    return ExportResult(root=out, counts=counts, classes=classes, manifest=out / "manifest.json",
                        check_pictures=pictures, seconds=time.perf_counter() - started)


def _write_frames(frames, splits, subject_keys, classes, luts, options, tmp, salt, on_frame):
    from tqdm import tqdm

    writer = _writer(options, tmp, classes)
    entries, thumbnails = [], []
    class_counts: Dict[str, Dict[str, Dict[str, int]]] = {}
    sources: Dict[str, int] = {}
    order = sorted(range(len(frames)), key=lambda i: (SPLITS.index(splits[i]), frames[i].frame_id))
    bar = tqdm(order, total=len(order), desc=f"export {options.format}", unit="frame", disable=not options.progress)
    for n, i in enumerate(bar, start=1):
        frame, split = frames[i], splits[i]
        image, raw_mask = frame.load()
        image, raw_mask = np.asarray(image), np.asarray(raw_mask)
        if image.ndim != 2 or raw_mask.shape != image.shape:
            raise ExportError(f"frame {frame.frame_id}: image {image.shape} and mask {raw_mask.shape} must be the "
                              "same (H, W)")
        if image.dtype not in (np.uint8, np.uint16):
            raise ExportError(f"frame {frame.frame_id}: image dtype {image.dtype}; expected uint8 or uint16")
        signature = tuple(sorted((int(l), k) for l, k in frame.classes.items()))
        if raw_mask.dtype != np.uint8:
            raise ExportError(f"frame {frame.frame_id} version {frame.version_id}: mask dtype {raw_mask.dtype}; "
                              "expected uint8 class labels")
        present = np.flatnonzero(np.bincount(raw_mask.ravel(), minlength=256))  # faster than np.unique
        unknown = set(present.tolist()) - {0} - {l for l, _ in signature}
        if unknown:
            raise ExportError(f"frame {frame.frame_id} version {frame.version_id}: mask values {sorted(unknown)} "
                              f"are not in the version's classes {dict(signature)}")
        mask = luts[signature][raw_mask]
        case = f"frame_{frame.frame_id:06d}"
        crop = (0, 0)
        if options.sector != "none":
            try:
                sector = find_sector(image)
            except SectorNotFound as error:
                raise ExportError(f"frame {frame.frame_id} ({case}): ultrasound sector not found ({error}); "
                                  "check the frame or export with --sector none") from None
            thumbnails.append(sector_thumbnail(image, sector, case))
            image, mask, crop = apply_sector(image, mask, sector, options.sector)
        spacing = tuple(float(s) for s in frame.geometry.spacing[:2]) if frame.geometry else None
        files = writer.add(case, split, image, mask, geometry=frame.geometry, spacing=spacing, crop_offset=crop)
        known = source_dataset(frame.source, frame.metadata) or ""
        sources[known] = sources.get(known, 0) + 1
        counts = class_counts.setdefault(split, {})
        for cls in classes:
            regions, _ = instances(mask, cls.label)
            entry = counts.setdefault(cls.key, {"frames": 0, "instances": 0})
            entry["frames"] += int(regions > 0)
            entry["instances"] += regions
        entries.append(_frame_entry(frame, case, split, subject_keys[i], spacing, crop, image.shape, files, tmp,
                                    options, salt))
        if on_frame is not None:
            on_frame(n, frame)
    writer.close()
    return entries, thumbnails, class_counts, sources


def _frame_entry(frame: ExportFrame, case, split, subject_key, spacing, crop, shape, files, tmp, options, salt):
    deid = options.deidentify
    entry = {
        "case": case, "split": split,
        "subject": pseudonym(subject_key, salt) if deid else frame.subject,
        "frame_id": frame.frame_id, "version_id": frame.version_id, "status": frame.status,
        "annotator": frame.author, "origin": frame.origin,
        "model_name": frame.model_name, "model_sha256": frame.model_sha256,
        "source": pseudonym(frame.source, salt, prefix="rec-") if deid else frame.source,
        "source_index": frame.index,
        "spacing_mm": list(spacing) if spacing else None,
        "metadata": allowed_metadata(frame.metadata) if deid else _json_safe(frame.metadata),
        "files": [Path(p).relative_to(tmp).as_posix() for p in files],
    }
    if not deid:
        entry["annotated"] = frame.annotated
        entry["image_sha256"] = frame.image_sha256
    if options.sector != "none":
        entry["sector"] = {"mode": options.sector, "offset_xy": list(crop), "size_wh": [int(shape[1]), int(shape[0])]}
    return entry


def _json_safe(metadata: Mapping) -> Dict:
    return json.loads(json.dumps(dict(metadata), default=str))


def _move_into_place(tmp: Path, out: Path, force: bool) -> None:
    """Put the complete ``tmp`` at ``out``; an existing ``out`` is replaced only with ``force`` (no gap)."""
    if out.exists() and not force:
        raise ExportError(f"{out} appeared during the export; not replacing it without --force")
    move_into_place(tmp, out, replace=force)


def _write_check_picture(thumbnails, path: Path) -> Path:
    """ONE picture of every found sector at ``path`` (written aside and renamed, so it is never half a picture);
    extra pages that older versions wrote beside it (``NAME.sector-check-2.png``...) are removed."""
    staged = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.png")
    try:
        write_sector_sheets(thumbnails, staged, columns=max(6, int(np.ceil(np.sqrt(len(thumbnails))))),
                            per_sheet=max(1, len(thumbnails)))
        os.replace(staged, path)
    finally:
        staged.unlink(missing_ok=True)
    for old_page in path.parent.glob(glob_escape(path.name[:-len(".png")]) + "-*.png"):
        if old_page.name[len(path.name) - len(".png") + 1:-len(".png")].isdigit():
            old_page.unlink(missing_ok=True)
    return path
