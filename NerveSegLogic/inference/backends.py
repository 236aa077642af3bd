"""Inference backends: the same model run by torch (CPU, or CUDA where present) or by ONNX Runtime, in float32
or (``onnx-int8``) as a statically quantized INT8 graph.

A backend takes a float32 batch ``(B, C, H, W)`` in the model's input size and returns, for a semantic model,
class probabilities ``(B, K, H, W)`` float32 (softmax over K, background included); for an instance model a list
(one per image) of dicts with ``boxes``, ``labels``, ``scores``, ``masks`` as numpy arrays in input pixels.
torch and onnxruntime are imported when a backend is made, never at module import.
"""

from __future__ import annotations

import contextlib
import logging
import os
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Union

import numpy as np

log = logging.getLogger(__name__)

BACKENDS = ("torch", "onnx", "onnx-int8")
#: What the commands accept for --backend: ``auto`` then the backends.
BACKEND_CHOICES = ("auto",) + BACKENDS
#: ``auto`` runs a model's INT8 graph only when its card records a measured Dice change (int8 against float32, every
#: class) below this.
INT8_MAX_DICE_CHANGE = 0.01


def default_threads() -> int:
    """--threads default of serve and demo: one core less than the machine has (at least one), leaving a core to
    receiving, sending and the main thread. Measured end to end on 2 cores (benchmarks/speed/threads.md, shared machine):
    1 inference thread gave p50 47 ms and 26.4 fps against 73 ms and 20.9 fps with 2, lower p50 in all 3 rounds."""
    return max(1, (os.cpu_count() or 1) - 1)


DEFAULT_THREADS = default_threads()
#: How an INT8 graph is made, by name: ONNX Runtime's calibration method and extra options. The name is part of the
#: graph's cache file name, so a changed recipe never reuses an old graph. A card picks one with ``int8.recipe``
#: (:func:`int8_recipe_of`); benchmarks/int8/int8_recipes.py compares them on the cross-validation folds.
INT8_RECIPES: Dict[str, Dict[str, Any]] = {
    # activation ranges: min and max over all calibration frames
    "qdq-perchannel-minmax-v1": {"calibrate_method": "MinMax", "extra_options": {}},
    # activation ranges: min and max of each calibration frame, averaged (one outlier frame no longer sets a range)
    "qdq-perchannel-movavg-v1": {"calibrate_method": "MinMax", "extra_options": {"CalibMovingAverage": True}},
}
#: The recipe of a card that names none.
INT8_RECIPE = "qdq-perchannel-minmax-v1"


def int8_recipe_of(card) -> str:
    """The INT8 recipe the card names in ``int8.recipe`` (one of :data:`INT8_RECIPES`), else :data:`INT8_RECIPE`.

    Raises ValueError naming the card and the field for a recipe this version does not know."""
    record = (getattr(card, "raw", None) or {}).get("int8")
    recipe = record.get("recipe") if isinstance(record, dict) else None
    if recipe is None:
        return INT8_RECIPE
    if recipe not in INT8_RECIPES:
        raise ValueError(f"model card {card.name!r}: int8.recipe is {recipe!r}; expected one of "
                         f"{', '.join(INT8_RECIPES)}")
    return recipe


@contextlib.contextmanager
def eval_mode(module):
    """Run ``module`` in eval mode and no-grad, restoring its previous training flag afterwards."""
    import torch

    was_training = module.training
    module.eval()
    try:
        with torch.inference_mode():
            yield module
    finally:
        module.train(was_training)


def resolve_device(device: str = "auto") -> str:
    """``auto`` picks CUDA when torch sees a GPU, else CPU; anything else is checked and returned."""
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"device {device!r} asked for, but torch sees no CUDA GPU here (torch {torch.__version__}); "
                         "use --device cpu")
    if device != "cpu" and not device.startswith("cuda"):
        raise ValueError(f"unknown device {device!r}; expected auto, cpu or cuda[:N]")
    return device


