"""The figure `auto` decides INT8 by, as benchmarks/compare_models.py computes it from the cross-validation folds:
the change INT8 makes to the cross-validated Dice (per class, mean over folds of INT8 - float32), not the mean of
each fold's largest |change|, which counts a fold where INT8 scored higher as a loss too."""

import importlib.util
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def compare_models():
    spec = importlib.util.spec_from_file_location("compare_models_under_test",
                                                  REPO / "benchmarks" / "compare_models.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _entry(nerve, vessel):
    folds = [{"int8_nerve_dice_delta": n, "int8_vessel_dice_delta": v, "int8_max_dice_change": max(abs(n), abs(v))}
             for n, v in zip(nerve, vessel)]
    return {"folds": folds, "live_path_ms": {"onnx": {"ms": 24.0}, "onnx-int8": {"ms": 14.0}},
            "int8_max_dice_change": {"mean": sum(f["int8_max_dice_change"] for f in folds) / len(folds), "std": 0}}


def test_change_is_that_of_the_cross_validated_dice_largest_class(compare_models):
    # INT8 better on two folds, worse on three: each fold moves ~0.01-0.02, the cross-validated Dice by 0.004
    entry = _entry(nerve=[+0.012, -0.015, +0.010, -0.020, -0.007], vessel=[-0.001, +0.002, -0.003, 0.0, -0.003])
    assert compare_models._int8_change(entry) == pytest.approx(0.004)
    assert entry["int8_max_dice_change"]["mean"] == pytest.approx(0.0128)  # the stricter figure: over 0.01
    assert compare_models._live_ms(entry) == 14.0  # auto runs INT8


def test_a_consistent_loss_keeps_float32(compare_models):
    entry = _entry(nerve=[-0.02, -0.01, -0.015, -0.012, -0.011], vessel=[0.0] * 5)
    assert compare_models._int8_change(entry) == pytest.approx(0.0136)
    assert compare_models._live_ms(entry) == 24.0
    # a gain is a change too: the rule is about keeping the float32 model's behaviour, not only its score
    gain = _entry(nerve=[0.02] * 5, vessel=[0.0] * 5)
    assert compare_models._int8_change(gain) == pytest.approx(0.02)


def test_a_fold_without_the_figure_gives_no_decision(compare_models):
    entry = _entry(nerve=[-0.001] * 5, vessel=[0.0] * 5)
    entry["folds"][2]["int8_nerve_dice_delta"] = None
    assert compare_models._int8_change(entry) is None
    assert compare_models._live_ms(entry) == 24.0
