"""3D Slicer segmentations: ``NAME.seg.nrrd`` with its volume ``NAME.nrrd``, read and written with slicerio.

Reading: each ``.seg.nrrd`` pairs with the volume of the same name (or, when a folder holds exactly one of each,
with that one). A volume of one slice is one frame; a volume of K slices (or a sequence of K single-slice frames)
with a segmentation of K slices is K frames (2D+t), named ``NAME_0000`` ... The segmentation may cover only part
of the volume (Slicer crops to the segments' extent): it is placed by its origin, which must fall on the volume's
voxel grid with the same axes. Overlapping segments (several layers) are painted in segment order. Segment names
map through ``mapping={name: class key}``; by default the name, or else the segment's terminology type
("Nerve", "Artery"), is read as a catalogue key.

Writing (:class:`SlicerWriter`): ``<split>/<case>.nrrd`` (the frame as a one-slice volume, geometry in LPS from the
frame's ImageGeometry) and ``<split>/<case>.seg.nrrd`` with one segment per class: ID = class key, name, colour,
label value, layer 0, extent, and the class's terminology in the tags, as Slicer writes them.
"""

from __future__ import annotations

from functools import partial
from pathlib import Path
from typing import Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np

from NerveSegLogic.classes import SegmentClass, canonical_key
from NerveSegLogic.frame import ImageGeometry

from .dataset import DatasetError, LabelledDataset, SampleRef
from .labels import name_mapping, read_class_file
from .layout import frame_extras, manifest_frames, split_parts
from .labelme import write_classes_json

_LPS = np.diag([-1.0, -1.0, 1.0, 1.0])  # RAS <-> LPS (its own inverse)


def _seg_files(folder: Path) -> List[Path]:
    return sorted(p for p in folder.glob("*.seg.nrrd") if p.is_file())


def _volume_files(folder: Path) -> List[Path]:
    return sorted(p for p in folder.glob("*.nrrd") if p.is_file() and not p.name.endswith(".seg.nrrd"))


def looks_like_slicer(path: Path) -> Optional[str]:
    if path.is_file() and path.name.endswith(".seg.nrrd"):
        return "a Slicer .seg.nrrd file"
    if path.is_dir():
        parts = split_parts(path, lambda f: bool(_seg_files(f)))
        if parts:
            return f"{sum(len(_seg_files(p)) for _, p in parts)} .seg.nrrd files with their volumes"
    return None


def _stem(path: Path) -> str:
    name = path.name
    for suffix in (".seg.nrrd", ".seq.nrrd", ".nrrd"):
        if name.endswith(suffix):
            return name[:-len(suffix)]
    return path.stem


def _volume_frames(volume_path: Path) -> int:
    import nrrd

    try:
        header = nrrd.read_header(str(volume_path))
    except Exception as error:
        raise DatasetError(f"{volume_path}: unreadable NRRD header ({error})") from None
    sizes = [int(s) for s in header["sizes"]]
    kinds = header.get("kinds") or ["domain"] * len(sizes)
    domain = [s for s, k in zip(sizes, kinds) if k in ("domain", "space")]
    listed = [s for s, k in zip(sizes, kinds) if k not in ("domain", "space")]
    if len(domain) == 2:
        return int(np.prod(listed)) if listed else 1
    if len(domain) == 3:
        slices = domain[2]
        frames = int(np.prod(listed)) if listed else 1
        if slices > 1 and frames > 1:
            raise DatasetError(f"{volume_path}: a sequence of 3D volumes ({sizes}); expected 2D frames")
        return max(slices, frames)
    raise DatasetError(f"{volume_path}: field 'sizes' {sizes} is not a 2D image, a 2D+t stack or a sequence")


