"""Saving an MRML scene as a folder 3D Slicer opens: ``<name>.mrml`` with its data files next to it.

Each storable node with data is written by its own MRML storage node (what Slicer's "Save" does): scalar volumes
as ``.nrrd``, segmentations as ``.seg.nrrd``, volume sequences as ``.seq.nrrd`` (one 4D NRRD; a ``.seq.mrb`` bundle
when the frames differ in size or geometry, which one NRRD header cannot hold), and segmentation sequences as
``.seq.mrb`` (a zipped scene with one ``.seg.nrrd`` per item: MRML has no ``.seq.nrrd`` writer for segmentation
sequences, and Slicer saves them the same way). The ``.mrml`` refers to them by paths relative to itself, so the
folder can be moved or zipped as a whole.

Everything is first written into a temporary folder beside the target and moved into place only when every file
was written, so a failed save leaves an earlier save in the folder as it was.
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import Dict, List, Union

from NerveSegLogic.scene import mrml


def _file_stem(name: str) -> str:
    stem = re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("._")
    return stem or "node"


def _has_data(node) -> bool:
    """Whether a storable node has anything its storage node could write."""
    if node.IsA("vtkMRMLSequenceNode"):
        return node.GetNumberOfDataNodes() > 0
    if node.IsA("vtkMRMLVolumeNode"):
        return node.GetImageData() is not None
    return True


def save_scene(scene, folder: Union[str, Path], name: str) -> Path:
    """Write ``scene`` into ``folder`` as ``<name>.mrml`` plus one data file per storable node; returns the .mrml.

    Meant for the scenes NerveSeg makes (LiveScene's, the annotation scene); inside Slicer, saving the
    application's whole scene is Slicer's own Save (it also handles nodes NerveSeg knows nothing about).
    Nodes without data (an empty sequence, a volume with no image yet) are left out of the .mrml for this save.
    The nodes themselves are not changed except that each gets a storage node pointing at its file.
    Raises OSError naming the node and file when a storage node fails to write, or when the .mrml cannot be written.
    """
    mrml.slicer_module()
    folder = Path(folder).expanduser().resolve()
    folder.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{_file_stem(name)}-saving-", dir=folder))
    skipped: List[object] = []
    final_names: Dict[object, str] = {}
    old_url, old_root = scene.GetURL(), scene.GetRootDirectory()
    try:
        used = {f"{_file_stem(name)}.mrml"}
        nodes = scene.GetNodesByClass("vtkMRMLStorableNode")
        for index in range(nodes.GetNumberOfItems()):
            node = nodes.GetItemAsObject(index)
            if not node.GetSaveWithScene():
                continue
            if not _has_data(node):
                skipped.append(node)
                continue
            storage = node.GetStorageNode()
            default_class = node.GetDefaultStorageNodeClassName()
            if storage is not None and default_class and not storage.IsA(default_class):
                # The right format can change between saves: a volume sequence whose frames stopped sharing one
                # size and geometry no longer fits a .seq.nrrd, and MRML then asks for a .seq.mrb bundle.
                node.SetAndObserveStorageNodeID(None)
                scene.RemoveNode(storage)
                storage = None
            if storage is None:
                node.AddDefaultStorageNode()
                storage = node.GetStorageNode()
            if storage is None:
                raise OSError(f"node {node.GetName()!r} ({node.GetClassName()}) has no storage node to save it with")
            extension = storage.GetDefaultWriteFileExtension() or "dat"
            file_name = f"{_file_stem(node.GetName())}.{extension}"
            counter = 2
            while file_name in used:
                file_name = f"{_file_stem(node.GetName())}_{counter}.{extension}"
                counter += 1
            used.add(file_name)
            storage.SetFileName(str(staging / file_name))
            if not storage.WriteData(node):
                raise OSError(f"could not write node {node.GetName()!r} ({node.GetClassName()}) to "
                              f"{folder / file_name}")
            final_names[storage] = file_name

        mrml_name = f"{_file_stem(name)}.mrml"
        for node in skipped:
            node.SetSaveWithScene(False)
        scene.SetRootDirectory(str(staging))
        scene.SetURL(str(staging / mrml_name))
        if not scene.Commit():
            raise OSError(f"could not write the scene file {folder / mrml_name}")

        # Everything is written: move it into place, the .mrml last so it never refers to a missing file.
        for file_name in sorted(final_names.values()):
            os.replace(staging / file_name, folder / file_name)
        os.replace(staging / mrml_name, folder / mrml_name)
        for storage, file_name in final_names.items():
            storage.SetFileName(str(folder / file_name))
        return folder / mrml_name
    finally:
        for node in skipped:
            node.SetSaveWithScene(True)
        scene.SetURL(old_url or "")
        scene.SetRootDirectory(old_root or "")
        shutil.rmtree(staging, ignore_errors=True)