class TorchBackend:
    """Runs a torch module. ``task`` is ``semantic`` (softmax of logits) or ``instance`` (the model's own output)."""

    name = "torch"

    def __init__(self, module, task: str = "semantic", device: str = "cpu", threads: Optional[int] = None):
        import torch

        if threads:
            torch.set_num_threads(int(threads))
        self.device = resolve_device(device)
        self.task = task
        self.module = module.to(self.device).eval()

    def run(self, batch: np.ndarray) -> Union[np.ndarray, List[dict]]:
        import torch

        x = torch.from_numpy(np.ascontiguousarray(batch, dtype=np.float32)).to(self.device)
        with eval_mode(self.module) as model:
            out = model(x)
            if self.task == "semantic":
                return torch.softmax(out.float(), dim=1).cpu().numpy()
            return [{k: v.detach().cpu().numpy() for k, v in item.items()} for item in out]


class OnnxBackend:
    """Runs an exported ONNX graph (input ``image``, output ``probabilities``) with ONNX Runtime on the CPU."""

    name = "onnx"

    def __init__(self, path: Union[str, Path], threads: Optional[int] = None):
        import onnxruntime as ort

        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"ONNX model not found: {path}")
        options = ort.SessionOptions()
        options.intra_op_num_threads = int(threads or os.cpu_count() or 1)
        options.inter_op_num_threads = 1
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        self.session = ort.InferenceSession(str(path), sess_options=options, providers=["CPUExecutionProvider"])
        self.task = "semantic"
        self.input_name = self.session.get_inputs()[0].name
        self.path = path

    def run(self, batch: np.ndarray) -> np.ndarray:
        return self.session.run(None, {self.input_name: np.ascontiguousarray(batch, dtype=np.float32)})[0]


class OnnxInt8Backend(OnnxBackend):
    """An INT8 graph made by :func:`quantize_int8` (float32 in, float32 probabilities out), on ONNX Runtime."""

    name = "onnx-int8"


def thread_count(text: str) -> int:
    """argparse type for --threads: an integer >= 0 (0: the backend's default, one per core)."""
    import argparse

    try:
        value = int(text)
    except ValueError:
        value = -1
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected a whole number of threads >= 0 (0: one per core), got {text!r}")
    return value


def set_threads(threads: Optional[int]) -> None:
    """Use ``threads`` torch intra-op threads (when torch is already loaded); None or 0 keeps the default."""
    import sys

    if threads and "torch" in sys.modules:
        sys.modules["torch"].set_num_threads(int(threads))


#: What the offline commands (predict, annotate prelabel, evaluate) accept for --tta: ``none``, or ``flip``
#: (:class:`FlipTTABackend`). Not offered live: it runs the model twice per frame.
TTA_CHOICES = ("none", "flip")


class FlipTTABackend:
    """Horizontal-flip test-time augmentation around another backend of a semantic model.

    ``run(batch)`` is the mean of ``inner.run(batch)`` and of ``inner.run(mirrored batch)`` mirrored back, both
    class probabilities ``(B, K, H, W)``; the mean of two probability maps is one again (sums to 1 over K). Why: a
    model trained with flips (as the shipped ones are) should answer the same for a frame and its mirror image, but
    does not exactly; averaging the two answers for pre-labels and offline evaluation costs one more model run per
    frame, too much for the live path. The mirror is of the model's input, so for cards whose frame fills the
    input's width (``fit_width_pad_crop_bottom``, ``resize``) it is the mirrored frame; under ``letterbox`` a frame
    padded on the right is seen padded on the left in the mirror.

    Raises ValueError naming ``model`` when ``inner`` does not give semantic probabilities (instance or promptable
    models), since there is no mean of two lists of instances to take.
    """

    name = "flip-tta"
    tta = "flip"

    def __init__(self, inner, model: str = "this model"):
        check_tta("flip", getattr(inner, "task", None), model)
        if isinstance(inner, FlipTTABackend):
            raise ValueError(f"model {model!r} already runs with flip test-time augmentation")
        self.inner = inner
        self.task = "semantic"

    def run(self, batch: np.ndarray) -> np.ndarray:
        batch = np.asarray(batch, dtype=np.float32)
        if batch.ndim != 4:
            raise ValueError(f"flip test-time augmentation expects a batch (B, C, H, W), got shape {batch.shape}")
        plain = np.asarray(self.inner.run(batch), dtype=np.float32)
        mirrored = np.asarray(self.inner.run(np.ascontiguousarray(batch[..., ::-1])), dtype=np.float32)[..., ::-1]
        if plain.ndim != 4 or plain.shape != mirrored.shape:
            raise ValueError(f"flip test-time augmentation expects probabilities (B, K, H, W) from "
                             f"{describe(self.inner)}, got shapes {plain.shape} and {mirrored.shape}")
        return (plain + mirrored) / np.float32(2.0)


