"""How a segmentation node is drawn: per-segment visibility and opacity, fill or outline, class names.

Class names are drawn at each region (:class:`RegionNames`): one locked markups point per region at its centroid,
labelled with the class name in the class's colour. A segmentation display node has no colour node, so Slicer's
colour legend cannot name segments there (it stays hidden and logs an error); markups labels show in every view.

A class the live view is unsure of (display state ``uncertain``, see ``inference.steady``) is drawn as an outline only,
one it considers absent (``hidden``) not at all: :func:`set_segment_state`, called by LiveScene only when a class's
state changes.

Functions of a segmentation node (not of LiveScene) so that the Slicer module's live panel and the annotation
panel bind the same code. All of it is MRML display-node state; Slicer's views follow it, and a saved scene keeps it.
"""

from __future__ import annotations

from typing import Dict, Optional, Sequence


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


#: How a segment is drawn in slice views per display state of its class (``inference.steady``): (fill, outline).
#: ``uncertain``: outline only; ``hidden``: neither (its labelmap holds none of it anyway).
STATE_FILL_OUTLINE = {"shown": (True, True), "uncertain": (False, True), "hidden": (False, False)}
#: With the outline switched off for all segments (fill only), an uncertain segment keeps its fill at this fraction
#: of its own opacity instead, so it is still seen, fainter.
UNCERTAIN_FILL_FRACTION = 0.35


def set_segment_state(segmentation_node, segment_id: str, state: str, outlines: bool = True,
                      fill_opacity: Optional[float] = None) -> None:
    """Draw one segment as its class's display state says: ``shown`` filled and outlined, ``uncertain`` outline only
    (or, when ``outlines`` is False because the panel draws no outlines, filled at :data:`UNCERTAIN_FILL_FRACTION`
    of ``fill_opacity``), ``hidden`` not at all. Per-segment 2D fill / outline flags (and, for an uncertain segment
    without outlines, its 2D fill opacity): its visibility and opacity, which the user sets in the segments
    table, are left alone; ``fill_opacity`` is the opacity to restore (or to scale). KeyError for an unknown
    segment, ValueError for an unknown state."""
    if state not in STATE_FILL_OUTLINE:
        raise ValueError(f"segment state must be one of {', '.join(STATE_FILL_OUTLINE)}, got {state!r}")
    _check_segment(segmentation_node, segment_id)
    node = _display_node(segmentation_node)
    fill, outline = STATE_FILL_OUTLINE[state]
    faint = state == "uncertain" and not outlines
    if faint:
        fill = True
    was = node.StartModify()
    try:
        node.SetSegmentVisibility2DFill(segment_id, fill)
        node.SetSegmentVisibility2DOutline(segment_id, outline)
        if fill_opacity is not None:
            node.SetSegmentOpacity2DFill(segment_id, float(fill_opacity) * (UNCERTAIN_FILL_FRACTION if faint else 1.0))
    finally:
        node.EndModify(was)


def segment_fill_outline(segmentation_node, segment_id: str):
    """``(fill, outline)`` of one segment in slice views (its own flags; the display node's apply on top)."""
    _check_segment(segmentation_node, segment_id)
    node = _display_node(segmentation_node)
    return bool(node.GetSegmentVisibility2DFill(segment_id)), bool(node.GetSegmentVisibility2DOutline(segment_id))


def fill_outline(segmentation_node):
    """``(fill, outline)`` visibility in slice views."""
    node = _display_node(segmentation_node)
    return bool(node.GetVisibility2DFill()), bool(node.GetVisibility2DOutline())


class RegionNames:
    """Names at the regions: per class one markups fiducial node ``<prefix> <class name>`` in the class's colour,
    locked, with one control point per region (labelled with the class name) at the region's centroid.

    ``update(regions, geometry)`` moves, adds and removes points in place (no node is created per frame); a
    region is ``(label, x, y, area)`` in pixels (see ``NerveSegLogic.imaging.components``). Main thread only.
    """

    #: Point glyph size relative to the view (small: the text matters, not the dot).
    GLYPH_SCALE = 1.0
    TEXT_SCALE = 3.5

    def __init__(self, scene, classes: Sequence, prefix: str):
        self.scene = scene
        self.classes = tuple(classes)
        self.nodes: Dict[int, object] = {}
        self._visible = True
        for c in self.classes:
            node = scene.AddNewNodeByClass("vtkMRMLMarkupsFiducialNode", f"{prefix} {c.name}")
            node.CreateDefaultDisplayNodes()
            # Derived from the segmentation each frame: a saved scene recomputes nothing from them, so they are
            # not saved (the segmentation and its recording are).
            node.SetSaveWithScene(False)
            for index in range(node.GetNumberOfDisplayNodes()):
                node.GetNthDisplayNode(index).SetSaveWithScene(False)
            node.SetLocked(True)
            node.SetControlPointLabelFormat(c.name)
            if hasattr(node, "SetFixedNumberOfControlPoints"):
                node.SetFixedNumberOfControlPoints(False)
            display = node.GetDisplayNode()
            if display is not None:
                display.SetColor(*c.color)
                display.SetSelectedColor(*c.color)
                display.SetGlyphScale(self.GLYPH_SCALE)
                display.SetTextScale(self.TEXT_SCALE)
                if hasattr(display, "SetPointLabelsVisibility"):
                    display.SetPointLabelsVisibility(True)
            self.nodes[int(c.label)] = node

    def all_nodes(self):
        """The markups nodes and their display nodes (for the owner's bookkeeping)."""
        out = []
        for node in self.nodes.values():
            out.append(node)
            for index in range(node.GetNumberOfDisplayNodes()):
                out.append(node.GetNthDisplayNode(index))
        return out

    def update(self, regions, geometry) -> None:
        import numpy as np

        ijk_to_ras = geometry.ijk_to_ras()
        by_label: Dict[int, list] = {label: [] for label in self.nodes}
        for region in regions or ():
            label = int(region[0])
            if label in by_label:
                by_label[label].append(region)
        for label, node in self.nodes.items():
            wanted = by_label[label]
            was_modifying = node.StartModify()
            try:
                while node.GetNumberOfControlPoints() > len(wanted):
                    node.RemoveNthControlPoint(node.GetNumberOfControlPoints() - 1)
                for index, region in enumerate(wanted):
                    ras = ijk_to_ras @ np.array([float(region[1]), float(region[2]), 0.0, 1.0])
                    if index < node.GetNumberOfControlPoints():
                        node.SetNthControlPointPosition(index, float(ras[0]), float(ras[1]), float(ras[2]))
                    else:
                        node.AddControlPoint(float(ras[0]), float(ras[1]), float(ras[2]))
                    node.SetNthControlPointLabel(index, self._name(label))
                    node.SetNthControlPointLocked(index, True)
            finally:
                node.EndModify(was_modifying)

    def _name(self, label: int) -> str:
        for c in self.classes:
            if int(c.label) == label:
                return c.name
        return str(label)

    def set_visible(self, visible: bool) -> None:
        self._visible = bool(visible)
        for node in self.nodes.values():
            display = node.GetDisplayNode()
            if display is not None:
                display.SetVisibility(self._visible)

    @property
    def visible(self) -> bool:
        return self._visible

    def positions(self, label: int):
        """``[(name, (r, a, s)), ...]`` of one class's points (for checks)."""
        node = self.nodes[int(label)]
        out = []
        for index in range(node.GetNumberOfControlPoints()):
            position = [0.0, 0.0, 0.0]
            node.GetNthControlPointPosition(index, position)
            out.append((node.GetNthControlPointLabel(index), tuple(position)))
        return out
