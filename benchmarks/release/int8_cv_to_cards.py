#!/usr/bin/env python3
"""Write the cross-validated INT8 figures of a comparison run into the model cards (issue 13).

    python benchmarks/release/int8_cv_to_cards.py --comparison benchmarks/accuracy/comparison.json [--models unet,effnet-unet]

For every semantic model the comparison scored on all its folds: ``int8.cross_validation`` gets, per class, the
change INT8 makes to the cross-validated Dice (mean over folds of Dice INT8 - Dice float32 on the held-out block;
the fold's float32 graph quantized as the live path does, calibrated on the fold's training frames), the largest
|change| over classes as ``max_dice_change``, the stricter mean of each fold's largest |change| beside it, and the
live path's ms/frame of fold 0 on ONNX Runtime float32 and INT8. That cross-validated change is what
``--backend auto`` decides by (NerveSegLogic.inference.backends.int8_measured_change); ``auto_uses_int8`` is set to what auto then picks, so the
card says it. A card without an ``int8`` block gets one from these figures alone.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[2]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--comparison", type=Path, default=REPO / "benchmarks" / "accuracy" / "comparison.json")
    parser.add_argument("--models", default=None, help="comma-separated (default: every model with INT8 figures)")
    parser.add_argument("--cards", type=Path, default=REPO / "Resources" / "Models")
    args = parser.parse_args(argv)

    from NerveSegLogic.models import int8
    from NerveSegLogic.models.card import ModelCard, write_card

    report = json.loads(args.comparison.read_text(encoding="utf-8"))
    wanted = set(args.models.split(",")) if args.models else None
    for model, entry in report["models"].items():
        if wanted is not None and model not in wanted:
            continue
        folds = [f for f in entry["folds"] if f.get("int8_max_dice_change") is not None]
        if entry["task"] != "semantic" or not folds or len(folds) != report["folds"]:
            continue
        path = args.cards / f"{model}.json"
        card = json.loads(path.read_text(encoding="utf-8"))
        live = entry.get("live_path_ms") or {}
        deltas = {"nerve": [f["int8_nerve_dice_delta"] for f in folds],
                  "blood_vessel": [f.get("int8_vessel_dice_delta") for f in folds]}
        if any(v is None for v in deltas["nerve"]):
            print(f"{model}: the comparison has no signed INT8 changes per fold; regenerate it with "
                  "benchmarks/accuracy/compare_models.py first", file=sys.stderr)
            return 1
        signed = {name: round(float(np.mean(values)), 4) for name, values in deltas.items()
                  if all(v is not None for v in values)}
        figures = {
            # what `auto` decides by: the change INT8 makes to the cross-validated Dice, largest over classes
            "max_dice_change": round(max(abs(v) for v in signed.values()), 4),
            "dice_change": signed,
            "per_fold_max_abs_change": {"mean": round(entry["int8_max_dice_change"]["mean"], 4),
                                        "std": round(entry["int8_max_dice_change"]["std"], 4)},
            "int8_worse_in": f"{sum(v < 0 for values in deltas.values() for v in values if v is not None)} of "
                             f"{sum(v is not None for values in deltas.values() for v in values)} class-fold pairs",
            "folds": len(folds),
            "segment_ms_per_frame": {"onnx_float32": live.get("onnx", {}).get("ms"),
                                     "onnx_int8": live.get("onnx-int8", {}).get("ms"),
                                     "threads": live.get("threads"), "load_average_1min": live.get("load_average_1min")},
            "how": ("each fold's float32 graph quantized as the live path does it, calibrated on 24 frames of the "
                    "fold's training blocks, scored on its held-out block against the float32 graph; dice_change: "
                    "per class, mean over folds of Dice INT8 - Dice float32 (the change of the cross-validated "
                    "Dice); max_dice_change: the largest |dice_change|, which decides `auto` (< 0.01); "
                    "per_fold_max_abs_change: mean over folds of each fold's largest |change|, a stricter figure "
                    "that also counts folds where INT8 scored higher (benchmarks/accuracy/compare_models.py)"),
            "input_size": entry["folds"][0]["input_size"],
            "source": f"{args.comparison.name}, updated {report['updated']}",
        }
        block = card.get("int8")
        if not isinstance(block, dict):
            speed = {k: v for k, v in figures["segment_ms_per_frame"].items()
                     if k.startswith("onnx") and isinstance(v, (int, float))}
            block = {"max_dice_change": figures["max_dice_change"], "dice_change": figures["dice_change"],
                     "ms_per_frame": speed, "recipe": int8.int8_recipe_of(ModelCard.from_dict(card, path)),
                     "evaluated_on": "cross-validation folds only (see cross_validation)"}
        block["cross_validation"] = figures
        card["int8"] = block
        block["auto_uses_int8"] = int8.int8_allowed(ModelCard.from_dict(card, path))
        write_card(card, path)
        print(f"{model}: INT8 Dice change on {len(folds)} folds {figures['max_dice_change']:.4f} "
              f"-> auto uses {'INT8' if block['auto_uses_int8'] else 'float32'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
