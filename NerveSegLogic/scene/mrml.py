"""The bridge to Slicer's MRML library: the one module that imports ``slicer``.

It works on both flavours of ``slicer``: the ``slicer-core`` wheel outside Slicer (real MRML classes, no
application, no module logics) and Slicer's own ``slicer`` module inside the application. Everything here uses
only MRML and segmentation-core classes that both have; what only one of them sets up by itself (converter rules,
node classes registered by module logics) is set up here when missing.

Conventions (see ``NerveSegLogic.frame``): a frame's image is ``(H, W)`` = ``[j, i]``; its vtkImageData has
dimensions ``(W, H, 1)`` and its numpy view has shape ``(H, W)`` (k dropped); geometry is RAS millimetres with the
origin at the centre of pixel (0, 0, 0).
"""

from __future__ import annotations

import threading
import weakref
from typing import TYPE_CHECKING, Optional, Tuple

import numpy as np

from NerveSegLogic.frame import ImageGeometry

if TYPE_CHECKING:  # pragma: no cover
    from NerveSegLogic.classes import SegmentClass

#: Name of the binary labelmap representation (the only one the live path needs).
BINARY_LABELMAP = "Binary labelmap"

_lock = threading.Lock()
_ready = False


def slicer_module():
    """``import slicer`` once and make sure what MRML needs is set up (converter rules); returns the module.

    Raises ImportError with what to install when neither Slicer nor the slicer-core wheel is available.
    """
    global _ready
    try:
        import slicer
    except ImportError as error:  # pragma: no cover (both environments have it)
        raise ImportError("NerveSegLogic.scene needs Slicer's MRML library: run inside 3D Slicer, or "
                          "`pip install slicer-core` outside it") from error
    if not _ready:
        with _lock:
            if not _ready:
                _register_converter_rules(slicer)
                _ready = True
    return slicer


def _register_converter_rules(slicer) -> None:
    """Register the segmentation converter rules unless something (Slicer's Segmentations module) already did.

    Only binary labelmap is used live, but a segmentation whose rules are missing cannot create a closed surface
    for a 3D view after loading, so the standard rules are registered the way Slicer does at start-up.
    """
    factory = slicer.vtkSegmentationConverterFactory.GetInstance()
    try:
        registered = {rule.GetClassName() for rule in (factory.GetConverterRules() or ())}
    except (AttributeError, TypeError):  # a build that does not wrap the rule list
        if hasattr(slicer, "app"):
            return  # inside Slicer the Segmentations module registered them at start-up
        registered = set()
    for name in ("vtkBinaryLabelmapToClosedSurfaceConversionRule", "vtkClosedSurfaceToBinaryLabelmapConversionRule",
                 "vtkClosedSurfaceToFractionalLabelmapConversionRule",
                 "vtkFractionalLabelmapToClosedSurfaceConversionRule"):
        rule_class = getattr(slicer, name, None)
        if rule_class is not None and name not in registered:
            factory.RegisterConverterRule(rule_class())


#: The Sequences logic attached to each standalone scene, kept alive as long as its scene (scene -> logic).
_sequences_logics: "weakref.WeakKeyDictionary" = None  # type: ignore[assignment]


def new_scene(sequences_logic: bool = True):
    """A new, empty standalone vtkMRMLScene with the node classes NerveSeg uses registered.

    Like a scene in Slicer, it carries Slicer's Sequences logic (``vtkSlicerSequencesLogic``, always loaded there),
    which writes a sequence browser's selected item back into its proxy nodes whenever a sequence changes. Code
    that records live must work with that logic present, so every standalone scene has it unless
    ``sequences_logic`` is False (or this MRML build lacks it).
    """
    slicer = slicer_module()
    scene = slicer.vtkMRMLScene()
    if sequences_logic:
        attach_sequences_logic(scene)
    ensure_node_classes(scene)
    return scene