def check_tta(tta: str, task: Optional[str], model: str) -> None:
    """Raise ValueError when ``tta`` is not one of :data:`TTA_CHOICES`, or asks for test-time augmentation of
    ``model`` whose ``task`` is not semantic; callers check before loading data or weights."""
    if tta not in TTA_CHOICES:
        raise ValueError(f"unknown test-time augmentation {tta!r}; expected one of {', '.join(TTA_CHOICES)}")
    if tta != "none" and task != "semantic":
        article = "an" if str(task)[:1] in "aeiou" else "a"
        raise ValueError(f"--tta {tta} averages class probabilities, so it runs semantic models only; model "
                         f"{model!r} is {article} {task} model")


def apply_tta(segmenter, tta: str):
    """Make ``segmenter`` (a :class:`~.segmenter.Segmenter`) segment with test-time augmentation ``tta`` (one of
    :data:`TTA_CHOICES`) by wrapping its backend; ``none`` leaves it as it is. Returns the segmenter. Raises
    ValueError for an unknown choice, or (naming the model) for a model that is not semantic."""
    check_tta(tta, getattr(segmenter.backend, "task", None), segmenter.card.name)
    if tta == "flip":
        segmenter.backend = FlipTTABackend(segmenter.backend, model=segmenter.card.name)
    return segmenter


def tta_of(backend: Any) -> str:
    """The test-time augmentation ``backend`` runs with: ``flip`` or ``none``; what outputs record."""
    return getattr(backend, "tta", None) or "none"


def describe(backend: Any) -> str:
    if isinstance(backend, FlipTTABackend):
        return f"{describe(backend.inner)} + flip TTA"
    if isinstance(backend, TorchBackend):
        return f"torch ({backend.device})"
    if isinstance(backend, OnnxInt8Backend):
        return "onnxruntime int8 (cpu)"
    if isinstance(backend, OnnxBackend):
        return "onnxruntime (cpu)"
    return type(backend).__name__


# --------------------------------------------------------------------------------------------------------- INT8
def calibration_frames() -> List[np.ndarray]:
    """The frames every INT8 graph is calibrated on: the bundled sample (24 usgra-seg training frames), so that
    the graph made on a user's machine is the one whose Dice change the card records."""
    from ..datasets.readers import open_dataset
    from ..resources import sample_dir

    dataset = open_dataset(sample_dir())
    return [dataset[i].image for i in range(len(dataset))]


