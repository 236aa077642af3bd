"""Writing a frame and its labelmap into a scalar volume node and a segmentation node, in place.

Both the live path (:class:`~NerveSegLogic.scene.live.LiveScene`) and the annotation panel
(:func:`~NerveSegLogic.scene.annotation.load_frame`) go through these functions, so a frame reaches MRML the same
way wherever it comes from.

The segmentation holds one segment per class, all sharing ONE binary labelmap (Slicer's "shared labelmap" layer):
the labelmap's voxel values are the classes' label values and each segment owns its value. A frame's labelmap is
then written with a single array copy, without splitting it into per-class masks and without any converter work,
and the saved ``.seg.nrrd`` has one layer whose label values are exactly the model's.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Dict, Optional, Sequence

import numpy as np

from NerveSegLogic.frame import ImageGeometry
from NerveSegLogic.scene import mrml

if TYPE_CHECKING:  # pragma: no cover
    from NerveSegLogic.classes import SegmentClass

#: Image types a volume node receives unchanged (the receiver's contract: uint8, uint16 or float32).
VOLUME_DTYPES = (np.uint8, np.uint16, np.float32)


def update_volume(volume_node, image: np.ndarray, geometry: ImageGeometry) -> None:
    """Show ``image`` (``(H, W)`` grey) in ``volume_node`` at ``geometry`` (RAS mm), reusing its voxel buffer.

    The vtkImageData is reallocated only when the size or the pixel type changes; otherwise the pixels are copied
    into the existing buffer and one modified event is sent. Raises ValueError for an image that is not 2D or
    whose type is not uint8, uint16 or float32.
    """
    image = np.asarray(image)
    if image.ndim != 2:
        raise ValueError(f"volume image must be a 2D (H, W) array, got shape {image.shape}")
    if image.dtype.type not in VOLUME_DTYPES:
        raise ValueError(f"volume image must be uint8, uint16 or float32, got {image.dtype}")
    height, width = image.shape
    was_modifying = volume_node.StartModify()
    try:
        image_data = volume_node.GetImageData()
        if mrml.matches(image_data, width, height, image.dtype):
            view = mrml.scalars_view(image_data)
            view[...] = image
            image_data.GetPointData().GetScalars().Modified()
            image_data.Modified()
        else:
            from vtkmodules.vtkCommonDataModel import vtkImageData

            image_data = vtkImageData()
            # Geometry lives in the node; the image data itself stays at unit spacing and zero origin.
            view = mrml.allocate_image(image_data, width, height, image.dtype)
            view[...] = image
            volume_node.SetAndObserveImageData(image_data)
        volume_node.SetIJKToRASMatrix(mrml.vtk_matrix(geometry.ijk_to_ras()))
    finally:
        volume_node.EndModify(was_modifying)


def volume_array(volume_node) -> np.ndarray:
    """A copy of a single-slice volume node's voxels as ``(H, W)``."""
    image_data = volume_node.GetImageData()
    if image_data is None:
        raise ValueError(f"volume node {volume_node.GetName()!r} has no image data")
    return mrml.scalars_view(image_data).copy()


