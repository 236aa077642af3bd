"""scene: the one place that touches MRML (volume, segmentation and sequence nodes, scene saving).

Runs the same on Slicer's own ``slicer`` module and on the ``slicer-core`` wheel outside Slicer, so the code that
writes segmentation nodes is tested on the real MRML library. Importing this package imports neither ``slicer``
nor ``vtk``: they are imported on first use (``mrml.slicer_module()``).

- :class:`LiveScene`: the live path's sink (frame image -> volume node, labelmap -> segmentation node, in place;
  recording into sequences; saving; display settings).
- :func:`load_frame` / :func:`read_mask`: one stored frame into MRML for Segment Editor, and the edit back out.
- :func:`save_scene`: any MRML scene as ``<name>.mrml`` plus data files.
- ``readback``: reading saved scenes and ``.seg.nrrd`` / ``.seq.nrrd`` / ``.seq.mrb`` files without MRML.
"""

from NerveSegLogic.scene.annotation import load_frame, read_mask
from NerveSegLogic.scene.live import LiveScene
from NerveSegLogic.scene.readback import (load_segmentation_file, read_saved_scene, read_segmentation_sequence_items,
                                          read_sequence_file, read_volume_file)
from NerveSegLogic.scene.saving import save_scene

__all__ = [
    "LiveScene",
    "load_frame",
    "read_mask",
    "save_scene",
    "read_saved_scene",
    "read_sequence_file",
    "read_segmentation_sequence_items",
    "read_volume_file",
    "load_segmentation_file",
]