def attach_sequences_logic(scene):
    """Attach a ``vtkSlicerSequencesLogic`` to ``scene`` as Slicer does at start-up (once); returns it, or None when
    this MRML build has no Sequences logic. The logic lives as long as the scene object."""
    global _sequences_logics
    slicer = slicer_module()
    logic_class = getattr(slicer, "vtkSlicerSequencesLogic", None)
    if logic_class is None:
        return None
    if _sequences_logics is None:
        _sequences_logics = weakref.WeakKeyDictionary()
    logic = _sequences_logics.get(scene)
    if logic is None:
        logic = logic_class()
        logic.SetMRMLScene(scene)
        _sequences_logics[scene] = logic
    return logic


def sequences_logic_of(scene):
    """The Sequences logic :func:`attach_sequences_logic` attached to ``scene``, or None."""
    return None if _sequences_logics is None else _sequences_logics.get(scene)


def ensure_node_classes(scene) -> None:
    """Register node classes that a module logic registers inside Slicer but a bare scene lacks."""
    slicer = slicer_module()
    for name in ("vtkMRMLSequenceBrowserNode", "vtkMRMLSequenceNode", "vtkMRMLSegmentationNode",
                 "vtkMRMLColorLegendDisplayNode"):
        if not scene.IsNodeClassRegistered(name) and hasattr(slicer, name):
            scene.RegisterNodeClass(getattr(slicer, name)())


# ------------------------------------------------------------------------------------------------ geometry


def vtk_matrix(matrix: np.ndarray):
    """A vtkMatrix4x4 holding a 4x4 numpy matrix."""
    from vtkmodules.vtkCommonMath import vtkMatrix4x4

    out = vtkMatrix4x4()
    for row in range(4):
        for col in range(4):
            out.SetElement(row, col, float(matrix[row, col]))
    return out


def numpy_matrix(matrix) -> np.ndarray:
    """A 4x4 numpy array from a vtkMatrix4x4."""
    return np.array([[matrix.GetElement(r, c) for c in range(4)] for r in range(4)], dtype=float)


def volume_geometry(volume_node) -> ImageGeometry:
    """The ImageGeometry (spacing, origin, directions in RAS mm) of a volume node."""
    from vtkmodules.vtkCommonMath import vtkMatrix4x4

    m = vtkMatrix4x4()
    volume_node.GetIJKToRASMatrix(m)
    return ImageGeometry.from_ijk_to_ras(numpy_matrix(m))


def image_dimensions(image_data) -> Tuple[int, int, int]:
    """(W, H, depth) of a vtkImageData, or (0, 0, 0) when it holds no voxels."""
    extent = image_data.GetExtent()
    dims = tuple(extent[2 * a + 1] - extent[2 * a] + 1 for a in range(3))
    return dims if min(dims) > 0 else (0, 0, 0)  # type: ignore[return-value]


def scalars_view(image_data) -> np.ndarray:
    """A writable numpy view ``(H, W)`` of a single-slice vtkImageData's scalars (shares memory with VTK)."""
    from vtkmodules.util import numpy_support

    w, h, d = image_dimensions(image_data)
    if d != 1:
        raise ValueError(f"expected a single-slice image (depth 1), got dimensions {(w, h, d)}")
    scalars = image_data.GetPointData().GetScalars()
    if scalars is None or scalars.GetNumberOfComponents() != 1:
        raise ValueError("expected a single-component image")
    return numpy_support.vtk_to_numpy(scalars).reshape(h, w)


def allocate_image(image_data, width: int, height: int, dtype: np.dtype) -> np.ndarray:
    """Give ``image_data`` (a vtkImageData or vtkOrientedImageData) ``(W, H, 1)`` voxels of ``dtype``.

    Returns the writable ``(H, W)`` numpy view. The extent starts at 0, so index (i, j) is pixel ``[j, i]``.
    """
    from vtkmodules.util import numpy_support

    image_data.SetExtent(0, width - 1, 0, height - 1, 0, 0)
    image_data.AllocateScalars(numpy_support.get_vtk_array_type(np.dtype(dtype)), 1)
    return scalars_view(image_data)