class ClassSegments:
    """The segments of one segmentation node, one per class, sharing one binary labelmap.

    Segment ids are the classes' catalogue keys (``"nerve"``, ``"blood_vessel"``), so a module, a test or a saved
    scene finds a class's segment by key whatever its display name. ``write(labelmap, geometry)`` replaces the
    voxels of all segments at once.
    """

    def __init__(self, segmentation_node, classes: Sequence["SegmentClass"]):
        if not classes:
            raise ValueError("a segmentation needs at least one class")
        labels = [c.label for c in classes]
        if len(set(labels)) != len(labels) or len({c.key for c in classes}) != len(classes):
            raise ValueError(f"class keys and label values must be unique, got {[(c.key, c.label) for c in classes]}")
        self.node = segmentation_node
        self.classes = tuple(classes)
        # Label values not among the classes are written as background: a voxel no segment owns would be saved
        # but never shown.
        self._lut = np.zeros(256, dtype=np.uint8)
        for c in self.classes:
            self._lut[c.label] = c.label
        self._labelmap = None  # the shared vtkOrientedImageData
        self._geometry: Optional[ImageGeometry] = None

    def segment_ids(self):
        return [c.key for c in self.classes]

    def _intact(self) -> bool:
        """Whether the node still holds exactly our segments, all on our shared labelmap (nobody edited it)."""
        if self._labelmap is None:
            return False
        segmentation = self.node.GetSegmentation()
        if segmentation.GetNumberOfSegments() != len(self.classes):
            return False
        for c in self.classes:
            segment = segmentation.GetSegment(c.key)
            if segment is None or segment.GetRepresentation(mrml.BINARY_LABELMAP) is not self._labelmap:
                return False
        return True

    def rebuild(self) -> None:
        """(Re)create one empty segment per class on a new shared labelmap, removing any other segment."""
        slicer = mrml.slicer_module()
        segmentation = self.node.GetSegmentation()
        was_modifying = self.node.StartModify()
        try:
            segmentation.RemoveAllSegments()
            source = getattr(segmentation, "SetSourceRepresentationName", None) or segmentation.SetMasterRepresentationName
            source(mrml.BINARY_LABELMAP)
            self._labelmap = slicer.vtkOrientedImageData()
            self._geometry = None
            for c in self.classes:
                segment = mrml.new_segment(c)
                segment.AddRepresentation(mrml.BINARY_LABELMAP, self._labelmap)
                segmentation.AddSegment(segment, c.key)
        finally:
            self.node.EndModify(was_modifying)

    def write(self, labelmap: np.ndarray, geometry: ImageGeometry) -> None:
        """Replace all segments' voxels with ``labelmap`` (``(H, W)``, values = label values, 0 = background).

        ``geometry`` is the frame's (RAS mm). Values that are no class's label become background. Raises
        ValueError for a labelmap that is not 2D or not integer, or has values outside 0..255.
        """
        labelmap = np.asarray(labelmap)
        if labelmap.ndim != 2:
            raise ValueError(f"labelmap must be a 2D (H, W) array, got shape {labelmap.shape}")
        if labelmap.dtype != np.uint8:
            if not np.issubdtype(labelmap.dtype, np.integer) and labelmap.dtype != np.bool_:
                raise ValueError(f"labelmap must hold integer label values, got {labelmap.dtype}")
            if labelmap.size and (labelmap.min() < 0 or labelmap.max() > 255):
                raise ValueError(f"labelmap values must be 0..255, got {labelmap.min()}..{labelmap.max()}")
            labelmap = labelmap.astype(np.uint8)
        if not self._intact():
            self.rebuild()
        height, width = labelmap.shape
        image = self._labelmap
        if not mrml.matches(image, width, height, np.uint8):
            view = mrml.allocate_image(image, width, height, np.uint8)
        else:
            view = mrml.scalars_view(image)
        np.take(self._lut, labelmap, out=view)
        if geometry != self._geometry:
            image.SetImageToWorldMatrix(mrml.vtk_matrix(geometry.ijk_to_ras()))
            self._geometry = geometry
        # One modified event on the shared labelmap: the segmentation tells its displays that every segment
        # changed, and drops derived representations (a closed surface, if someone made one) to rebuild on demand.
        image.GetPointData().GetScalars().Modified()
        image.Modified()


