"""One frame in, one segmentation out: preprocessing, a model on a backend, postprocessing.

The live engine, ``nerveseg predict``, pre-labelling and evaluation all segment through :class:`Segmenter`, so
what is measured offline is what the clinician sees live.
"""

from __future__ import annotations

import logging
import math
import time
from pathlib import Path
from typing import Optional, Tuple

import numpy as np

from ..checksums import sha256_file
from ..frame import Frame, Instance, SegmentationResult
from ..imaging import placement as pp
from ..imaging.region import AUTO, AutoRegion, Region, RegionChoice, parse_region
from ..models import registry
from .backends import TorchBackend, choose_backend, describe, resolve_device, set_threads
from .loading import load_backend

log = logging.getLogger(__name__)

#: Instance masks are probabilities; a pixel belongs to an instance above this.
INSTANCE_MASK_THRESHOLD = 0.5
#: Instances below this score are not painted into the labelmap.
INSTANCE_SCORE_THRESHOLD = 0.5

#: How a semantic model's output becomes the frame's labelmap. ``smooth``: the class probabilities resampled
#: bilinearly to the frame, then argmax (contours follow the probabilities between model pixels). ``fast``: argmax at
#: the model's resolution, then nearest-neighbour up (each model pixel becomes a block of frame pixels).
CONTOURS = ("smooth", "fast")
DEFAULT_CONTOURS = "smooth"


