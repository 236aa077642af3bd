"""INT8 quantization recipes compared on the cross-validation folds (benchmarks/int8/int8_recipes.py) and timed
side by side (benchmarks/int8/bench_int8_recipe_speed.py): each is the live path's quantizer
(:func:`NerveSegLogic.inference.backends.quantize_int8`: ONNX Runtime's static quantization, QDQ, int8 weights
per output channel, uint8 activations) with other calibration settings or nodes left in float32.

The live path itself takes its recipe from the card (``int8.recipe``, :data:`backends.INT8_RECIPES`); nothing in
it imports this module.
"""

from __future__ import annotations

from pathlib import Path
from typing import Dict, List

import numpy as np

from .quantize import quantize_int8

#: name -> settings: ``method`` the calibration method, ``extra`` ONNX Runtime's extra options, ``frames: all``
#: calibrates on every training frame instead of 24, ``keep`` names the nodes left in float32
#: (:func:`kept_convolutions`).
RECIPES: Dict[str, Dict] = {
    "minmax": {"method": "MinMax"},
    "minmax-all": {"method": "MinMax", "frames": "all"},
    "movavg": {"method": "MinMax", "extra": {"CalibMovingAverage": True}},
    "percentile": {"method": "Percentile", "extra": {"CalibPercentile": 99.999}},
    "entropy": {"method": "Entropy"},
    "keep-head": {"method": "MinMax", "keep": "head"},
    "keep-ends": {"method": "MinMax", "keep": "ends"},
    # the live recipe with the final softmax left in float32: QLinearSoftmax over the whole output is slow
    "movavg-float-softmax": {"method": "MinMax", "extra": {"CalibMovingAverage": True}, "keep": "softmax"},
}


def kept_convolutions(graph_path: Path, keep: str) -> List[str]:
    """Names of the nodes to leave in float32: ``head`` the last Conv, ``ends`` the first (the stem) and the last
    Conv, ``softmax`` the Softmax nodes. (The pre-processing before quantization keeps these names.)"""
    import onnx

    nodes = onnx.load(str(graph_path)).graph.node
    if keep == "softmax":
        return [node.name for node in nodes if node.op_type == "Softmax"]
    convs = [node.name for node in nodes if node.op_type == "Conv"]
    return {"head": [convs[-1]], "ends": [convs[0], convs[-1]]}[keep]


def quantize(fp32_path: Path, out_path: Path, card, frames: List[np.ndarray], name: str) -> Path:
    """The live path's quantizer (:func:`.quantize.quantize_int8`) with recipe ``name``'s settings."""
    recipe = RECIPES[name]
    return quantize_int8(
        fp32_path, out_path, card, frames=frames, calibrate_method=recipe["method"],
        extra_options=recipe.get("extra") or {}, recipe=f"recipes-{name}",
        nodes_to_exclude=kept_convolutions(fp32_path, recipe["keep"]) if recipe.get("keep") else ())
