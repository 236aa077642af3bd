"""Inference backends: the same model run by torch (CPU, or CUDA where present) or by ONNX Runtime.

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
from typing import Any, List, Optional, Union

import numpy as np

log = logging.getLogger(__name__)

BACKENDS = ("torch", "onnx")


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


def describe(backend: Any) -> str:
    if isinstance(backend, TorchBackend):
        return f"torch ({backend.device})"
    if isinstance(backend, OnnxBackend):
        return "onnxruntime (cpu)"
    return type(backend).__name__