class Segmenter:
    """Segments single frames with one model.

    card: the model's ModelCard (classes, input spec, task).
    backend: a TorchBackend or OnnxBackend (anything with ``run(batch)`` and ``task``).
    min_component_area: connected regions smaller than this (pixels of the frame) are dropped; Smistad's rule.
    contours: ``smooth`` or ``fast`` (see :data:`CONTOURS`; benchmarks/speed/contours.md measures both).
    region: the image region (:mod:`.region`): None (the whole frame, the default), a :class:`~.region.Region`
        or ``"X,Y,W,H"`` (frame pixels), or ``"auto"`` (found from the first second of frames; the whole frame is
        segmented meanwhile). The model sees only the region; the labelmap is the full frame's, zero outside it.
        Settable at any time through :attr:`region`.
    """

    def __init__(self, card, backend, min_component_area: int = pp.MIN_COMPONENT_AREA_PX,
                 contours: str = DEFAULT_CONTOURS, region: RegionChoice = None):
        # (choice, auto-detector or None): replaced in one assignment, so the inference thread always sees a pair
        self._region_state: Tuple[RegionChoice, Optional[AutoRegion]] = (None, None)
        self._fitted: Optional[tuple] = None  # (choice, frame shape, the region clipped to that frame)
        self.region = region
        if contours not in CONTOURS:
            raise ValueError(f"contours {contours!r} unknown; expected one of {', '.join(CONTOURS)}")
        self.contours = contours
        self.card = card
        self.backend = backend
        self.spec: pp.InputSpec = card.input
        self.classes = tuple(card.classes)
        self.min_component_area = int(min_component_area)
        card_path = getattr(card, "path", None)
        self.card_sha256: Optional[str] = sha256_file(card_path) if card_path and Path(card_path).is_file() else None

    # ----------------------------------------------------------------------------------------------- region
    @property
    def region(self) -> RegionChoice:
        """The region choice: None (whole frame), a Region, or ``"auto"``. Set it to any of these, to
        ``"X,Y,W,H"`` or to an ``(x, y, w, h)`` sequence; setting ``"auto"`` again starts the detection over."""
        return self._region_state[0]

    @region.setter
    def region(self, choice) -> None:
        if choice is None or isinstance(choice, str):
            choice = parse_region(choice)
        elif not isinstance(choice, Region):
            choice = Region(*choice)  # an (x, y, w, h) sequence
        self._region_state = (choice, AutoRegion() if choice == AUTO else None)

    @property
    def auto_region(self) -> Optional[AutoRegion]:
        """The auto-detector (its ``region`` once found, ``reason``, ``frames`` collected) with ``region="auto"``,
        else None."""
        return self._region_state[1]

    def region_for(self, image: np.ndarray, t: Optional[float] = None, learn: bool = True) -> Optional[Region]:
        """The region this frame is segmented in (frame pixels), or None for the whole frame (no region, or
        auto-detection still collecting frames: ``learn`` feeds this frame to it, at time ``t`` s). RegionError
        (a ValueError) naming the frame size for a given region outside the frame."""
        choice, auto = self._region_state
        if choice is None:
            return None
        shape = tuple(int(v) for v in image.shape[:2])
        if auto is not None:
            if learn:
                return auto.add(image, t)
            return auto.region if auto.shape == shape else None
        fitted = self._fitted
        if fitted is None or fitted[0] is not choice or fitted[1] != shape:
            box = choice.fit(*shape)
            if box != choice:
                log.warning("region %s reaches outside the %d x %d frame: using %s", choice.text(), shape[1],
                            shape[0], box.text())
            self._fitted = fitted = (choice, shape, box)
        return fitted[2]

    # ----------------------------------------------------------------------------------------------- building
    @classmethod
    def from_module(cls, card, module, device: str = "cpu", threads: Optional[int] = None, **kwargs) -> "Segmenter":
        """Wrap an already built torch module (e.g. freshly trained, or random for tests)."""
        return cls(card, TorchBackend(module, task=card.task, device=device, threads=threads), **kwargs)

    @classmethod
    def from_card(cls, card, backend: str = "auto", device: str = "cpu", threads: Optional[int] = None,
                  onnx_cache: Optional[Path] = None, weights_path=None, **kwargs) -> "Segmenter":
        """``card``'s model with its shipped (or given) weights on ``backend`` (auto, torch, onnx or onnx-int8; see
        :func:`~.loading.load_backend`); ``kwargs`` go to the constructor. Raises ValueError for an unknown backend
        or a non-semantic model on ONNX, and the registry's WeightsError for missing or corrupt weights."""
        return cls(card, load_backend(card, backend, device=device, threads=threads, onnx_cache=onnx_cache,
                                      weights_path=weights_path), **kwargs)

    @classmethod
    def from_name(cls, name: str, backend: str = "torch", device: str = "cpu", weights_path=None,
                  threads: Optional[int] = None, onnx_cache: Optional[Path] = None, **kwargs) -> "Segmenter":
        """:meth:`from_card` for the registered model ``name`` (its card looked up once, here), where ``auto`` is
        float32 only (:func:`~.backends.choose_backend`): :func:`load_segmenter` is the live path's, whose ``auto``
        may run the INT8 graph.

        Raises KeyError/ValueError for an unknown name (listing the valid ones) and the registry's WeightsError
        for missing or corrupt weights. The ONNX backend exports the loaded model once to ``onnx_cache``
        (default: a folder in the system temp dir, keyed by the weights' sha256 and
        :data:`registry.ONNX_GRAPH_VERSION`).
        """
        card = registry.card(name)
        if backend == "auto":
            backend = choose_backend(card.task, resolve_device(device))
        return cls.from_card(card, backend, device=device, threads=threads, onnx_cache=onnx_cache,
                             weights_path=weights_path, **kwargs)

    # ----------------------------------------------------------------------------------------------- running
    def warm_up(self, height: int = 420, width: int = 580) -> None:
        """Run once on a blank frame so the first real frame is not slowed by lazy initialisation (the region is
        not used, and auto-detection does not see the blank frame)."""
        self._segment(np.zeros((height, width), dtype=np.uint8), Frame(image=np.zeros((height, width), np.uint8)),
                      None)

    def predict_probabilities(self, image: np.ndarray) -> np.ndarray:
        """Class probabilities ``(K, H, W)`` float32 in the frame's own size (semantic models only); with a
        region, the background class outside it. Auto-detection is not fed (its region once found is used)."""
        if self.card.task != "semantic":
            raise ValueError(f"{self.card.name} is an instance model; it gives instances, not probabilities")
        box = self.region_for(image, learn=False)
        tensor, placement = pp.preprocess(image if box is None else box.crop(image), self.spec)
        probabilities = pp.restore(self.backend.run(tensor[np.newaxis])[0], placement)
        return probabilities if box is None else box.place_maps(probabilities, *image.shape[:2])

    def segment(self, image: np.ndarray, frame: Optional[Frame] = None, steady=None) -> SegmentationResult:
        """Segment one frame. ``image`` (H, W) grey or (H, W, 3); when ``frame`` is given its stage timestamps
        (preprocessed, inferred, postprocessed) are stamped and the result refers to it.

        With a :attr:`region`, only the region is segmented: the labelmap is still the frame's (zero outside the
        region), instance boxes and masks are in frame pixels, and ``result.probabilities`` / ``result.placement``
        are those of the region's crop (``result.region`` says where it lies).

        ``steady``: the stream's :class:`~.steady.SteadyOverlay` (the live path; one per stream, so a segmenter can
        serve several): the labelmap is then made once, from the steadied probabilities, and the result carries
        ``presence`` and ``states`` (see :mod:`.steady`). None (``predict``, ``evaluate``, pre-labelling): the
        frame's own answer, as always."""
        if frame is None:
            frame = Frame(image=pp.to_grey(image))
        box = None
        choice, auto = self._region_state
        if choice is not None:  # the detector reads the grey frame; a given region crops what came in
            box = self.region_for(frame.image if auto is not None else image, t=frame.timestamps.get("received"))
        return self._segment(image, frame, box, steady)

    def _segment(self, image: np.ndarray, frame: Frame, box: Optional[Region], steady=None) -> SegmentationResult:
        if box is not None:
            full_h, full_w = image.shape[:2]
            image = box.crop(image)
        tensor, placement = pp.preprocess(image, self.spec)
        frame.stamp("preprocessed")
        output = self.backend.run(tensor[np.newaxis])
        frame.stamp("inferred")
        raw = None
        if self.card.task == "semantic":
            raw = output[0]
            # The stream's moving average, before the labelmap is made: the postprocessing runs once, on what is drawn
            probabilities = raw if steady is None else steady.average(raw, placement, frame.image, box)
            labelmap, probabilities, instances = self.semantic(probabilities, placement)
        else:
            labelmap, probabilities, instances = self._instances(output[0], placement)
        if box is not None:
            labelmap = box.place(labelmap, full_h, full_w)
            if instances:
                instances = [Instance(label=i.label, score=i.score, mask=box.place(i.mask, full_h, full_w),
                                      box=(i.box[0] + box.x, i.box[1] + box.y, i.box[2] + box.x, i.box[3] + box.y))
                             for i in instances]
        result = SegmentationResult(frame=frame, labelmap=labelmap, model_name=self.card.name, classes=self.classes,
                                    probabilities=probabilities, instances=instances, placement=placement, region=box)
        if steady is not None:  # presence (from this frame's own probabilities), hysteresis, hiding, holding
            result = steady.gate(result, raw_probabilities=raw)
        frame.stamp("postprocessed")
        return result

    def semantic(self, probabilities: np.ndarray, placement: pp.Placement):
        """(labelmap, probabilities, None): the labelmap of ``(K, h, w)`` model-size probabilities in the frame's
        (or region's) own size, as :attr:`contours` says, regions under :attr:`min_component_area` dropped. Reads
        only ``contours``, ``min_component_area`` and ``classes`` (the steady overlay calls it with its own)."""
        box = None
        if self.contours == "smooth":
            labelmap, box = smooth_labelmap_and_box(probabilities, placement)
            if box is None:  # nothing but background
                return labelmap, probabilities, None
        else:
            labelmap = pp.restore_mask(probabilities.argmax(axis=0).astype(np.uint8), placement)
        labelmap = pp.remove_small_components(labelmap, self.min_component_area, labels=[c.label for c in self.classes],
                                              in_place=True, within=box)  # made here
        return labelmap, probabilities, None

    _semantic = semantic  # the name used before it was public (benchmarks)

    def _instances(self, output: dict, placement: pp.Placement):
        sx = placement.src_w / placement.scaled_w
        sy = placement.src_h / placement.scaled_h
        labelmap = np.zeros((placement.src_h, placement.src_w), dtype=np.uint8)
        instances = []
        order = np.argsort(output["scores"])  # ascending, so higher scores paint last and win overlaps
        for i in order:
            score = float(output["scores"][i])
            mask_prob = pp.restore(output["masks"][i][np.newaxis].astype(np.float32), placement,
                                   background_channel=False)[0]
            mask = mask_prob > INSTANCE_MASK_THRESHOLD
            x0, y0, x1, y1 = (float(v) for v in output["boxes"][i])
            label = int(output["labels"][i])
            instances.append(Instance(label=label, score=score, box=(x0 * sx, y0 * sy, x1 * sx, y1 * sy), mask=mask))
            if score >= INSTANCE_SCORE_THRESHOLD:
                labelmap[mask] = label
        labelmap = pp.remove_small_components(labelmap, self.min_component_area,
                                              labels=[c.label for c in self.classes])
        instances.reverse()  # highest score first for callers
        return labelmap, None, instances

    def describe(self) -> str:
        return f"{self.card.name} on {describe(self.backend)}"


