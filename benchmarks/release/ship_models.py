"""Copy final models from a comparison run into Resources/Models: weights and card, checked on the way.

    .venv/bin/python benchmarks/release/ship_models.py --run runs/comparison --models unet,sa-unet --default unet

For each model, ``<run>/final/<model>/`` must hold the card (``card.json``, written by compare_models.py with the
cross-validated figures and the measured speed) and the weights file it names, whose sha256 must match the card.
The card replaces ``Resources/Models/<model>.json`` and the weights go beside it. ``--default`` marks the live path's
default model (exactly one card keeps ``"default": true``). Refuses to ship when all weights in Resources/Models
would exceed 150 MB together (issue 4's budget for the repository), and leaves every file untouched then.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

BUDGET_MB = 150.0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", type=Path, default=ROOT / "runs" / "comparison")
    parser.add_argument("--models", required=True, help="comma-separated model names")
    parser.add_argument("--default", help="the model the live path uses by default")
    parser.add_argument("--dest", type=Path, default=ROOT / "Resources" / "Models")
    args = parser.parse_args()

    from NerveSegLogic.models.card import ModelCard, write_card  # validated, written atomically
    from NerveSegLogic.models.weights import sha256_file

    plans = []
    for model in [m.strip() for m in args.models.split(",") if m.strip()]:
        final = args.run / "final" / model
        card_path = final / "card.json"
        if not (final / "done.json").is_file() or not card_path.is_file():
            raise SystemExit(f"{final}: no finished final model (done.json and card.json expected)")
        card = json.loads(card_path.read_text(encoding="utf-8"))
        weights = final / card["weights"]["file"]
        if sha256_file(weights) != card["weights"]["sha256"]:
            raise SystemExit(f"{weights}: sha256 differs from {card_path}'s weights.sha256")
        if not card.get("metrics", {}).get("cross_validation"):
            raise SystemExit(f"{card_path}: no cross-validated figures (metrics.cross_validation); run the CV first")
        card["default"] = False
        ModelCard.from_dict(card, args.dest / f"{model}.json")  # all valid before any file in Resources changes
        plans.append((model, card, weights))

    shipped = {p.name: p.stat().st_size for p in args.dest.glob("*.safetensors")}
    shipped.update({weights.name: weights.stat().st_size for _, _, weights in plans})
    total_mb = sum(shipped.values()) / 1e6
    if total_mb > BUDGET_MB:
        raise SystemExit(f"shipping would put {total_mb:.1f} MB of weights in {args.dest} (budget {BUDGET_MB:g} MB): "
                         + ", ".join(f"{name} {size / 1e6:.1f} MB" for name, size in sorted(shipped.items())))

    for model, card, weights in plans:
        shutil.copyfile(weights, args.dest / weights.name)
        write_card(card, args.dest / f"{model}.json")
        print(f"{model}: {weights.name} ({weights.stat().st_size / 1e6:.1f} MB, {card['weights']['dtype']}) "
              f"and card -> {args.dest}")
    if args.default:
        for path in sorted(args.dest.glob("*.json")):
            card = json.loads(path.read_text(encoding="utf-8"))
            wanted = card["name"] == args.default
            if bool(card.get("default")) != wanted:
                card["default"] = wanted
                write_card(card, path)
        print(f"default model: {args.default}")
    print(f"weights in {args.dest}: {total_mb:.1f} MB of {BUDGET_MB:g} MB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
