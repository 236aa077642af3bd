"""The data that travels down the live path: a frame, its geometry, and the segmentation computed from it.

Conventions used everywhere in NerveSeg:
- Images are numpy arrays indexed ``[row, column]`` = ``[j, i]``: shape ``(H, W)`` for one frame. The ``i`` axis runs
  along a row (image width), ``j`` down the columns (image height, usually depth into tissue), ``k`` is the
  single slice.
- Geometry is in RAS millimetres (the frame OpenIGTLink and Slicer use). ``origin`` is the centre of the first
  pixel (i = j = k = 0), as in Slicer volume nodes; OpenIGTLink's own matrix holds the image *centre*, and the
  codec in ``stream/`` converts.
- Timestamps of the stages are ``time.perf_counter()`` seconds of this process; the sender's clock
  (``igtl_timestamp``, seconds since the epoch) is kept apart because two machines' clocks do not agree.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass, field
from typing import Dict, Optional, Sequence, Tuple

import numpy as np

from .igtl import IMAGE_DEVICE_NAME
from .imaging.placement import restore

#: Stage stamps in the order a frame passes them. ``started`` is when the inference worker took the frame out of
#: the newest-frame slot; the gap before it is time spent waiting, not working.
STAGES = ("received", "started", "preprocessed", "inferred", "postprocessed", "applied")

#: Name of the latency measured between a stamp and the one before it (see SegmentationResult.stage_latencies_ms).
STAGE_LATENCY_NAMES = {"started": "wait", "preprocessed": "preprocess", "inferred": "inference",
                       "postprocessed": "postprocess", "applied": "apply"}


@dataclass(frozen=True)
class ImageGeometry:
    """Where a 2D frame's pixels lie in space.

    spacing: pixel size in mm along i, j, k.
    origin: RAS position (mm) of the centre of pixel (0, 0, 0).
    directions: 3x3, column c is the unit vector of axis c (i, j, k) in RAS.
    """

    spacing: Tuple[float, float, float] = (1.0, 1.0, 1.0)
    origin: Tuple[float, float, float] = (0.0, 0.0, 0.0)
    directions: Tuple[Tuple[float, float, float], ...] = ((1.0, 0.0, 0.0), (0.0, 1.0, 0.0), (0.0, 0.0, 1.0))

    def __post_init__(self):
        if len(self.spacing) != 3 or any(not np.isfinite(s) or s <= 0 for s in self.spacing):
            raise ValueError(f"ImageGeometry.spacing must be three positive finite numbers (mm), got {self.spacing}")
        if len(self.origin) != 3 or not all(np.isfinite(o) for o in self.origin):
            raise ValueError(f"ImageGeometry.origin must be three finite numbers (mm), got {self.origin}")
        d = np.asarray(self.directions, dtype=float)
        if d.shape != (3, 3) or not np.all(np.isfinite(d)):
            raise ValueError(f"ImageGeometry.directions must be a finite 3x3 matrix, got {self.directions}")

    def direction_matrix(self) -> np.ndarray:
        """3x3 array; column c is axis c's unit vector in RAS."""
        return np.asarray(self.directions, dtype=float)

    def ijk_to_ras(self) -> np.ndarray:
        """4x4 homogeneous matrix from pixel index (i, j, k) to RAS mm."""
        m = np.eye(4)
        m[:3, :3] = self.direction_matrix() * np.asarray(self.spacing, dtype=float)[np.newaxis, :]
        m[:3, 3] = self.origin
        return m

    @classmethod
    def from_ijk_to_ras(cls, matrix: np.ndarray) -> "ImageGeometry":
        """Inverse of :meth:`ijk_to_ras`; raises ValueError for a matrix with a zero-length axis."""
        m = np.asarray(matrix, dtype=float)
        if m.shape != (4, 4):
            raise ValueError(f"ijk_to_ras must be 4x4, got shape {m.shape}")
        axes = m[:3, :3]
        spacing = np.linalg.norm(axes, axis=0)
        if np.any(spacing <= 0):
            raise ValueError(f"ijk_to_ras has a zero-length axis: column norms {spacing.tolist()}")
        directions = axes / spacing[np.newaxis, :]
        return cls(
            spacing=tuple(float(s) for s in spacing),
            origin=tuple(float(o) for o in m[:3, 3]),
            directions=tuple(tuple(float(v) for v in row) for row in directions),
        )

    def with_spacing(self, spacing: Sequence[float]) -> "ImageGeometry":
        return dataclasses.replace(self, spacing=tuple(float(s) for s in spacing))


@dataclass
class Frame:
    """One ultrasound frame as it arrives from the scanner (or the replay server).

    image: ``(H, W)`` grey array, dtype uint8, uint16 or float32 (colour input is converted to grey on receipt).
    frame_id: increasing number given by the receiver (not the sender), unique within one run.
    igtl_timestamp: the sender's timestamp from the IGTL header, seconds since the epoch (0 when absent).
    received_wall: ``time.time()`` when the whole message had arrived, to compare with ``igtl_timestamp`` (only
        meaningful when sender and receiver share a clock, as in the demo).
    timestamps: ``perf_counter()`` seconds at each stage of :data:`STAGES` reached so far.
    metadata: the IGTL message's metadata (header version 2 key/value pairs; empty for version 1), e.g. the
        ``NerveSeg.presence.<class>`` / ``NerveSeg.state.<class>`` entries of a ``nerveseg serve`` labelmap.
    """

    image: np.ndarray
    geometry: ImageGeometry = field(default_factory=ImageGeometry)
    frame_id: int = 0
    device_name: str = IMAGE_DEVICE_NAME
    igtl_timestamp: float = 0.0
    received_wall: float = 0.0
    timestamps: Dict[str, float] = field(default_factory=dict)
    metadata: Dict[str, str] = field(default_factory=dict)

    def __post_init__(self):
        if not isinstance(self.image, np.ndarray) or self.image.ndim != 2:
            shape = getattr(self.image, "shape", type(self.image).__name__)
            raise ValueError(f"Frame.image must be a 2D (H, W) numpy array, got {shape}")

    @property
    def height(self) -> int:
        return int(self.image.shape[0])

    @property
    def width(self) -> int:
        return int(self.image.shape[1])

    def stamp(self, stage: str, when: Optional[float] = None) -> None:
        """Record that this frame reached ``stage`` (one of :data:`STAGES`) now or at ``when``."""
        if stage not in STAGES:
            raise ValueError(f"unknown stage {stage!r}; stages are {STAGES}")
        self.timestamps[stage] = time.perf_counter() if when is None else when