def quantize_int8(fp32_path: Union[str, Path], int8_path: Union[str, Path], card,
                  frames: Optional[List[np.ndarray]] = None, *, calibrate_method: Optional[str] = None,
                  extra_options: Optional[dict] = None, nodes_to_exclude: Sequence[str] = (),
                  recipe: Optional[str] = None) -> Path:
    """Statically quantize the float32 graph at ``fp32_path`` to INT8 and write it to ``int8_path`` (atomically).

    ONNX Runtime's quantization tools: the graph is pre-processed (shape inference, Conv+BatchNorm fused), then
    quantized in QDQ format, weights int8 per output channel, activations uint8 with ranges calibrated (min/max)
    on ``frames`` (default :func:`calibration_frames`) preprocessed as the card's input says. Input and output
    stay float32, so the backend is a drop-in for the float32 one. Raises ValueError for an instance model or
    no frames, FileNotFoundError when ``fp32_path`` is missing.

    The live path passes nothing but the card: the recipe is the card's (:func:`int8_recipe_of`), its settings
    from :data:`INT8_RECIPES`, its name in the graph's metadata. ``calibrate_method`` (a name of ONNX Runtime's
    ``CalibrationMethod``), ``extra_options`` and ``nodes_to_exclude`` (nodes left in float32) replace those
    settings to compare other recipes (benchmarks/int8/int8_recipes.py), with ``recipe`` naming the variant.
    """
    import tempfile

    import onnx
    from onnxruntime.quantization import (CalibrationDataReader, CalibrationMethod, QuantFormat, QuantType,
                                          quantize_static)
    from onnxruntime.quantization.shape_inference import quant_pre_process

    from ..imaging import placement as pp

    fp32_path, int8_path = Path(fp32_path), Path(int8_path)
    if recipe is None:
        recipe = int8_recipe_of(card)
    settings = INT8_RECIPES.get(recipe, INT8_RECIPES[INT8_RECIPE])
    if calibrate_method is None:
        calibrate_method = settings["calibrate_method"]
    if extra_options is None:
        extra_options = settings["extra_options"]
    if card.task != "semantic":
        raise ValueError(f"model {card.name!r} is an {card.task} model; INT8 graphs are made for semantic models only")
    if not fp32_path.is_file():
        raise FileNotFoundError(f"float32 ONNX graph to quantize not found: {fp32_path}")
    frames = calibration_frames() if frames is None else list(frames)
    if not frames:
        raise ValueError(f"{card.name}: INT8 calibration needs at least one frame, got none")
    batches = [pp.preprocess(frame, card.input)[0][np.newaxis] for frame in frames]

    class _Frames(CalibrationDataReader):
        def __init__(self):
            self._items = iter(batches)

        def get_next(self):
            item = next(self._items, None)
            return None if item is None else {"image": item}

    int8_path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="nerveseg-int8-", dir=int8_path.parent) as work:
        prepared = Path(work) / "prepared.onnx"
        quantized = Path(work) / "int8.onnx"
        quant_pre_process(str(fp32_path), str(prepared), skip_symbolic_shape=True)
        with _quiet_root_logger():
            quantize_static(str(prepared), str(quantized), _Frames(), quant_format=QuantFormat.QDQ,
                            per_channel=True, activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                            calibrate_method=getattr(CalibrationMethod, calibrate_method),
                            nodes_to_exclude=list(nodes_to_exclude), extra_options=dict(extra_options or {}))
        graph = onnx.load(str(quantized))
        for key, value in (("nerveseg.precision", "int8"), ("nerveseg.int8_recipe", recipe),
                           ("nerveseg.calibration_frames", str(len(batches)))):
            prop = graph.metadata_props.add()
            prop.key, prop.value = key, value
        onnx.save(graph, str(quantized))
        os.replace(quantized, int8_path)  # same folder: a half-written graph never sits at int8_path
    return int8_path


@contextlib.contextmanager
def _quiet_root_logger():
    # The quantizer warns on the root logger for every BatchNorm it leaves in float and asks for the
    # pre-processing that quantize_int8 has already done: nothing a user can act on.
    root = logging.getLogger()
    level = root.level
    root.setLevel(max(level, logging.ERROR))
    try:
        yield
    finally:
        root.setLevel(level)


def int8_path_for(fp32_path: Union[str, Path], recipe: str = INT8_RECIPE) -> Path:
    """Where the INT8 graph made with ``recipe`` from the float32 graph ``fp32_path`` is cached: next to it, same
    weights key."""
    fp32_path = Path(fp32_path)
    return fp32_path.with_name(f"{fp32_path.stem}.int8-{recipe}.onnx")


def int8_measured_change(card) -> Optional[float]:
    """The largest per-class Dice change of the card's INT8 graph as measured (``card.raw['int8']``), or None.

    Where the block holds ``cross_validation.max_dice_change`` (measured on held-out folds by
    benchmarks/accuracy/compare_models.py, the figure issue 13 asks for: per class the change INT8 makes to the
    cross-validated Dice, the largest |change| over classes; benchmarks/release/int8_cv_to_cards.py), that one decides;
    else the training-frame figure."""
    record = (getattr(card, "raw", None) or {}).get("int8")
    if not isinstance(record, dict):
        return None
    folds = record.get("cross_validation")
    value = folds.get("max_dice_change") if isinstance(folds, dict) else None
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        value = record.get("max_dice_change")
    return float(value) if isinstance(value, (int, float)) else None


