"""What a model card says about its INT8 graph (the ``int8`` block), as data: the recipes a card may name
(``int8.recipe``: how the graph is made) and what was measured of it (does ``auto`` run it: :func:`int8_allowed`).

Pure data and readers of the card's block, so that :mod:`.card` validates the block without importing the
inference code; :mod:`NerveSegLogic.inference.quantize` makes the graphs, and
:func:`NerveSegLogic.inference.loading.resolve_backend` applies :func:`int8_allowed` when ``auto`` picks a backend.
Imports nothing.
"""

from __future__ import annotations

from typing import Any, Dict, Optional

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
#: ``auto`` runs a model's INT8 graph only when its card records a measured Dice change (int8 against float32, every
#: class) below this.
INT8_MAX_DICE_CHANGE = 0.01


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
