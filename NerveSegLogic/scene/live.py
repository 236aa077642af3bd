"""LiveScene: where the live path's results reach MRML (the main thread's sink).

One scalar volume node shows the newest frame, one segmentation node its segments (one per class), both updated
in place. A class the live view is unsure of (the result's ``states``, from ``inference.steady``) is drawn as an
outline only, one it considers absent not at all; a segment's display changes only when its class's state does. When recording, every applied result is also appended to an image sequence and a segmentation sequence,
browsed together by one sequence browser whose proxy nodes ARE the live nodes, so after a run Slicer's sequence
toolbar replays exactly what was shown.

Slicer's Sequences logic (always loaded in Slicer, attached to every standalone scene here) copies a browser's
selected item back into its proxy nodes whenever one of its sequences changes. While we append items, that would
overwrite the live nodes with item 0 after every frame (the view freezes, and the segmentation recorded next is
item 0's). So while recording the browser is marked ``RecordingActive`` (the logic leaves proxies alone then, as
it does for Slicer's own recorder) with recording switched off per sequence (the browser adds no items of its
own); on stop it selects the last item, which is what the live nodes show.

A recording holds every item in memory until saved (about 0.53 MiB for a 580x420 frame). :class:`RecordingLimit`
bounds it by time and by memory: at the limit the recording stops with a message, or drops its oldest items.

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

import collections
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Deque, List, Optional, Sequence, Tuple, Union

import numpy as np

from NerveSegLogic.frame import SegmentationResult
from NerveSegLogic.scene import display, mrml
from NerveSegLogic.scene.nodes import ClassSegments, update_volume
from NerveSegLogic.scene.saving import save_scene
from ..imaging.components import find_regions

if TYPE_CHECKING:  # pragma: no cover
    from NerveSegLogic.classes import SegmentClass

#: Index of the recorded sequences (as Slicer's own recorder names it).
INDEX_NAME, INDEX_UNIT = "time", "s"
#: MRML attributes naming the model that produced the segmentation (read by annotate.importers).
MODEL_ATTRIBUTE, MODEL_SHA256_ATTRIBUTE = "NerveSeg.model", "NerveSeg.modelSha256"
_INDEX_MIN_GAP_S = 0.002  # > MRML's default numeric index tolerance (1 ms), under which two items would merge
#: Memory of one recorded item beyond its pixels (the copied nodes, their display and segment objects), measured
#: on slicer-core: 558 KB per 580x420 item for 487 KB of image and labelmap.
ITEM_OVERHEAD_BYTES = 72 * 1024
AT_LIMIT = ("stop", "drop-oldest")


@dataclass(frozen=True)
class RecordingLimit:
    """How much a recording may hold: ``max_seconds`` of scan time and ``max_megabytes`` (MiB) of memory, None
    meaning no bound. ``at_limit``: ``stop`` (stop recording, keep what was recorded, say so) or ``drop-oldest``
    (keep the most recent part). ValueError for a bound that is not a positive finite number."""

    max_seconds: Optional[float] = None
    max_megabytes: Optional[float] = 1024.0
    at_limit: str = "stop"

    def __post_init__(self):
        import math

        for name in ("max_seconds", "max_megabytes"):
            value = getattr(self, name)
            if value is not None and not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
                raise ValueError(f"recording limit {name} must be a positive number or None, got {value!r}")
        if self.at_limit not in AT_LIMIT:
            raise ValueError(f"recording limit at_limit must be one of {', '.join(AT_LIMIT)}, got {self.at_limit!r}")

    @property
    def max_bytes(self) -> Optional[int]:
        return None if self.max_megabytes is None else int(self.max_megabytes * 1024 * 1024)

    def describe(self) -> str:
        parts = []
        if self.max_seconds is not None:
            parts.append(f"{self.max_seconds:g} s")
        if self.max_megabytes is not None:
            parts.append(f"{self.max_megabytes:g} MiB")
        bound = " or ".join(parts) if parts else "no limit"
        return bound + ("" if not parts else (", then stop" if self.at_limit == "stop" else ", keeping the newest"))


class LiveScene:
    """The live path's MRML sink: a volume node, a segmentation node and (optionally) their recording.

    classes: the model's classes (SegmentClass), one segment each, in this order.
    mrml_scene: the scene to write into; None creates a standalone vtkMRMLScene (inside Slicer pass
        ``slicer.mrmlScene``).
    name: prefix of the node names and the saved file names (``<name>.mrml``).
    record: whether applied results are recorded into sequences from the start (see start/stop_recording).
    """

    def __init__(self, classes: Sequence["SegmentClass"], mrml_scene=None, name: str = "NerveSeg",
                 record: bool = True, limit: Optional[RecordingLimit] = None):
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
        self._names = display.RegionNames(self.scene, self.classes, f"{name} names")
        self._nodes.extend(self._names.all_nodes())
        self.min_region_area = 50  # pixels: smaller regions get no name
        self._reference_geometry = None

        self._browser = self._image_sequence = self._segmentation_sequence = None
        self._recording = False
        self._first_index_time: Optional[float] = None
        self._last_index: Optional[float] = None
        self.recorded_frame_ids: List[int] = []
        self.limit = limit if limit is not None else RecordingLimit()
        self._items: Deque[Tuple[str, float, int]] = collections.deque()  # (index text, index s, bytes) per item
        self._recorded_bytes = 0
        self.limit_message = ""  # why recording stopped by itself (empty while within the limit)
        self.dropped_from_recording = 0  # oldest items removed by the drop-oldest policy
        self.applied_count = 0
        # display state of each class (inference.steady): shown / uncertain (outline only) / hidden; segments are
        # created shown, and their display changes only when a state changes
        self._states = {c.key: "shown" for c in self.classes}
        self._outlines = True  # whether segments are outlined in slice views (set_fill_outline)
        self._faint_opacity: dict = {}  # class key -> its fill opacity, while drawn faint (uncertain, no outlines)
        self.state_changes = 0  # segment display changes made for state changes (for checks)
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

    @property
    def recorded_bytes(self) -> int:
        """Memory the recorded items hold (pixels of image and labelmap plus the measured per-item overhead)."""
        return self._recorded_bytes

    @property
    def recorded_seconds(self) -> float:
        """Scan time the recording spans: from its first item to its last (0 with fewer than two)."""
        if len(self._items) < 2:
            return 0.0
        return self._items[-1][1] - self._items[0][1]

    def recording_text(self) -> str:
        """``recording 41.2 s, 312 of 1024 MiB`` for the status line."""
        used = self._recorded_bytes / (1024 * 1024)
        cap = self.limit.max_megabytes
        memory = f"{used:.0f} of {cap:g} MiB" if cap is not None else f"{used:.0f} MiB"
        seconds = f"{self.recorded_seconds:.1f} s"
        if self.limit.max_seconds is not None:
            seconds += f" of {self.limit.max_seconds:g} s"
        return f"{self.recorded_count} frames, {seconds}, {memory}"

    def set_limit(self, limit: RecordingLimit) -> None:
        """Bound the recording from now on (what is recorded already stays, even when over a new, lower bound,
        until the next frame applies the policy)."""
        self.limit = limit

    # -------------------------------------------------------------------------------------------- recording

    def start_recording(self) -> None:
        """Append every following applied result to the sequences (created on first use; idempotent)."""
        if self._browser is None:
            self._create_recording_nodes()
        # The Sequences logic leaves the proxies (our live nodes) alone while the browser records.
        self._browser.SetRecordingActive(True)
        self._recording = True
        self.limit_message = ""

    def stop_recording(self) -> None:
        """Stop appending; what was recorded stays. The browser then shows the last recorded item."""
        if self._browser is not None:
            self._browser.SetRecordingActive(False)
            if self._recording and self.recorded_count:
                # The Sequences logic copies the selected item into the proxies (the live nodes): selecting the
                # last item shows the same data that is live now.
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
        self._show_states(result.states)
        if self._names.visible:
            regions = result.regions
            if regions is None:  # not found where the labelmap was made (e.g. a result built here)

                regions = find_regions(result.labelmap, [c.label for c in self.classes], self.min_region_area)
            self._names.update(regions, geometry)
        if self._recording:
            self._record(result, now)
        self.applied_count += 1
        frame.stamp("applied")

    def _record(self, result: SegmentationResult, now: float) -> None:
        item_bytes = int(result.frame.image.nbytes + np.asarray(result.labelmap).nbytes + ITEM_OVERHEAD_BYTES)
        value = self._next_index(result, now)
        if not self._make_room(value, item_bytes):
            return
        index = f"{value:.3f}"
        self._image_sequence.SetDataNodeAtValue(self._volume, index)
        self._segmentation_sequence.SetDataNodeAtValue(self._segmentation, index)
        self.recorded_frame_ids.append(int(result.frame.frame_id))
        self._items.append((index, value, item_bytes))
        self._recorded_bytes += item_bytes

    def _make_room(self, value: float, item_bytes: int) -> bool:
        """Apply the limit before recording an item at index ``value``: True when it may be recorded."""
        limit = self.limit
        max_bytes = limit.max_bytes

        def over() -> bool:
            too_big = max_bytes is not None and self._recorded_bytes + item_bytes > max_bytes
            too_long = limit.max_seconds is not None and bool(self._items) and value - self._items[0][1] > limit.max_seconds
            return too_big or too_long

        if not over():
            return True
        if limit.at_limit == "drop-oldest":
            while self._items and over():
                self._drop_oldest()
            return not (max_bytes is not None and item_bytes > max_bytes)
        self.limit_message = (f"recording stopped at its limit ({limit.describe()}): {self.recorded_count} frames, "
                              f"{self.recorded_seconds:.1f} s kept; save it, then record again")
        self.stop_recording()
        return False

    def _drop_oldest(self) -> None:
        index, _, item_bytes = self._items.popleft()
        self._image_sequence.RemoveDataNodeAtValue(index)
        self._segmentation_sequence.RemoveDataNodeAtValue(index)
        self._recorded_bytes -= item_bytes
        self.recorded_frame_ids.pop(0)
        self.dropped_from_recording += 1

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
        if key in self._faint_opacity:  # drawn faint (uncertain without outlines): fainter than the new opacity
            self._faint_opacity[key] = float(opacity)
            display.set_segment_state(self._segmentation, key, "uncertain", outlines=False, fill_opacity=opacity)

    def set_fill_outline(self, fill: bool, outline: bool) -> None:
        """Draw the segments in slice views filled, outlined, both or (both False) not at all. An uncertain class is
        drawn as an outline, or, without outlines, as a fainter fill."""
        display.set_fill_outline(self._segmentation, fill, outline)
        if bool(outline) != self._outlines:
            self._outlines = bool(outline)
            for key, state in self._states.items():
                if state == "uncertain":
                    self._draw_state(key, state)

    # -------------------------------------------------------------------------------------------- confidence

    @property
    def class_states(self) -> dict:
        """{class key: display state now drawn}: ``shown``, ``uncertain`` (outline only) or ``hidden``."""
        return dict(self._states)

    def reset_states(self) -> None:
        """Draw every class as shown again (the live run stopped): the display of a class that was last uncertain
        or hidden would otherwise stay outline-only or off while the recording is browsed, edited or saved."""
        for key, state in list(self._states.items()):
            if state != "shown":
                self._draw_state(key, "shown")

    def _show_states(self, states: Optional[dict]) -> None:
        """Draw each class as its state in this result says (a result without states: every class shown), changing
        a segment's display only when its class's state changed."""
        states = states or {}
        for key, before in self._states.items():
            state = states.get(key, "shown")
            if state != before and state in display.STATE_FILL_OUTLINE:
                self._draw_state(key, state)

    def _draw_state(self, key: str, state: str) -> None:
        faint_now = state == "uncertain" and not self._outlines
        opacity = None
        if faint_now:
            opacity = self._faint_opacity.setdefault(key, display.segment_opacity(self._segmentation, key))
        elif key in self._faint_opacity:
            opacity = self._faint_opacity.pop(key)  # its own opacity back
        display.set_segment_state(self._segmentation, key, state, outlines=self._outlines, fill_opacity=opacity)
        self._states[key] = state
        self.state_changes += 1

    def set_names_visible(self, visible: bool) -> None:
        """Show or hide the class names at each region (markups points labelled with the class name)."""
        self._names.set_visible(visible)

    @property
    def region_names(self) -> "display.RegionNames":
        return self._names

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