def _frame_stack(volume: dict, path: Path) -> Tuple[np.ndarray, np.ndarray]:
    """(frames (T, H, W), ijkToLPS of frame 0 as a 3D grid) from a slicerio volume dict."""
    voxels = volume["voxels"]
    if volume.get("component"):
        raise DatasetError(f"{path}: a vector/colour volume ({volume['component']}); expected a grey image")
    ijk = np.asarray(volume["ijkToLPS"], dtype=float)
    if volume.get("spaceDimension", 3) == 2:
        grid = np.eye(4)
        grid[:2, :2] = ijk[:2, :2]
        grid[:2, 3] = ijk[:2, 2]
        ijk = grid
        voxels = voxels[:, :, np.newaxis] if voxels.ndim == 2 else voxels[:, :, np.newaxis, :]
    if voxels.ndim == 4:  # (i, j, 1, t): a sequence of single-slice frames
        if voxels.shape[2] != 1:
            raise DatasetError(f"{path}: a sequence of 3D volumes {voxels.shape}; expected 2D frames")
        voxels = voxels[:, :, 0, :]
    return np.transpose(voxels, (2, 1, 0)), ijk  # (i, j, k) -> (k, j, i) = (T, H, W)


def _load_stack(seg_path: Path, volume_path: Path, labels_of: Mapping[str, int]) -> Tuple[np.ndarray, np.ndarray,
                                                                                           np.ndarray]:
    import slicerio

    try:
        volume = slicerio.read_volume(str(volume_path))
    except Exception as error:
        raise DatasetError(f"{volume_path}: unreadable volume ({error})") from None
    images, vol_ijk = _frame_stack(volume, volume_path)
    try:
        seg = slicerio.read_segmentation(str(seg_path))
    except Exception as error:
        raise DatasetError(f"{seg_path}: unreadable segmentation ({error})") from None
    voxels = seg["voxels"]
    layers = voxels[np.newaxis] if voxels.ndim == 3 else voxels  # (layer, i, j, k)
    seg_ijk = np.asarray(seg["ijkToLPS"], dtype=float)
    if not np.allclose(seg_ijk[:3, :3], vol_ijk[:3, :3], atol=1e-4):
        raise DatasetError(f"{seg_path}: segmentation axes/spacing {seg_ijk[:3, :3].tolist()} differ from its volume "
                           f"{volume_path} {vol_ijk[:3, :3].tolist()}; resample it onto the volume in Slicer first")
    offset = np.linalg.solve(vol_ijk, seg_ijk[:, 3])[:3]
    if not np.allclose(offset, np.round(offset), atol=1e-3):
        raise DatasetError(f"{seg_path}: field 'space origin' is not on the voxel grid of {volume_path} "
                           f"(offset {offset.tolist()} voxels)")
    i0, j0, k0 = (int(v) for v in np.round(offset))
    t_count, height, width = images.shape
    masks = np.zeros((t_count, height, width), dtype=np.uint8)
    for segment in seg["segments"]:
        label = labels_of.get(segment.get("name", segment.get("id")), 0)
        if not label:
            continue
        layer = layers[int(segment.get("layer", 0))]
        region = np.transpose(layer == int(segment.get("labelValue", 1)), (2, 1, 0))  # (k, j, i)
        ks, js, is_ = np.nonzero(region)
        ks, js, is_ = ks + k0, js + j0, is_ + i0
        inside = (ks >= 0) & (ks < t_count) & (js >= 0) & (js < height) & (is_ >= 0) & (is_ < width)
        if not np.all(inside):
            raise DatasetError(f"{seg_path}: segment {segment.get('name')!r} reaches outside its volume "
                               f"{volume_path} ({width}x{height}x{t_count} voxels)")
        masks[ks, js, is_] = label
    return images, masks, vol_ijk


def _load_frame(seg_path: Path, volume_path: Path, labels_of: Mapping[str, int], index: int):
    images, masks, _ = _load_stack(seg_path, volume_path, labels_of)
    return images[index], masks[index]