def load_segmenter(model, backend: str = "auto", device: str = "cpu", threads: Optional[int] = None,
                   onnx_cache: Optional[Path] = None, weights_path=None, **kwargs) -> Segmenter:
    """The live path's model: a :class:`Segmenter` for ``model`` (a ModelCard, or a registered name whose card is
    looked up once) on ``backend`` (``auto``, torch, onnx or onnx-int8; ``auto`` runs the INT8 graph where the card
    allows it, see :func:`~.loading.resolve_backend`), with ``threads`` intra-op threads for ONNX Runtime and torch.

    ``onnx-int8`` exports the float32 graph as the onnx backend does (cached by the weights' sha256), then
    quantizes it once into :func:`~.quantize.int8_path_for` next to it. Raises ValueError for an unknown backend
    or a non-semantic model on ONNX, KeyError for an unknown name, and the registry's WeightsError for missing or
    bad weights.
    """
    card = registry.card(model) if isinstance(model, str) else model
    segmenter = Segmenter.from_card(card, backend, device=device, threads=threads, onnx_cache=onnx_cache,
                                    weights_path=weights_path, **kwargs)
    set_threads(threads)  # torch is loaded by now (the weights were read with it)
    return segmenter


def _argmax_above_background(margins) -> np.ndarray:
    """uint8 labels from the K-1 margins ``p_k - p_0`` (k = 1..K-1) of each class over background: the argmax of
    (0, margin_1, ..., margin_K-1), i.e. of (p_0, ..., p_K-1), first class on ties (numpy's rule; a tie with
    background is background), by K-1 comparisons on contiguous per-class maps, several times faster than
    ``np.argmax`` over a class axis for a small K. ``margins[0]`` is overwritten (the caller's scratch)."""
    labels = np.zeros(margins[0].shape, dtype=np.uint8)
    better = margins[0] > 0
    labels[better] = 1
    if len(margins) == 1:
        return labels
    best = np.maximum(margins[0], 0, out=margins[0])
    last = len(margins)
    for k in range(2, last + 1):
        margin = margins[k - 1]
        np.greater(margin, best, out=better)
        np.copyto(labels, k, where=better)
        if k < last:
            np.maximum(best, margin, out=best)
    return labels


