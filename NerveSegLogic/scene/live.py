"""LiveScene: where the live path's results reach MRML (the main thread's sink).

One scalar volume node shows the newest frame, one segmentation node its segments (one per class), both updated
in place. When recording, every applied result is also appended to an image sequence and a segmentation sequence,
browsed together by one sequence browser whose proxy nodes ARE the live nodes, so after a run Slicer's sequence
toolbar replays exactly what was shown.

Sequence index: seconds since the first recorded frame, on this process's ``perf_counter`` clock, taken from the
frame's ``received`` stamp (the moment the frame existed here; the apply time for a result without one). Time,
not frame id, because it is what Slicer's own recordings and SlicerIGT's use ("time", "s"), so playback runs at
the scan's real pace and other time-indexed recordings (tracking, video) can be browsed alongside; frame ids have
gaps where stale frames were dropped and say nothing about timing. The frame ids are kept in
:attr:`LiveScene.recorded_frame_ids`, item for item. Index values are written with millisecond resolution and
kept at least 2 ms apart (a frame stamped less than 2 ms after the previous one is placed 2 ms after it): MRML
treats numeric index values within 1 ms as the same item, and the recording must have exactly one item per
applied frame.

Thread rule: only the thread that owns the MRML scene (Slicer's main thread, or the demo's driver loop) calls
any method here.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import TYPE_CHECKING, List, Optional, Sequence, Union

from NerveSegLogic.frame import SegmentationResult
from NerveSegLogic.scene import display, mrml
from NerveSegLogic.scene.nodes import ClassSegments, update_volume
from NerveSegLogic.scene.saving import save_scene

if TYPE_CHECKING:  # pragma: no cover
    from NerveSegLogic.classes import SegmentClass

#: Index of the recorded sequences (as Slicer's own recorder names it).
INDEX_NAME, INDEX_UNIT = "time", "s"
#: MRML attributes naming the model that produced the segmentation (read by annotate.importers).
MODEL_ATTRIBUTE, MODEL_SHA256_ATTRIBUTE = "NerveSeg.model", "NerveSeg.modelSha256"
_INDEX_MIN_GAP_S = 0.002  # > MRML's default numeric index tolerance (1 ms), under which two items would merge


class LiveScene:
    """The live path's MRML sink: a volume node, a segmentation node and (optionally) their recording.

    classes: the model's classes (SegmentClass), one segment each, in this order.
    mrml_scene: the scene to write into; None creates a standalone vtkMRMLScene (inside Slicer pass
        ``slicer.mrmlScene``).
    name: prefix of the node names and the saved file names (``<name>.mrml``).
    record: whether applied results are recorded into sequences from the start (see start/stop_recording).
    """

    def __init__(self, classes: Sequence["SegmentClass"], mrml_scene=None, name: str = "NerveSeg",
                 record: bool = True):
        if not name or any(ch in name for ch in '/\\:*?"<>|'):
            raise ValueError(f"LiveScene name must be a non-empty file-name-safe string, got {name!r}")
        slicer = mrml.slicer_module()
        self._slicer = slicer
        self.owns_scene = mrml_scene is None
        self.scene = mrml.new_scene() if mrml_scene is None else mrml_scene
        mrml.ensure_node_classes(self.scene)
        self.name = name
        self.classes = tuple(classes)
        self._nodes: List[object] = []  # every node this LiveScene added, removed by clear()

        self._volume = self._add("vtkMRMLScalarVolumeNode", f"{name} image")
        self._volume.CreateDefaultDisplayNodes()
        self._track_display_nodes(self._volume)
        self._segmentation = self._add("vtkMRMLSegmentationNode", f"{name} segmentation")
        self._segmentation.CreateDefaultDisplayNodes()
        self._track_display_nodes(self._segmentation)
        self._segments = ClassSegments(self._segmentation, self.classes)
        self._segments.rebuild()
        self._reference_geometry = None

        self._browser = self._image_sequence = self._segmentation_sequence = None
        self._recording = False
        self._first_index_time: Optional[float] = None
        self._last_index: Optional[float] = None
        self.recorded_frame_ids: List[int] = []
        self.applied_count = 0
        self._model_name: Optional[str] = None
        self._model_sha256: Optional[str] = None
        if record:
            self.start_recording()

    # -------------------------------------------------------------------------------------------- nodes

    def _add(self, class_name: str, node_name: str):
        node = self.scene.AddNewNodeByClass(class_name, node_name)
        if node is None:
            raise RuntimeError(f"the MRML scene could not create a {class_name} node")
        self._nodes.append(node)
        return node

    def _track_display_nodes(self, node) -> None:
        for index in range(node.GetNumberOfDisplayNodes()):
            self._nodes.append(node.GetNthDisplayNode(index))

    @property
    def volume_node(self):
        """The vtkMRMLScalarVolumeNode showing the newest frame."""
        return self._volume

    @property
    def segmentation_node(self):
        """The vtkMRMLSegmentationNode with one segment per class (segment id = class key)."""
        return self._segmentation

    @property
    def sequence_browser_node(self):
        """The vtkMRMLSequenceBrowserNode of the recording (None until recording starts)."""
        return self._browser

    @property
    def image_sequence_node(self):
        return self._image_sequence

    @property
    def segmentation_sequence_node(self):
        return self._segmentation_sequence

    @property
    def recording(self) -> bool:
        return self._recording

    @property
    def recorded_count(self) -> int:
        return 0 if self._image_sequence is None else self._image_sequence.GetNumberOfDataNodes()

    # -------------------------------------------------------------------------------------------- recording

    def start_recording(self) -> None:
        """Append every following applied result to the sequences (created on first use; idempotent)."""
        if self._browser is None:
            self._create_recording_nodes()
        self._recording = True

    def stop_recording(self) -> None:
        """Stop appending; what was recorded stays. The browser then shows the last recorded item."""
        if self._recording and self._browser is not None and self.recorded_count:
            # Inside Slicer the sequence logic copies the selected item into the proxies (the live nodes):
            # selecting the last item shows the same data that is live now.
            self._browser.SetSelectedItemNumber(self.recorded_count - 1)
        self._recording = False

    def _create_recording_nodes(self) -> None:
        slicer = self._slicer
        self._image_sequence = self._add("vtkMRMLSequenceNode", f"{self.name} image sequence")
        self._segmentation_sequence = self._add("vtkMRMLSequenceNode", f"{self.name} segmentation sequence")
        for sequence in (self._image_sequence, self._segmentation_sequence):
            sequence.SetIndexName(INDEX_NAME)
            sequence.SetIndexUnit(INDEX_UNIT)
            sequence.SetIndexType(slicer.vtkMRMLSequenceNode.NumericIndex)
        self._browser = self._add("vtkMRMLSequenceBrowserNode", f"{self.name} recording")
        self._browser.SetAndObserveMasterSequenceNodeID(self._image_sequence.GetID())
        self._browser.AddSynchronizedSequenceNode(self._segmentation_sequence)
        for sequence, proxy in ((self._image_sequence, self._volume),
                                (self._segmentation_sequence, self._segmentation)):
            self._browser.AddProxyNode(proxy, sequence, False)
            # Inside Slicer: never write proxy edits back into the recording, keep the live nodes' names,
            # and leave recording to us (Slicer's recorder would add items on its own clock).
            self._browser.SetSaveChanges(sequence, False)
            self._browser.SetOverwriteProxyName(sequence, False)
            self._browser.SetRecording(sequence, False)
        self._browser.SetRecordingActive(False)
        if self._model_name is not None:
            self.set_model_identity(self._model_name, self._model_sha256)

    def _next_index(self, result: SegmentationResult, now: float) -> float:
        stamp = result.frame.timestamps.get("received", now)
        if self._first_index_time is None:
            self._first_index_time = stamp
        index = round(stamp - self._first_index_time, 3)
        if self._last_index is not None and index < self._last_index + _INDEX_MIN_GAP_S:
            index = round(self._last_index + _INDEX_MIN_GAP_S, 3)
        self._last_index = index
        return index

    # -------------------------------------------------------------------------------------------- apply

    def apply(self, result: SegmentationResult) -> None:
        """Show ``result`` (frame image and labelmap) in the live nodes, and record it when recording.

        Updates the nodes in place: no node is created per frame. Stamps the frame's ``applied`` time. Raises
        ValueError for a result whose image or labelmap cannot be shown (see update_volume, ClassSegments.write).
        """
        now = time.perf_counter()
        frame = result.frame
        geometry = frame.geometry
        update_volume(self._volume, frame.image, geometry)
        self._segments.write(result.labelmap, geometry)
        if geometry != self._reference_geometry:
            # Reference geometry = the frame's grid, so Segment Editor paints at the image's own resolution.
            self._segmentation.SetReferenceImageGeometryParameterFromVolumeNode(self._volume)
            self._reference_geometry = geometry
        if result.model_name != self._model_name:
            self.set_model_identity(result.model_name)  # another model: its sha256 is unknown until told
        if self._recording:
            index = f"{self._next_index(result, now):.3f}"
            self._image_sequence.SetDataNodeAtValue(self._volume, index)
            self._segmentation_sequence.SetDataNodeAtValue(self._segmentation, index)
            self.recorded_frame_ids.append(int(frame.frame_id))
        self.applied_count += 1
        frame.stamp("applied")

    def set_model_identity(self, model_name: str, sha256: Optional[str] = None) -> None:
        """Name the model (and its card's sha256) whose results follow, as MRML attributes ``NerveSeg.model`` and
        ``NerveSeg.modelSha256`` of the segmentation node (so every recorded item carries them) and of the
        segmentation sequence (the model of the latest item), where the annotation importer reads them.
        ``apply`` sets the name from each result; call this to add the sha256."""
        self._model_name, self._model_sha256 = model_name, sha256
        nodes = [self._segmentation] + ([self._segmentation_sequence] if self._segmentation_sequence else [])
        for node in nodes:
            node.SetAttribute(MODEL_ATTRIBUTE, model_name or "")
            if sha256:
                node.SetAttribute(MODEL_SHA256_ATTRIBUTE, sha256)
            else:
                node.RemoveAttribute(MODEL_SHA256_ATTRIBUTE)

    # -------------------------------------------------------------------------------------------- display

    def set_class_visible(self, key: str, visible: bool) -> None:
        """Show or hide one class's segment (all views)."""
        display.set_segment_visible(self._segmentation, self._segment_id(key), visible)

    def set_class_opacity(self, key: str, opacity: float) -> None:
        """Opacity (0..1) of one class's segment: 2D fill, 2D outline and 3D alike."""
        display.set_segment_opacity(self._segmentation, self._segment_id(key), opacity)

    def set_fill_outline(self, fill: bool, outline: bool) -> None:
        """Draw the segments in slice views filled, outlined, both or (both False) not at all."""
        display.set_fill_outline(self._segmentation, fill, outline)

    def set_names_visible(self, visible: bool) -> None:
        """Show or hide the class names (a colour legend listing each segment's name in its colour)."""
        legend = display.set_names_visible(self._segmentation, visible)
        if legend is not None and legend not in self._nodes:
            self._nodes.append(legend)

    def _segment_id(self, key: str) -> str:
        keys = [c.key for c in self.classes]
        if key not in keys:
            raise KeyError(f"no class {key!r} in this scene; classes: {', '.join(keys)}")
        return key

    # -------------------------------------------------------------------------------------------- save / clear

    def save(self, folder: Union[str, Path]) -> Path:
        """Write the scene into ``folder`` as ``<name>.mrml`` with its data files next to it; returns the .mrml path.

        Files: the volume ``.nrrd``, the segmentation ``.seg.nrrd``, the image sequence ``.seq.nrrd`` and the
        segmentation sequence ``.seq.mrb`` (see ``saving``), referenced by relative paths. The live nodes keep their content and can go on receiving frames.
        Raises OSError naming the file that could not be written.
        """
        return save_scene(self.scene, folder, self.name)

    def clear(self) -> None:
        """Remove every node this LiveScene added from the MRML scene (idempotent). The object is unusable after."""
        if not self._nodes:
            return
        self._recording = False
        for node in reversed(self._nodes):
            if node.GetScene() is self.scene:
                storage = node.GetStorageNode() if hasattr(node, "GetStorageNode") else None
                self.scene.RemoveNode(node)
                if storage is not None and storage.GetScene() is self.scene:
                    self.scene.RemoveNode(storage)
        self._nodes.clear()
        if self.owns_scene:
            self.scene.Clear(True)

    close = clear

    def __enter__(self) -> "LiveScene":
        return self

    def __exit__(self, *exc) -> None:
        self.clear()
