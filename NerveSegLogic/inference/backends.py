"""Inference backends: the same model run by torch (CPU, or CUDA where present) or by ONNX Runtime, in float32
or (``onnx-int8``) as a statically quantized INT8 graph (made by :mod:`.quantize`). Which backend runs a model, and
how a card becomes a running model, is :mod:`.loading`'s business.

A backend takes a float32 batch ``(B, C, H, W)`` in the model's input size and returns, for a semantic model,
class probabilities ``(B, K, H, W)`` float32 (softmax over K, background included); for an instance model a list
(one per image) of dicts with ``boxes``, ``labels``, ``scores``, ``masks`` as numpy arrays in input pixels.
torch and onnxruntime are imported when a backend is made, never at module import.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Any, List, Optional, Union

import numpy as np


BACKENDS = ("torch", "onnx", "onnx-int8")
#: What the commands accept for --backend: ``auto`` then the backends.
BACKEND_CHOICES = ("auto",) + BACKENDS


def default_threads() -> int:
    """--threads default of serve and demo: one core less than the machine has (at least one), leaving a core to
    receiving, sending and the main thread: on 2 cores one inference thread gave the lower latency in every round
    (benchmarks/speed/threads.md)."""
    return max(1, (os.cpu_count() or 1) - 1)


DEFAULT_THREADS = default_threads()


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


def choose_backend(task: str, device: str) -> str:
    """The float32 runtime for a ``task`` on a resolved ``device``: ONNX Runtime for a semantic model on the CPU
    when onnxruntime is installed, else torch (:func:`.loading.resolve_backend` may then pick INT8 instead).

    On 2 CPU cores the live path keeps up with 30 fps only on ONNX Runtime (benchmarks/speed/live_path.md and
    benchmarks/speed/models.md time both). Instance models
    are not exported to ONNX, and on a GPU torch runs the model where it is.
    """
    if task != "semantic" or device != "cpu":
        return "torch"
    try:
        import onnxruntime  # noqa: F401
    except ImportError:
        return "torch"
    return "onnx"


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


#: Names that moved above this module (importing them back here would make a cycle): name -> new module.
_MOVED_UP = {"load_segmenter": "NerveSegLogic.inference.segmenter", "resolve_backend": "NerveSegLogic.inference.loading"}


def __getattr__(name: str):
    if name in _MOVED_UP:
        raise AttributeError(f"{__name__}.{name} moved to {_MOVED_UP[name]}; import it from there")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
