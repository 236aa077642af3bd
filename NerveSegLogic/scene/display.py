"""How a segmentation node is drawn: per-segment visibility and opacity, fill or outline, class names.

Functions of a segmentation node (not of LiveScene) so that the Slicer module's live panel and the annotation
panel bind the same code. All of it is MRML display-node state; Slicer's views follow it, and a saved scene keeps it.
"""

from __future__ import annotations

from typing import Optional

from NerveSegLogic.scene import mrml


def _display_node(segmentation_node):
    node = segmentation_node.GetDisplayNode()
    if node is None:
        segmentation_node.CreateDefaultDisplayNodes()
        node = segmentation_node.GetDisplayNode()
    if node is None:
        raise RuntimeError(f"segmentation node {segmentation_node.GetName()!r} has no display node "
                           "(is it in a scene?)")
    return node


def _check_segment(segmentation_node, segment_id: str) -> None:
    if segmentation_node.GetSegmentation().GetSegment(segment_id) is None:
        ids = [segmentation_node.GetSegmentation().GetNthSegmentID(i)
               for i in range(segmentation_node.GetSegmentation().GetNumberOfSegments())]
        raise KeyError(f"segmentation {segmentation_node.GetName()!r} has no segment {segment_id!r}; "
                       f"segments: {', '.join(ids)}")


def set_segment_visible(segmentation_node, segment_id: str, visible: bool) -> None:
    """Show or hide one segment in every view. Raises KeyError for an unknown segment id."""
    _check_segment(segmentation_node, segment_id)
    _display_node(segmentation_node).SetSegmentVisibility(segment_id, bool(visible))


def segment_visible(segmentation_node, segment_id: str) -> bool:
    _check_segment(segmentation_node, segment_id)
    return bool(_display_node(segmentation_node).GetSegmentVisibility(segment_id))


def set_segment_opacity(segmentation_node, segment_id: str, opacity: float) -> None:
    """One segment's opacity (0..1) for 2D fill, 2D outline and 3D. Raises ValueError outside 0..1."""
    if not 0.0 <= float(opacity) <= 1.0:
        raise ValueError(f"opacity must be within 0..1, got {opacity}")
    _check_segment(segmentation_node, segment_id)
    # SetSegmentOpacity sets the 3D, 2D fill and 2D outline opacities together.
    _display_node(segmentation_node).SetSegmentOpacity(segment_id, float(opacity))


def segment_opacity(segmentation_node, segment_id: str) -> float:
    """One segment's 2D fill opacity (0..1)."""
    _check_segment(segmentation_node, segment_id)
    return float(_display_node(segmentation_node).GetSegmentOpacity2DFill(segment_id))


def set_fill_outline(segmentation_node, fill: bool, outline: bool) -> None:
    """Draw segments in slice views filled, outlined, both, or neither (2D fill / 2D outline visibility)."""
    node = _display_node(segmentation_node)
    node.SetVisibility2DFill(bool(fill))
    node.SetVisibility2DOutline(bool(outline))


def fill_outline(segmentation_node):
    """``(fill, outline)`` visibility in slice views."""
    node = _display_node(segmentation_node)
    return bool(node.GetVisibility2DFill()), bool(node.GetVisibility2DOutline())


def set_names_visible(segmentation_node, visible: bool) -> Optional[object]:
    """Show or hide the segment names as a colour legend in the views; returns the legend display node.

    MRML's segmentation display node has no per-segment text label; the colour legend (vtkMRMLColorLegendDisplayNode,
    which for a segmentation lists each visible segment's name in its colour) is the MRML way to show names.
    The legend node is created on first use and reused. Returns None when this MRML has no colour legend.
    """
    slicer = mrml.slicer_module()
    if not hasattr(slicer, "vtkMRMLColorLegendDisplayNode"):
        return None
    legend = _legend_node(segmentation_node)
    if legend is None:
        if not visible:
            return None
        scene = segmentation_node.GetScene()
        mrml.ensure_node_classes(scene)
        display_node = _display_node(segmentation_node)
        legend = scene.AddNewNodeByClass("vtkMRMLColorLegendDisplayNode",
                                         f"{segmentation_node.GetName()} names")
        legend.SetAndObservePrimaryDisplayNode(display_node)
        segmentation_node.AddAndObserveDisplayNodeID(legend.GetID())
    legend.SetVisibility(bool(visible))
    return legend


def names_visible(segmentation_node) -> bool:
    legend = _legend_node(segmentation_node)
    return bool(legend is not None and legend.GetVisibility())


def _legend_node(segmentation_node):
    for index in range(segmentation_node.GetNumberOfDisplayNodes()):
        node = segmentation_node.GetNthDisplayNode(index)
        if node is not None and node.IsA("vtkMRMLColorLegendDisplayNode"):
            return node
    return None