def _segment_name_keys(names_and_types: Sequence[Tuple[str, Optional[str]]]) -> Optional[Dict[str, str]]:
    """Default mapping: a segment's name as a class, else its terminology type; None when every name is known."""
    mapping, needed = {}, False
    for name, meaning in names_and_types:
        try:
            mapping[name] = canonical_key(name)
        except ValueError:
            try:
                mapping[name] = canonical_key(meaning or "")
                needed = True
            except ValueError:
                return None  # let name_mapping report the unknown name
    return mapping if needed else None


def read_slicer(root: Path, mapping: Optional[Mapping] = None, split: Optional[str] = None) -> LabelledDataset:
    """Frames of every ``.seg.nrrd`` + volume pair in ``root`` (a file, a folder, or split folders)."""
    import slicerio

    if root.is_file():
        parts, folder_root = [(None, root.parent)], root.parent
        seg_files_of = {root.parent: [root]}
    else:
        parts, folder_root = split_parts(root, lambda f: bool(_seg_files(f))), root
        seg_files_of = {p: _seg_files(p) for _, p in parts}
    if split is not None:
        parts = [p for p in parts if p[0] == split]
    if not parts:
        raise DatasetError(f"{root}: no .seg.nrrd files" + (f" in split {split!r}" if split else ""))
    names_and_types: List[Tuple[str, Optional[str]]] = []
    found_in: Dict[str, str] = {}
    entries = []
    for split_name, folder in parts:
        volumes = {_stem(v): v for v in _volume_files(folder)}
        segs = seg_files_of[folder]
        for seg_path in segs:
            volume_path = volumes.get(_stem(seg_path))
            if volume_path is None and len(segs) == 1 and len(volumes) == 1:
                volume_path = next(iter(volumes.values()))
            if volume_path is None:
                raise DatasetError(f"{seg_path}: missing partner file: no volume {folder / (_stem(seg_path) + '.nrrd')}")
            try:
                header = slicerio.read_segmentation(str(seg_path), skip_voxels=True)
            except Exception as error:
                raise DatasetError(f"{seg_path}: unreadable segmentation header ({error})") from None
            for segment in header.get("segments", []):
                name = str(segment.get("name", segment.get("id")))
                meaning = (segment.get("terminology") or {}).get("type", [None, None, None])[2:3]
                if name not in found_in:
                    names_and_types.append((name, meaning[0] if meaning else None))
                    found_in[name] = f"{seg_path} segment {segment.get('id')!r} field 'Name'"
            entries.append((split_name, seg_path, volume_path, _volume_frames(volume_path)))
    fixed, class_file = None, None
    effective = mapping
    if mapping is None:
        for folder in [p for _, p in parts] + [folder_root]:
            fixed, _, class_file = read_class_file(folder)
            if fixed:
                break
        effective = _segment_name_keys(names_and_types)
    where = "mapping passed to open_dataset" if mapping is not None else "segment names in the .seg.nrrd files"
    classes, labels_of = name_mapping([n for n, _ in names_and_types], effective, where, fixed, found_in)
    provenance = manifest_frames(folder_root)
    refs = []
    for split_name, seg_path, volume_path, count in entries:
        spacing = _spacing_of(volume_path)
        for index in range(count):
            case = _stem(seg_path) if count == 1 else f"{_stem(seg_path)}_{index:04d}"
            subject, m_spacing, metadata = frame_extras(provenance.get(case))
            if split_name:
                metadata.setdefault("split", split_name)
            metadata.setdefault("files", [str(volume_path), str(seg_path)])
            if count > 1:
                metadata["slice"] = index
            refs.append(SampleRef(case, partial(_load_frame, seg_path, volume_path, labels_of, index),
                                  (str(volume_path), str(seg_path)), raw_mask=False, spacing=m_spacing or spacing,
                                  subject=subject, metadata=metadata))
    source = "mapping passed to open_dataset" if mapping is not None else (str(class_file) if fixed
                                                                             else "the segment names")
    description = f"slicer: {len(refs)} frames from {len(entries)} .seg.nrrd files in {folder_root} (classes from {source})"
    return LabelledDataset(folder_root, "slicer", classes, refs, None, source, description)


