"""INT8 graphs: a model's float32 ONNX graph statically quantized with ONNX Runtime, calibrated on the bundled
sample, and where such a graph is cached.

The recipes (how a graph is made, by name) are card data (:mod:`NerveSegLogic.models.int8`); when ``auto`` runs an
INT8 graph is :mod:`.loading`'s decision. onnx and onnxruntime are imported when a graph is made, never at module
import.
"""

from __future__ import annotations

import contextlib
import logging
import os
import tempfile
from pathlib import Path
from typing import List, Optional, Sequence, Union

import numpy as np

from ..imaging import placement as pp
from ..models.int8 import INT8_RECIPE, INT8_RECIPES, int8_recipe_of
from ..resources import sample_dir
from ..datasets.readers import open_dataset


def calibration_frames() -> List[np.ndarray]:
    """The frames every INT8 graph is calibrated on: the bundled sample (24 usgra-seg training frames), so that
    the graph made on a user's machine is the one whose Dice change the card records."""
    # Lazy on purpose: the data set readers are needed only while a graph is made (once per model and recipe), and
    # datasets/ sits above inference/ (its store reader reaches annotate/, which runs segmenters).
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

    The live path passes nothing but the card: the recipe is the card's (:func:`~NerveSegLogic.models.int8.
    int8_recipe_of`), its settings from :data:`~NerveSegLogic.models.int8.INT8_RECIPES`, its name in the graph's
    metadata. ``calibrate_method`` (a name of ONNX Runtime's ``CalibrationMethod``), ``extra_options`` and
    ``nodes_to_exclude`` (nodes left in float32) replace those settings to compare other recipes
    (benchmarks/int8/int8_recipes.py), with ``recipe`` naming the variant.
    """
    import onnx
    from onnxruntime.quantization import (CalibrationDataReader, CalibrationMethod, QuantFormat, QuantType,
                                          quantize_static)
    from onnxruntime.quantization.shape_inference import quant_pre_process

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
