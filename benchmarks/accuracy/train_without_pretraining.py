"""Train a registered model with its card's recipe minus the pretrained encoder (random initialisation): the
control for what ImageNet weights are worth under the same data, split, budget and seed.

    .venv/bin/python benchmarks/accuracy/train_without_pretraining.py --model effnet-unet --data ../shared/data/usgra-seg \\
        --out runs/effnet-unet-random-fold2 --fold 2 --epochs 22 --threads 1
    .venv/bin/python benchmarks/accuracy/eval_heldout.py --run runs/effnet-unet-random-fold2 --data ../shared/data/usgra-seg

Resumable like ``nerveseg train`` (same --out).
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True)
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument("--fold", type=int, default=None)
    parser.add_argument("--epochs", type=int, default=None)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--limit-minutes", type=float, default=None)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                        datefmt="%H:%M:%S")

    from NerveSegLogic.models import registry
    from NerveSegLogic.train.loop import TrainOptions, train

    card = registry.card(args.model)
    data = card.to_json()
    data["training"]["recipe"].pop("pretrained", None)
    random_card = type(card).from_dict(data, card.path)
    result = train(TrainOptions(model=args.model, data=args.data, out=args.out, epochs=args.epochs, folds=args.folds,
                                fold=args.fold, threads=args.threads, limit_minutes=args.limit_minutes,
                                progress=False), card=random_card)
    print(f"{result.stop_reason}: {result.epochs_done} epochs, {result.global_step} steps -> {result.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
