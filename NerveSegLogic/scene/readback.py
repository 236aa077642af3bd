"""Reading a saved scene and its files back WITHOUT MRML, the way another tool would.

Used by the tests (a saved scene is checked with independent readers: the XML parser, pynrrd, slicerio) and by
importers that take a ``.seg.nrrd`` or a recording made by the module. Needs ``pynrrd``; ``.seg.nrrd`` and
``.seq.nrrd`` contents are read with ``slicerio`` (installed with the ``standalone`` extra, not inside Slicer).
"""

from __future__ import annotations

import tempfile
import xml.etree.ElementTree as ElementTree
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Dict, List, Optional, Sequence, Tuple, Union
from urllib.parse import unquote

import numpy as np

from NerveSegLogic.frame import ImageGeometry

if TYPE_CHECKING:  # pragma: no cover
    from NerveSegLogic.classes import SegmentClass

_LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])

PathLike = Union[str, Path]


# ------------------------------------------------------------------------------------------------ the .mrml


@dataclass
class SavedNode:
    """One node element of a ``.mrml`` file: its XML tag (``Volume``, ``Segmentation``, ``Sequence``...), id,
    name, all XML attributes, and the data file its storage node names (resolved; None for nodes without one)."""

    tag: str
    id: str
    name: str
    attributes: Dict[str, str]
    file: Optional[Path] = None
    references: Dict[str, List[str]] = field(default_factory=dict)


@dataclass
class SavedScene:
    mrml_path: Path
    nodes: List[SavedNode]

    def referenced_files(self) -> List[Path]:
        """Every data file the scene's storage nodes name (resolved, sorted, no duplicates)."""
        return sorted({n.file for n in self.nodes if n.file is not None and not n.tag.endswith("Storage")})

    def storage_files(self) -> List[Path]:
        """The files named by storage nodes themselves (``fileName`` and ``fileListMember*`` attributes)."""
        files = set()
        for node in self.nodes:
            if node.tag.endswith("Storage"):
                for key, value in node.attributes.items():
                    if (key == "fileName" or key.startswith("fileListMember")) and value:
                        files.add(_resolve(self.mrml_path, value))
        return sorted(files)

    def by_tag(self, tag: str) -> List[SavedNode]:
        return [n for n in self.nodes if n.tag == tag]

    def by_name(self, name: str) -> SavedNode:
        for node in self.nodes:
            if node.name == name:
                return node
        raise KeyError(f"{self.mrml_path}: no node named {name!r}; names: {', '.join(n.name for n in self.nodes)}")


def _resolve(mrml_path: Path, file_name: str) -> Path:
    path = Path(unquote(file_name))  # MRML writes file names URL-encoded (a space is %20)
    return (path if path.is_absolute() else mrml_path.parent / path).resolve()


def _references(value: str) -> Dict[str, List[str]]:
    out: Dict[str, List[str]] = {}
    for item in value.split(";"):
        if ":" in item:
            role, ids = item.split(":", 1)
            out[role] = [i for i in ids.split() if i]
    return out


def read_saved_scene(mrml_path: PathLike) -> SavedScene:
    """Parse a ``.mrml`` file: its nodes, their attributes and the data files they refer to.

    Raises FileNotFoundError when the file is missing and ValueError (naming the file) when it is not MRML XML.
    """
    mrml_path = Path(mrml_path).resolve()
    if not mrml_path.is_file():
        raise FileNotFoundError(f"no scene file {mrml_path}")
    try:
        root = ElementTree.parse(mrml_path).getroot()
    except ElementTree.ParseError as error:
        raise ValueError(f"{mrml_path} is not valid XML: {error}") from error
    if root.tag != "MRML":
        raise ValueError(f"{mrml_path}: root element is <{root.tag}>, expected <MRML>")
    elements = [e for e in root.iter() if e is not root]
    storage_files = {e.get("id"): _resolve(mrml_path, e.get("fileName")) for e in elements if e.get("fileName")}
    nodes = []
    for element in elements:
        references = _references(element.get("references", ""))
        storage_ids = references.get("storage", [])
        file = storage_files.get(storage_ids[0]) if storage_ids else None
        if element.get("fileName"):
            file = storage_files[element.get("id")]
        nodes.append(SavedNode(tag=element.tag, id=element.get("id", ""), name=element.get("name", ""),
                               attributes=dict(element.attrib), file=file, references=references))
    return SavedScene(mrml_path=mrml_path, nodes=nodes)