_DILATE_3X3 = np.ones((3, 3), np.uint8)


def smooth_labelmap(probabilities: np.ndarray, placement: pp.Placement) -> np.ndarray:
    """The frame's labelmap, see :func:`smooth_labelmap_and_box`."""
    return smooth_labelmap_and_box(probabilities, placement)[0]


def smooth_labelmap_and_box(probabilities: np.ndarray, placement: pp.Placement
                            ) -> Tuple[np.ndarray, Optional[Tuple[int, int, int, int]]]:
    """(labelmap, box): the frame's labelmap ``(src_h, src_w)`` uint8: argmax of the ``(K, h, w)`` model-size
    probabilities resampled bilinearly to the frame (as :func:`~.preprocess.restore`, cropped rows background),
    computed only where it can differ from background.

    Why only there: a bilinear sample is a convex combination of its 2x2 model-pixel neighbours, so where background
    is the argmax of all four it is the argmax of the sample too. The frame pixels whose neighbours include a
    foreground model pixel lie inside the boxes of the (one pixel dilated) foreground components, mapped to the
    frame; only those boxes are resampled (with ``cv2.warpAffine``, the same pixel-centre mapping as
    ``cv2.resize``).

    What is resampled is each class's margin over background, p_k - p_0 (K-1 maps; resampling is linear, so these
    are the margins of the resampled probabilities, and the argmax of (0, margins) is that of the probabilities):
    one map fewer than the probabilities. Each is resampled on its own and the argmax runs over contiguous
    per-class maps, at about half the cost of warping interleaved maps (benchmarks/speed/serve_overhead.md, "Cuts").

    ``box`` = (top, bottom, left, right) in frame pixels holds every pixel that can be non-zero (the union of the
    resampled boxes), for :func:`~.preprocess.remove_small_components`'s ``within``; None when the model marked
    nothing.
    """
    import cv2

    probabilities = np.asarray(probabilities, dtype=np.float32)
    channels = probabilities.shape[0]
    labelmap = np.zeros((placement.src_h, placement.src_w), dtype=np.uint8)
    if channels < 2:
        return labelmap, None
    valid = probabilities[:, :placement.valid_h, :placement.valid_w]
    # Each class's margin over background, p_k - p_0: bilinear resampling is linear, so the resampled margins are
    # the margins of the resampled probabilities, and the argmax needs only these K-1 maps (one warp fewer per box).
    # OpenCV reads the row-strided views as they are.
    if (placement.valid_h, placement.valid_w) == (placement.scaled_h, placement.scaled_w):
        margins = [cv2.subtract(valid[k], valid[0]) for k in range(1, channels)]
    else:  # rows cropped away below the input are background (p_0 = 1, the others 0), as in restore()
        margins = []
        for k in range(1, channels):
            margin = np.full((placement.scaled_h, placement.scaled_w), -1.0, dtype=np.float32)
            np.subtract(valid[k], valid[0], out=margin[:placement.valid_h, :placement.valid_w])
            margins.append(margin)
    best = margins[0]
    for margin in margins[1:]:
        best = cv2.max(best, margin)
    # the argmax is not background exactly where some margin is above 0 (a tie with background is background)
    foreground = cv2.compare(best, 0.0, cv2.CMP_GT)
    if not cv2.countNonZero(foreground):
        return labelmap, None
    grown = cv2.dilate(foreground, _DILATE_3X3)
    # The boxes of the grown regions, from their outer outlines: each 8-connected region has one (a region inside
    # another's hole has none, and needs none: it lies inside that region's box). Cheaper than labelling the
    # regions: 85 against 140 us with the memory cold, the same boxes on 203 of 203 usgra-seg frames
    # (benchmarks/speed/serve_overhead.md).
    outlines, _ = cv2.findContours(grown, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    sx, sy = placement.scaled_w / placement.src_w, placement.scaled_h / placement.src_h
    flags = cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP
    top, bottom, left, right = placement.src_h, 0, placement.src_w, 0
    for outline in outlines:
        x, y, w, h = cv2.boundingRect(outline)
        # frame column X samples the model map at u = (X + 0.5) sx - 0.5 from columns floor(u) and floor(u) + 1,
        # so the box's frame columns are those with u in (x - 1, x + w); at the map's edge samples are clamped to
        # it, so a box touching the edge reaches the frame's edge.
        x0 = 0 if x == 0 else max(0, math.floor((x - 0.5) / sx - 0.5))
        x1 = placement.src_w if x + w >= placement.scaled_w else \
            min(placement.src_w, math.ceil((x + w + 0.5) / sx - 0.5) + 1)
        y0 = 0 if y == 0 else max(0, math.floor((y - 0.5) / sy - 0.5))
        y1 = placement.src_h if y + h >= placement.scaled_h else \
            min(placement.src_h, math.ceil((y + h + 0.5) / sy - 0.5) + 1)
        if x1 <= x0 or y1 <= y0:
            continue
        # frame pixel (X, Y) of the box samples the model map at ((X + x0 + 0.5) sx - 0.5, (Y + y0 + 0.5) sy - 0.5);
        # border values replicated, as cv2.resize does
        inverse = np.array([[sx, 0.0, (x0 + 0.5) * sx - 0.5], [0.0, sy, (y0 + 0.5) * sy - 0.5]], dtype=np.float64)
        box = [cv2.warpAffine(margin, inverse, (x1 - x0, y1 - y0), flags=flags, borderMode=cv2.BORDER_REPLICATE)
               for margin in margins]
        target = labelmap[y0:y1, x0:x1]
        np.maximum(target, _argmax_above_background(box), out=target)
        top, bottom, left, right = min(top, y0), max(bottom, y1), min(left, x0), max(right, x1)
    return labelmap, ((top, bottom, left, right) if bottom > top and right > left else None)


def time_segment(segmenter: Segmenter, image: np.ndarray, repeats: int = 20) -> Tuple[float, float]:
    """Median and 95th percentile ms of ``segmenter.segment(image)`` after one warm-up call."""
    segmenter.segment(image)
    samples = []
    for _ in range(repeats):
        start = time.perf_counter()
        segmenter.segment(image)
        samples.append((time.perf_counter() - start) * 1000.0)
    return float(np.median(samples)), float(np.percentile(samples, 95))