def labelmap_of_segments(segmentation_node, reference_volume_node,
                         classes: Sequence["SegmentClass"]) -> np.ndarray:
    """``(H, W)`` uint8 labelmap in the reference volume's geometry from a segmentation's class segments.

    Each class's segment is found by id (the class key) or, failing that, by name; a class without a segment
    stays background. Segments may share a labelmap or have their own (Segment Editor separates overlapping
    ones) and may have any extent and geometry: each is resampled (nearest neighbour) onto the reference grid.
    Where segments overlap, the class listed FIRST in ``classes`` wins, so the caller states the priority by the
    order (``classes_from_mapping`` orders by label value: nerve before blood vessel in usgra-seg).
    Raises ValueError when the reference volume has no voxels or is not a single slice.
    """
    slicer = mrml.slicer_module()
    reference_image = reference_volume_node.GetImageData() if reference_volume_node is not None else None
    if reference_image is None:
        raise ValueError("read_mask needs a reference volume node with image data (the frame that was annotated)")
    for node in (segmentation_node, reference_volume_node):
        if node.GetParentTransformNode() is not None:
            # The masks are read on the untransformed grids; a transform would silently shift them.
            raise ValueError(f"node {node.GetName()!r} is under a transform; read_mask needs untransformed nodes")
    width, height, depth = mrml.image_dimensions(reference_image)
    if depth != 1:
        raise ValueError(f"reference volume {reference_volume_node.GetName()!r} must be a single slice, "
                         f"got dimensions {(width, height, depth)}")
    from vtkmodules.vtkCommonMath import vtkMatrix4x4

    reference = slicer.vtkOrientedImageData()
    reference.SetExtent(reference_image.GetExtent())
    ijk_to_ras = vtkMatrix4x4()
    reference_volume_node.GetIJKToRASMatrix(ijk_to_ras)
    reference.SetImageToWorldMatrix(ijk_to_ras)

    segmentation = segmentation_node.GetSegmentation()
    out = np.zeros((height, width), dtype=np.uint8)
    claimed = np.zeros((height, width), dtype=bool)
    for c in classes:
        segment_id = c.key if segmentation.GetSegment(c.key) is not None else segmentation.GetSegmentIdBySegmentName(c.name)
        if not segment_id or segmentation.GetSegment(segment_id) is None:
            continue
        mask = _segment_mask(slicer, segmentation_node, segment_id, reference, (height, width))
        take = mask & ~claimed
        out[take] = c.label
        claimed |= mask
    return out


def _segment_mask(slicer, segmentation_node, segment_id: str, reference, shape) -> np.ndarray:
    """Boolean ``(H, W)`` mask of one segment on the reference grid."""
    segment_image = slicer.vtkOrientedImageData()
    # Copies only this segment's voxels (value 1 where the segment is), whatever layer it lives in.
    segmentation_node.GetBinaryLabelmapRepresentation(segment_id, segment_image)
    if mrml.image_dimensions(segment_image) == (0, 0, 0):
        return np.zeros(shape, dtype=bool)
    resampled = slicer.vtkOrientedImageData()
    ok = slicer.vtkOrientedImageDataResample.ResampleOrientedImageToReferenceOrientedImage(
        segment_image, reference, resampled, False, False)
    if not ok:
        raise RuntimeError(f"could not resample segment {segment_id!r} onto the reference volume")
    return _paste(resampled, reference, shape) > 0


def _paste(image, reference, shape) -> np.ndarray:
    """``image``'s voxels placed on the reference grid (both share geometry; extents may differ), zero elsewhere."""
    out = np.zeros(shape, dtype=np.uint8)
    if mrml.image_dimensions(image) == (0, 0, 0):
        return out
    ref_extent = reference.GetExtent()
    extent = image.GetExtent()
    if extent[4] > ref_extent[4] or extent[5] < ref_extent[4]:
        return out  # no voxel on the reference slice
    view = mrml.scalars_view_of_slice(image, ref_extent[4])
    i0, j0 = extent[0] - ref_extent[0], extent[2] - ref_extent[2]
    # Clip to the reference grid: a segment painted past the frame's border is cut at the border.
    ci0, cj0 = max(i0, 0), max(j0, 0)
    ci1, cj1 = min(i0 + view.shape[1], shape[1]), min(j0 + view.shape[0], shape[0])
    if ci1 > ci0 and cj1 > cj0:
        out[cj0:cj1, ci0:ci1] = view[cj0 - j0:cj1 - j0, ci0 - i0:ci1 - i0] != 0
    return out


def segment_display_properties(segmentation_node) -> Dict[str, dict]:
    """``{segment id: {name, color, label, terminology}}`` of a segmentation node (for checks and summaries)."""
    segmentation = segmentation_node.GetSegmentation()
    out = {}
    for index in range(segmentation.GetNumberOfSegments()):
        segment_id = segmentation.GetNthSegmentID(index)
        segment = segmentation.GetSegment(segment_id)
        out[segment_id] = {
            "name": segment.GetName(),
            "color": tuple(segment.GetColor()),
            "label": int(segment.GetLabelValue()),
            "terminology": mrml.get_terminology(segment),
        }
    return out