# ------------------------------------------------------------------------------------------------ volumes


def geometry_from_ijk_to_lps(ijk_to_lps: np.ndarray) -> ImageGeometry:
    """ImageGeometry (RAS mm) from an NRRD-style ijk-to-LPS matrix."""
    return ImageGeometry.from_ijk_to_ras(_LPS_TO_RAS @ np.asarray(ijk_to_lps, dtype=float))


def read_volume_file(path: PathLike) -> Tuple[np.ndarray, ImageGeometry]:
    """A single-slice ``.nrrd`` volume as ``((H, W) array, geometry in RAS mm)``; ValueError if not one slice."""
    import nrrd

    path = Path(path)
    voxels, header = nrrd.read(str(path))
    if voxels.ndim == 3 and voxels.shape[2] == 1:
        voxels = voxels[:, :, 0]
    if voxels.ndim != 2:
        raise ValueError(f"{path}: expected a single-slice image, got voxel array shape {voxels.shape}")
    directions = np.asarray(header["space directions"], dtype=float)
    ijk_to_lps = np.eye(4)
    ijk_to_lps[:3, : directions.shape[0]] = directions.T
    ijk_to_lps[:3, 3] = np.asarray(header["space origin"], dtype=float)
    if directions.shape[0] == 2:
        ijk_to_lps[2, 2] = 1.0
    space = header.get("space", "left-posterior-superior")
    if space in ("right-anterior-superior", "RAS"):
        ijk_to_lps = _LPS_TO_RAS @ ijk_to_lps
    return np.ascontiguousarray(voxels.T), geometry_from_ijk_to_lps(ijk_to_lps)


# ------------------------------------------------------------------------------------------------ sequences


@dataclass
class SequenceFile:
    """What a saved sequence holds: index name/unit, one index value per item, and the item class."""

    path: Path
    index_name: str
    index_unit: str
    index_values: List[str]
    data_node_class: str

    @property
    def item_count(self) -> int:
        return len(self.index_values)


def read_sequence_file(path: PathLike) -> SequenceFile:
    """Read the item list of a ``.seq.nrrd`` (volume sequence) or ``.seq.mrb`` (MRML sequence bundle).

    Raises ValueError naming the file when it is not a sequence file NerveSeg understands.
    """
    path = Path(path)
    name = path.name.lower()
    if name.endswith(".seq.nrrd"):
        import slicerio

        volume = slicerio.read_volume(str(path), skip_voxels=True)
        sequence = volume.get("sequence")
        if not sequence:
            raise ValueError(f"{path}: no sequence (list) axis in the NRRD header")
        return SequenceFile(path, sequence.get("indexName", ""), sequence.get("indexUnit", ""),
                            list(sequence.get("indexValues", [])), volume.get("DataNodeClassName", ""))
    if name.endswith(".seq.mrb"):
        with zipfile.ZipFile(path) as bundle:
            scenes = [n for n in bundle.namelist() if n.endswith(".mrml")]
            if len(scenes) != 1:
                raise ValueError(f"{path}: expected one .mrml inside the bundle, found {scenes}")
            root = ElementTree.fromstring(bundle.read(scenes[0]))
        sequences = [e for e in root.iter("Sequence")]
        if len(sequences) != 1:
            raise ValueError(f"{path}: expected one <Sequence> in the bundle's scene, found {len(sequences)}")
        element = sequences[0]
        pairs = [p for p in element.get("indexValues", "").split(";") if p]
        values = [p.split(":", 1)[1] for p in pairs]
        data_class = _attributes(element.get("attributes", "")).get("DataNodeClassName", "")
        if not data_class and pairs:
            # The bundle's own scene may not name the item class; the first item's XML tag does.
            first_id = pairs[0].split(":", 1)[0]
            tag = next((e.tag for e in root.iter() if e.get("id") == first_id), "")
            data_class = _ITEM_CLASSES.get(tag, f"vtkMRML{tag}Node" if tag else "")
        return SequenceFile(path, element.get("indexName", ""), element.get("indexUnit", ""), values, data_class)
    raise ValueError(f"{path}: not a sequence file (expected .seq.nrrd or .seq.mrb)")


_ITEM_CLASSES = {"Volume": "vtkMRMLScalarVolumeNode", "LabelMapVolume": "vtkMRMLLabelMapVolumeNode"}