def matches(image_data, width: int, height: int, dtype: np.dtype) -> bool:
    """Whether ``image_data`` already has ``(W, H, 1)`` voxels of ``dtype`` starting at index 0."""
    from vtkmodules.util import numpy_support

    if image_data is None or image_data.GetPointData().GetScalars() is None:
        return False
    extent = image_data.GetExtent()
    return (tuple(extent) == (0, width - 1, 0, height - 1, 0, 0)
            and image_data.GetScalarType() == numpy_support.get_vtk_array_type(np.dtype(dtype))
            and image_data.GetNumberOfScalarComponents() == 1)


# ------------------------------------------------------------------------------------------------ segments


def terminology_tag_name(slicer) -> str:
    return slicer.vtkSegment.GetTerminologyEntryTagName()


def set_terminology(segment, entry: str) -> None:
    """Set a segment's terminology entry (Slicer's ``context~category~type~...`` string).

    The tag is understood by every Slicer 5 version (newer ones map it onto their terminology member).
    """
    slicer = slicer_module()
    segment.SetTag(terminology_tag_name(slicer), entry)


def get_terminology(segment) -> str:
    """A segment's terminology entry string ('' when it has none)."""
    if hasattr(segment, "GetTerminology"):
        return segment.GetTerminology() or ""
    from vtkmodules.vtkCommonCore import reference

    value = reference("")
    segment.GetTag(terminology_tag_name(slicer_module()), value)
    return str(value)


def new_segment(segment_class: "SegmentClass"):
    """A vtkSegment named, coloured and coded like ``segment_class``, with its label value (no voxels yet)."""
    slicer = slicer_module()
    segment = slicer.vtkSegment()
    segment.SetName(segment_class.name)
    segment.SetColor(*segment_class.color)
    segment.SetLabelValue(int(segment_class.label))
    set_terminology(segment, segment_class.terminology())
    if hasattr(segment, "SetNameAutoGenerated"):  # keep Slicer from renaming it after the terminology
        segment.SetNameAutoGenerated(False)
        segment.SetColorAutoGenerated(False)
    return segment


def release_collection(collection) -> None:
    """Give up the reference a ``vtkMRMLScene.GetNodesByClass...`` collection came with.

    Those methods return a new vtkCollection that the caller owns (C++ wraps it in ``vtkSmartPointer::Take``;
    ``slicer.util.getNodesByClass`` calls ``UnRegister``). Python's wrapper adds its own reference and drops only
    that one, so without this the collection, and every node in it, would live forever: a node removed from the
    scene (or a closed scene's nodes) would never be freed. Only the owner's extra reference is dropped, so a build
    that hands the collection to Python as a new instance (one reference) is left alone."""
    if collection is not None and collection.GetReferenceCount() > 1:
        collection.UnRegister(None)


def nodes_by_class(scene, class_name: str, name: Optional[str] = None) -> list:
    """The nodes of ``class_name`` in ``scene`` (only those named ``name`` when given), as a list; the collection
    the scene returns is released (:func:`release_collection`)."""
    collection = (scene.GetNodesByClass(class_name) if name is None
                  else scene.GetNodesByClassByName(class_name, name))
    try:
        return [collection.GetItemAsObject(index) for index in range(collection.GetNumberOfItems())]
    finally:
        release_collection(collection)


def first_node_by_name(scene, name: str, class_name: str) -> Optional[object]:
    """The first node of ``class_name`` named ``name`` in ``scene``, or None."""
    nodes = scene.GetNodesByClassByName(class_name, name)
    try:
        return nodes.GetItemAsObject(0) if nodes.GetNumberOfItems() else None
    finally:
        release_collection(nodes)


def scalars_view_of_slice(image_data, k: int) -> np.ndarray:
    """A read-only numpy view ``(H, W)`` of slice ``k`` (an index within the image's extent) of a vtkImageData."""
    from vtkmodules.util import numpy_support

    extent = image_data.GetExtent()
    w, h, d = (extent[1] - extent[0] + 1, extent[3] - extent[2] + 1, extent[5] - extent[4] + 1)
    scalars = numpy_support.vtk_to_numpy(image_data.GetPointData().GetScalars())
    volume = scalars.reshape(d, h, w, -1)[..., 0]
    return volume[k - extent[4]]