def _spacing_of(volume_path: Path) -> Optional[Tuple[float, float]]:
    import nrrd

    header = nrrd.read_header(str(volume_path))
    directions = header.get("space directions")
    if directions is None:
        return None
    rows = [np.asarray(r, dtype=float) for r in directions if r is not None and np.all(np.isfinite(r))]
    if len(rows) < 2:
        return None
    return float(np.linalg.norm(rows[0])), float(np.linalg.norm(rows[1]))


def ijk_to_lps(geometry: Optional[ImageGeometry], spacing: Optional[Tuple[float, float]] = None,
               offset_xy: Tuple[int, int] = (0, 0)) -> np.ndarray:
    """4x4 voxel -> LPS mm of a frame, optionally of a crop starting at pixel ``offset_xy`` (x = column, y = row)."""
    if geometry is None:
        geometry = ImageGeometry(spacing=(spacing[0], spacing[1], 1.0)) if spacing else ImageGeometry()
    ijk = geometry.ijk_to_ras()
    ijk[:3, 3] = ijk[:3, 3] + ijk[:3, :3] @ np.array([offset_xy[0], offset_xy[1], 0.0])
    return _LPS @ ijk


def segments_for(classes: Sequence[SegmentClass], mask: np.ndarray) -> List[dict]:
    """slicerio segment dicts for ``classes`` in a (i, j, 1) labelmap built from ``mask`` (H, W)."""
    from slicerio.segmentation import terminology_entry_from_string

    segments = []
    for cls in classes:
        rows, cols = np.nonzero(mask == cls.label)
        extent = ([int(cols.min()), int(cols.max()), int(rows.min()), int(rows.max()), 0, 0] if rows.size
                  else [0, -1, 0, -1, 0, -1])  # Slicer's empty extent
        segments.append({"id": cls.key, "name": cls.name, "color": list(cls.color), "colorAutoGenerated": False,
                         "nameAutoGenerated": False, "labelValue": cls.label, "layer": 0, "extent": extent,
                         "terminology": terminology_entry_from_string(cls.terminology()), "status": "completed"})
    return segments


class SlicerWriter:
    """Writes ``<split>/<case>.nrrd`` + ``<split>/<case>.seg.nrrd`` per frame, and ``classes.json`` at the root."""

    format = "slicer"

    def __init__(self, root: Path, classes: Sequence[SegmentClass], compression_level: int = 1):
        self.root = Path(root)
        self.classes = tuple(classes)
        self.compression_level = compression_level

    def add(self, case: str, split: str, image: np.ndarray, mask: np.ndarray,
            geometry: Optional[ImageGeometry] = None, spacing: Optional[Tuple[float, float]] = None,
            crop_offset: Tuple[int, int] = (0, 0), **_) -> List[Path]:
        import slicerio

        folder = self.root / split
        folder.mkdir(parents=True, exist_ok=True)
        ijk = ijk_to_lps(geometry, spacing, crop_offset)
        volume_path = folder / f"{case}.nrrd"
        slicerio.write_volume(str(volume_path), {"voxels": image.T[:, :, np.newaxis], "ijkToLPS": ijk,
                                                 "spaceDimension": 3}, compression_level=self.compression_level)
        seg_path = folder / f"{case}.seg.nrrd"
        slicerio.write_segmentation(str(seg_path), {
            "voxels": np.ascontiguousarray(mask.T[:, :, np.newaxis]), "ijkToLPS": ijk, "encoding": "gzip",
            "containedRepresentationNames": ["Binary labelmap"], "masterRepresentation": "Binary labelmap",
            "referenceImageExtentOffset": [0, 0, 0], "segments": segments_for(self.classes, mask),
        }, compression_level=self.compression_level)
        return [volume_path, seg_path]

    def close(self) -> List[Path]:
        return [write_classes_json(self.root, self.classes)]
