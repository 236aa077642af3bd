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


#: Node names of the prompt tools (a box and include/exclude clicks) on the annotated frame.
PROMPT_BOX, PROMPT_INCLUDE, PROMPT_EXCLUDE = "box", "include", "exclude"


def prompt_nodes(mrml_scene=None, name: str = ANNOTATION_NAME) -> Tuple[object, object, object]:
    """``(roi, include points, exclude points)``: the markups the annotator places on the frame to prompt a
    promptable model (a box: ``vtkMRMLMarkupsROINode``; clicks: point lists, include green, exclude red). Reused
    when the scene has them, else created empty."""
    scene = annotation_scene() if mrml_scene is None else mrml_scene
    nodes = []
    for suffix, class_name, colour in ((PROMPT_BOX, "vtkMRMLMarkupsROINode", (1.0, 0.8, 0.0)),
                                       (PROMPT_INCLUDE, "vtkMRMLMarkupsFiducialNode", (0.1, 0.9, 0.1)),
                                       (PROMPT_EXCLUDE, "vtkMRMLMarkupsFiducialNode", (0.9, 0.1, 0.1))):
        node = mrml.first_node_by_name(scene, f"{name} {suffix}", class_name)
        if node is None:
            node = scene.AddNewNodeByClass(class_name, f"{name} {suffix}")
            node.CreateDefaultDisplayNodes()
            node.SetSaveWithScene(False)
            if node.GetDisplayNode() is not None:
                node.GetDisplayNode().SetSelectedColor(*colour)
                node.GetDisplayNode().SetColor(*colour)
        nodes.append(node)
    return tuple(nodes)  # type: ignore[return-value]


def read_prompts(volume_node, roi, include, exclude):
    """``(box, points)`` in the frame's pixels from the prompt markups: box ``(x0, y0, x1, y1)`` (None when the
    ROI is not placed) and ``[(x, y, include), ...]`` (x = column i, y = row j), include clicks first."""
    from vtkmodules.vtkCommonMath import vtkMatrix4x4

    ras_to_ijk = vtkMatrix4x4()
    volume_node.GetRASToIJKMatrix(ras_to_ijk)
    m = mrml.numpy_matrix(ras_to_ijk)

    def ijk(ras) -> Tuple[float, float]:
        i, j, _, _ = m @ np.array([ras[0], ras[1], ras[2], 1.0])
        return float(i), float(j)

    box = None
    if roi is not None and roi.GetNumberOfControlPoints() > 0:
        bounds = [0.0] * 6
        roi.GetRASBounds(bounds)
        corners = [ijk((x, y, (bounds[4] + bounds[5]) / 2)) for x in bounds[0:2] for y in bounds[2:4]]
        xs, ys = [c[0] for c in corners], [c[1] for c in corners]
        box = (min(xs), min(ys), max(xs), max(ys))
    points = []
    for node, keep in ((include, True), (exclude, False)):
        if node is None:
            continue
        for index in range(node.GetNumberOfControlPoints()):
            position = [0.0, 0.0, 0.0]
            node.GetNthControlPointPositionWorld(index, position)
            points.append(ijk(position) + (keep,))
    return box, points


def clear_prompts(roi, include, exclude) -> None:
    """Remove the box and every click (a new frame starts without prompts)."""
    for node in (roi, include, exclude):
        if node is not None:
            node.RemoveAllControlPoints()