def _attributes(value: str) -> Dict[str, str]:
    out = {}
    for item in value.split(";"):
        if ":" in item:
            key, val = item.split(":", 1)
            out[key] = val
    return out


def read_segmentation_sequence_items(path: PathLike) -> List["SegmentationFile"]:
    """Every item of a segmentation ``.seq.mrb``, in index order, read with :func:`load_segmentation_file`."""
    path = Path(path)
    sequence = read_sequence_file(path)
    with zipfile.ZipFile(path) as bundle, tempfile.TemporaryDirectory() as folder:
        scene_name = next(n for n in bundle.namelist() if n.endswith(".mrml"))
        root = ElementTree.fromstring(bundle.read(scene_name))
        element = next(iter(root.iter("Sequence")))
        item_ids = [p.split(":", 1)[0] for p in element.get("indexValues", "").split(";") if p]
        by_id = {e.get("id"): e for e in root.iter() if e.get("id")}
        items = []
        for item_id in item_ids:
            storage_id = _references(by_id[item_id].get("references", "")).get("storage", [None])[0]
            if storage_id is None:
                raise ValueError(f"{path}: sequence item {item_id} has no storage node")
            relative = unquote(by_id[storage_id].get("fileName"))
            member = str(Path(scene_name).parent / relative) if Path(scene_name).parent != Path(".") else relative
            bundle.extract(member, folder)
            items.append(load_segmentation_file(Path(folder) / member))
    if len(items) != sequence.item_count:
        raise ValueError(f"{path}: {sequence.item_count} index values but {len(items)} items")
    return items


# ------------------------------------------------------------------------------------------------ segmentations


@dataclass
class SegmentInfo:
    id: str
    name: str
    label_value: int
    layer: int
    color: Tuple[float, float, float]
    terminology: dict


@dataclass
class SegmentationFile:
    """A ``.seg.nrrd`` of one frame: its segments, their voxels (``(layers, H, W)``) and the geometry (RAS mm)."""

    path: Path
    segments: List[SegmentInfo]
    layers: np.ndarray
    geometry: ImageGeometry

    def mask(self, segment_id: str) -> np.ndarray:
        """Boolean ``(H, W)`` mask of one segment; KeyError lists the ids."""
        for segment in self.segments:
            if segment.id == segment_id:
                return self.layers[segment.layer] == segment.label_value
        raise KeyError(f"{self.path}: no segment {segment_id!r}; ids: {', '.join(s.id for s in self.segments)}")

    def labelmap(self, classes: Sequence["SegmentClass"]) -> np.ndarray:
        """``(H, W)`` uint8 labelmap in the classes' label values; a segment is matched by id (class key), else by
        name; the class listed first wins where segments overlap (as in ``read_mask``)."""
        out = np.zeros(self.layers.shape[1:], dtype=np.uint8)
        claimed = np.zeros(out.shape, dtype=bool)
        ids = {s.id: s for s in self.segments}
        names = {s.name: s for s in self.segments}
        for c in classes:
            segment = ids.get(c.key) or names.get(c.name)
            if segment is None:
                continue
            mask = (self.layers[segment.layer] == segment.label_value) & ~claimed
            out[mask] = c.label
            claimed |= mask
        return out


def load_segmentation_file(path: PathLike) -> SegmentationFile:
    """Read a single-slice ``.seg.nrrd`` with slicerio (no MRML). Raises ValueError naming the file when it is
    not a segmentation of one slice."""
    import slicerio

    path = Path(path)
    segmentation = slicerio.read_segmentation(str(path))
    voxels = np.asarray(segmentation["voxels"])
    if voxels.ndim == 3:
        voxels = voxels[np.newaxis]  # one layer
    if voxels.ndim != 4 or voxels.shape[3] != 1:
        raise ValueError(f"{path}: expected a single-slice segmentation, got voxel array shape {voxels.shape}")
    layers = np.ascontiguousarray(np.transpose(voxels[..., 0], (0, 2, 1)))  # (layers, i, j) -> (layers, H, W)
    segments = [SegmentInfo(id=s.get("id", ""), name=s.get("name", ""), label_value=int(s.get("labelValue", 1)),
                            layer=int(s.get("layer", 0)), color=tuple(s.get("color", (0.5, 0.5, 0.5))),
                            terminology=s.get("terminology", {}) or {})
                for s in segmentation.get("segments", [])]
    return SegmentationFile(path=path, segments=segments, layers=layers,
                            geometry=geometry_from_ijk_to_lps(segmentation["ijkToLPS"]))
