"""Putting one stored frame into MRML for a person to correct, and reading back what they painted.

The annotation panel (issue 6) calls :func:`load_frame` when it moves to a frame, lets the annotator edit the
segmentation with Slicer's Segment Editor, and calls :func:`read_mask` before saving the edit to the store.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Sequence, Tuple

import numpy as np

from NerveSegLogic.frame import ImageGeometry
from NerveSegLogic.scene import mrml
from NerveSegLogic.scene.nodes import ClassSegments, labelmap_of_segments, update_volume

if TYPE_CHECKING:  # pragma: no cover
    from NerveSegLogic.classes import SegmentClass

#: Name prefix of the nodes used for annotation (reused from frame to frame).
ANNOTATION_NAME = "NerveSeg annotation"

# The standalone scene used when the caller passes none: kept here because MRML nodes do not keep their scene
# alive, and so that consecutive frames reuse the same nodes.
_standalone_scene = None


def annotation_scene():
    """The standalone vtkMRMLScene that :func:`load_frame` uses when given no scene (created on first use)."""
    global _standalone_scene
    if _standalone_scene is None:
        _standalone_scene = mrml.new_scene()
    return _standalone_scene


def load_frame(image: np.ndarray, mask: np.ndarray, geometry: ImageGeometry,
               classes: Sequence["SegmentClass"], mrml_scene=None,
               name: str = ANNOTATION_NAME) -> Tuple[object, object]:
    """Show a frame and its mask for editing; returns ``(volume_node, segmentation_node)``.

    image: ``(H, W)`` uint8, uint16 or float32 grey frame; mask: ``(H, W)`` labelmap (values = class labels,
    0 = background; other values become background); geometry: the frame's (RAS mm).
    Reuses the nodes named ``"<name> image"`` and ``"<name> segmentation"`` when the scene has them (so Segment
    Editor keeps its selection from frame to frame), else creates them; with ``mrml_scene`` None they live in
    :func:`annotation_scene` (one standalone scene for the process, reached also by ``volume_node.GetScene()``). The segments (id = class key, named,
    coloured, coded) are rebuilt from ``mask``, discarding any unsaved edit of the previous frame.
    Raises ValueError when image and mask differ in shape, or for the errors of update_volume/ClassSegments.write.
    """
    image = np.asarray(image)
    mask = np.asarray(mask)
    if image.shape != mask.shape:
        raise ValueError(f"image shape {image.shape} and mask shape {mask.shape} differ")
    scene = annotation_scene() if mrml_scene is None else mrml_scene
    mrml.ensure_node_classes(scene)

    volume = mrml.first_node_by_name(scene, f"{name} image", "vtkMRMLScalarVolumeNode")
    if volume is None:
        volume = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", f"{name} image")
        volume.CreateDefaultDisplayNodes()
    segmentation = mrml.first_node_by_name(scene, f"{name} segmentation", "vtkMRMLSegmentationNode")
    if segmentation is None:
        segmentation = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", f"{name} segmentation")
        segmentation.CreateDefaultDisplayNodes()

    update_volume(volume, image, geometry)
    segments = ClassSegments(segmentation, classes)
    segments.rebuild()  # a fresh shared labelmap per frame: nothing of the previous frame's edit survives
    segments.write(mask, geometry)
    segmentation.SetReferenceImageGeometryParameterFromVolumeNode(volume)
    return volume, segmentation


def read_mask(segmentation_node, reference_volume_node, classes: Sequence["SegmentClass"]) -> np.ndarray:
    """The ``(H, W)`` uint8 labelmap a person painted, on the reference volume's pixel grid.

    Each class's segment (found by id = class key, else by name) is resampled (nearest neighbour) onto the
    reference volume's grid, whatever layer or extent Segment Editor left it in; voxels painted outside the frame
    are cut off. Where segments overlap (Segment Editor's "allow overlap"), the class listed FIRST in ``classes``
    wins. A class without a segment is background. Raises ValueError for a reference volume without voxels.
    """
    return labelmap_of_segments(segmentation_node, reference_volume_node, classes)
