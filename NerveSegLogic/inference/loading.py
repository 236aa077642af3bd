"""How a model card becomes a running model: which backend runs it (``auto``, and when ``auto`` runs the INT8
graph), its weights loaded once (sha256-checked), and its cached float32 ONNX and INT8 graphs.

:class:`~.segmenter.Segmenter` wraps what :func:`load_backend` returns (``Segmenter.from_card``; the live path's
:func:`~.segmenter.load_segmenter`), and :class:`~.promptable.PromptableSegmenter` shares the ONNX cache folder.
Callers pass the card, looked up once. torch and onnxruntime load when a model is loaded, never at module import.
"""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path
from typing import Optional

from ..checksums import sha256_file
from ..models import registry
from ..models.int8 import int8_allowed, int8_recipe_of
from .backends import (BACKEND_CHOICES, OnnxBackend, OnnxInt8Backend, TorchBackend, choose_backend,
                       resolve_device)
from .quantize import int8_path_for, quantize_int8

log = logging.getLogger(__name__)


def onnx_cache_dir(onnx_cache: Optional[Path] = None) -> Path:
    """The folder exported graphs are cached in: ``onnx_cache``, else ``nerveseg-onnx`` in the system temp dir."""
    return Path(onnx_cache) if onnx_cache else Path(tempfile.gettempdir()) / "nerveseg-onnx"


def resolve_backend(card, backend: str, device: str) -> str:
    """``auto`` -> what runs: :func:`~.backends.choose_backend` (ONNX Runtime for a semantic model on a CPU, else
    torch), then INT8 instead of float32 ONNX where the card allows it (:func:`~NerveSegLogic.models.int8.
    int8_allowed`). Others are checked and returned; ValueError for an unknown one."""
    if backend not in BACKEND_CHOICES:
        raise ValueError(f"unknown backend {backend!r}; expected one of {', '.join(BACKEND_CHOICES)}")
    if backend != "auto":
        return backend
    chosen = choose_backend(card.task, resolve_device(device))
    return "onnx-int8" if chosen == "onnx" and int8_allowed(card) else chosen


def onnx_graph(card, module, weights_path=None, onnx_cache: Optional[Path] = None) -> Path:
    """The float32 ONNX graph of ``module`` (the card's model with its weights loaded), exported once into
    :func:`onnx_cache_dir` under a name keyed by the weights file's sha256 and
    :data:`~NerveSegLogic.models.registry.ONNX_GRAPH_VERSION` (``random`` when there is no weights file)."""
    weights = Path(weights_path) if weights_path else card.weights_path
    key = sha256_file(weights)[:16] if weights and Path(weights).is_file() else "random"
    cache = onnx_cache_dir(onnx_cache)
    cache.mkdir(parents=True, exist_ok=True)
    path = cache / f"{card.name}-{key}-g{registry.ONNX_GRAPH_VERSION}.onnx"
    if not path.is_file():
        registry.export_onnx(module, path, card=card)
    return path


def int8_graph(card, fp32_path: Path) -> Path:
    """The card's INT8 graph made from the float32 graph ``fp32_path`` with the card's recipe, quantized once and
    cached next to it (:func:`~.quantize.int8_path_for`)."""
    path = int8_path_for(fp32_path, int8_recipe_of(card))
    if not path.is_file():
        log.info("%s: quantizing %s to INT8 (once; cached as %s)", card.name, fp32_path.name, path.name)
        quantize_int8(fp32_path, path, card)
    return path


def load_backend(card, backend: str = "auto", device: str = "cpu", threads: Optional[int] = None,
                 onnx_cache: Optional[Path] = None, weights_path=None):
    """The backend that runs ``card``'s model with its shipped (or ``weights_path``'s) weights: ``backend`` is
    ``auto`` (:func:`resolve_backend`), torch (on ``device``), onnx or onnx-int8 (CPU, exported and quantized once,
    see :func:`onnx_graph` and :func:`int8_graph`), with ``threads`` intra-op threads.

    Raises ValueError for an unknown backend or a non-semantic model on ONNX, and the registry's WeightsError for
    missing or corrupt weights (the weights are read and checked on every load, cached graph or not)."""
    chosen = resolve_backend(card, backend, device)
    if chosen != "torch" and card.task != "semantic":
        runtime = "onnx-int8" if chosen == "onnx-int8" else "ONNX"
        raise ValueError(f"model {card.name!r} is an {card.task} model; the {runtime} backend runs semantic models "
                         f"only")
    device = resolve_device(device) if chosen == "torch" else "cpu"
    module = registry.load_from_card(card, device=device, weights_path=weights_path)
    if chosen == "torch":
        return TorchBackend(module, task=card.task, device=device, threads=threads)
    fp32_path = onnx_graph(card, module, weights_path, onnx_cache)
    if chosen == "onnx":
        return OnnxBackend(fp32_path, threads=threads)
    return OnnxInt8Backend(int8_graph(card, fp32_path), threads=threads)