@dataclass
class Instance:
    """One detected object of an instance model (BPMSegNet)."""

    label: int  # class label value (as in SegmentClass.label)
    score: float  # 0..1
    box: Tuple[float, float, float, float]  # x0, y0, x1, y1 in pixels of the frame
    mask: np.ndarray  # (H, W) bool, in the frame's own size


@dataclass
class SegmentationResult:
    """What the engine hands to the main thread for one frame.

    labelmap: ``(H, W)`` uint8 in the frame's own size; 0 is background, other values are ``SegmentClass.label``.
    probabilities: ``(C, h, w)`` float32 class probabilities (C includes background) in the MODEL's input size,
        as the model saw the frame (padding included), when the model gives them; ``placement`` says where the
        frame lies in them (``inference.preprocess.restore(probabilities, placement)`` brings them to the frame).
        When ``region`` is set, the model saw only that part of the frame: ``probabilities`` and ``placement`` are
        the region's, ``restore`` brings them to the region's size, and ``region.place_maps(maps, H, W)`` to the
        frame's (background outside the region); ``frame_probabilities()`` does both.
    instances: per-object results of an instance model, else None (boxes and masks in frame pixels).
    region: the ``inference.region.Region`` (x, y, w, h in frame pixels) the model segmented, or None for the
        whole frame. The labelmap is always the whole frame's, zero outside the region.
    presence: {class key: how sure the model is that the class is in this frame, 0..1}: the calibrated presence
        where the model card has a ``presence`` block, else the raw score (the class's highest probability); see
        ``inference.presence``. Set by the live path (``inference.steady.SteadyOverlay.gate``); None elsewhere.
    states: {class key: ``shown`` / ``uncertain`` / ``hidden``}: how the live view draws each class (filled,
        outline only, not at all); a ``hidden`` class has no pixels in ``labelmap``. None outside the live path.
    """

    frame: Frame
    labelmap: np.ndarray
    model_name: str
    classes: Tuple["SegmentClass", ...] = ()  # noqa: F821 (defined in classes.py; kept loose to avoid a cycle)
    probabilities: Optional[np.ndarray] = None
    instances: Optional[list] = None
    #: ``[(label, x, y, area), ...]``: each class's connected regions (centroid in pixels), where the labelmap was
    #: made (``regions.find_regions``); None when not computed (the scene then finds them itself).
    regions: Optional[list] = None
    placement: Optional[object] = None  # inference.preprocess.Placement of the frame (or region) in the model input
    region: Optional[object] = None  # inference.region.Region the model saw; None: the whole frame
    presence: Optional[Dict[str, float]] = None
    states: Optional[Dict[str, str]] = None

    def __post_init__(self):
        if self.labelmap.shape != self.frame.image.shape:
            raise ValueError(
                f"labelmap shape {self.labelmap.shape} differs from its frame's image shape {self.frame.image.shape}"
            )

    @property
    def frame_id(self) -> int:
        return self.frame.frame_id

    def frame_probabilities(self) -> Optional[np.ndarray]:
        """``(C, H, W)`` float32 class probabilities in the frame's own size (the region's placed in the frame,
        background outside it), or None when the model gave none or no placement says where the frame lies."""
        if self.probabilities is None:
            return None
        height, width = self.labelmap.shape
        if self.region is None and self.probabilities.shape[1:] == (height, width):
            return self.probabilities
        if self.placement is None:
            return None
        maps = restore(self.probabilities, self.placement)
        return maps if self.region is None else self.region.place_maps(maps, height, width)

    @property
    def geometry(self) -> ImageGeometry:
        return self.frame.geometry

    def stage_latencies_ms(self) -> Dict[str, float]:
        """Milliseconds per stage, for the stages whose both ends are stamped.

        ``receive``: sender's IGTL timestamp to fully received (network and parsing; same-clock senders only);
        ``wait``, ``preprocess``, ``inference``, ``postprocess``, ``apply``: the gaps between consecutive
        :data:`STAGES` stamps (``apply`` includes waiting for the main thread to pick the result up);
        ``total``: received to the last stamp reached (received to applied once applied).
        """
        frame = self.frame
        ts = frame.timestamps
        out: Dict[str, float] = {}
        if frame.igtl_timestamp > 0 and frame.received_wall > 0:
            out["receive"] = (frame.received_wall - frame.igtl_timestamp) * 1000.0
        previous = None
        for stage in STAGES:
            if stage in ts:
                if previous is not None and stage in STAGE_LATENCY_NAMES:
                    out[STAGE_LATENCY_NAMES[stage]] = (ts[stage] - ts[previous]) * 1000.0
                previous = stage
        if "received" in ts and previous is not None:
            out["total"] = (ts[previous] - ts["received"]) * 1000.0
        return out