def int8_faster(card) -> bool:
    """False when the card's INT8 block records the model alone as no faster in INT8 than in float32 (depthwise
    convolutions, as in EfficientNet, can run slower quantized on some CPUs); True when faster or not recorded."""
    timing = ((getattr(card, "raw", None) or {}).get("int8") or {}).get("ms_per_frame") or {}
    fp32, int8 = timing.get("onnx_float32"), timing.get("onnx_int8")
    if isinstance(fp32, (int, float)) and isinstance(int8, (int, float)):
        return int8 < fp32
    return True


def int8_allowed(card) -> bool:
    """True when the card records a measured INT8 Dice change below :data:`INT8_MAX_DICE_CHANGE`, the float32
    masks it was measured on were not all empty (a model that segments nothing gives no evidence either way), and
    INT8 was measured faster than float32 (:func:`int8_faster`): a slower, less exact graph helps nobody."""
    change = int8_measured_change(card)
    if change is None or change >= INT8_MAX_DICE_CHANGE or not int8_faster(card):
        return False
    agreement = card.raw["int8"].get("mask_agreement_dice", {})
    return any(isinstance(v, (int, float)) and not isinstance(v, bool) for v in agreement.values())


def resolve_backend(card, backend: str, device: str) -> str:
    """``auto`` -> what runs: the segmenter's rule (ONNX Runtime for a semantic model on a CPU, else torch), then
    INT8 instead of float32 ONNX where the card allows it (:func:`int8_allowed`). Others are checked and returned."""
    from .segmenter import choose_backend

    if backend not in BACKEND_CHOICES:
        raise ValueError(f"unknown backend {backend!r}; expected one of {', '.join(BACKEND_CHOICES)}")
    if backend != "auto":
        return backend
    chosen = choose_backend(card.task, resolve_device(device))
    return "onnx-int8" if chosen == "onnx" and int8_allowed(card) else chosen


def load_segmenter(name: str, backend: str = "auto", device: str = "cpu", threads: Optional[int] = None,
                   onnx_cache: Optional[Path] = None, weights_path=None, **kwargs):
    """A :class:`~.segmenter.Segmenter` for the registered model ``name`` on ``backend`` (``auto``, torch, onnx or
    onnx-int8; see :func:`resolve_backend`), with ``threads`` intra-op threads for ONNX Runtime and torch.

    ``onnx-int8`` exports the float32 graph as the onnx backend does (cached by the weights' sha256), then
    quantizes it once into :func:`int8_path_for` next to it. Raises ValueError for an unknown backend or an
    instance model on ONNX, and whatever Segmenter.from_name raises for an unknown model or bad weights.
    """
    from ..models import registry
    from .segmenter import Segmenter

    card = registry.card(name)
    chosen = resolve_backend(card, backend, device)
    if chosen != "onnx-int8":
        segmenter = Segmenter.from_name(name, backend=chosen, device=device, threads=threads, onnx_cache=onnx_cache,
                                        weights_path=weights_path, **kwargs)
        set_threads(threads)  # torch is loaded by now (the weights were read with it)
        return segmenter
    if card.task != "semantic":
        raise ValueError(f"model {name!r} is an {card.task} model; the onnx-int8 backend runs semantic models only")
    fp32 = Segmenter.from_name(name, backend="onnx", device="cpu", threads=1, onnx_cache=onnx_cache,
                               weights_path=weights_path, **kwargs)
    int8_path = int8_path_for(fp32.backend.path, int8_recipe_of(fp32.card))
    if not int8_path.is_file():
        log.info("%s: quantizing %s to INT8 (once; cached as %s)", name, fp32.backend.path.name, int8_path.name)
        quantize_int8(fp32.backend.path, int8_path, fp32.card)
    set_threads(threads)
    return Segmenter(fp32.card, OnnxInt8Backend(int8_path, threads=threads), **kwargs)
