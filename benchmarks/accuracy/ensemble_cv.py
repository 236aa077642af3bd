#!/usr/bin/env python3
"""What would an ensemble be worth? The mean of several models' class probabilities, cross-validated (issue 12).

    python benchmarks/accuracy/ensemble_cv.py --data ../shared/data/usgra-seg --runs runs/cv5 --models effnet-unet,effnet2-unet
    python benchmarks/accuracy/ensemble_cv.py ... --models effnet2-unet,effnet2-unet@runs/variants/aug44  (two recipes)

For every fold of a finished ``benchmarks/accuracy/compare_models.py`` run, each named model's float32 ONNX graph of that fold
(``<runs>/cv/<model>/fold<k>/onnx/<model>.onnx``, trained on the other blocks only) segments the fold's held-out
block through the live path's Segmenter, alone and together (mean of the probabilities, then the same smooth
contours and small-region removal); with ``--tta flip`` the ensemble also averages each frame's mirror image. The
report gives the mean +- std over folds of nerve Dice, vessel Dice and nerve detection F1 for each. The models must
share the input block of their cards (size, resize, normalisation), so one preprocessing feeds them all.

An ensemble costs the sum of its models' time per frame, so it is a candidate for offline pre-labelling and a teacher
to distil a live model from, not a live model on 2 CPU cores. A benchmark, not a test.
"""

from __future__ import annotations

import argparse
import json
import sys
from datetime import datetime, timezone
from pathlib import Path
from typing import Dict, List, Tuple

import numpy as np

REPO = Path(__file__).resolve().parents[2]

KEYS = ("nerve_dice", "vessel_dice", "nerve_f1")


class MeanBackend:
    """The mean of several semantic backends' class probabilities ``(B, K, H, W)`` for one batch."""

    task = "semantic"
    name = "mean"

    def __init__(self, backends: List):
        self.backends = backends

    def run(self, batch: np.ndarray) -> np.ndarray:
        total = None
        for backend in self.backends:
            out = np.asarray(backend.run(batch), dtype=np.float32)
            total = out.copy() if total is None else total + out
        return total / len(self.backends)


def parse_member(entry: str, runs: Path) -> Tuple[str, str, Path]:
    """``model`` (from ``--runs``) or ``model@FOLDER`` (from another compare_models ``--out`` folder, e.g. the same
    architecture trained another way) -> (label in the report, registered model name, runs folder)."""
    model, _, other = entry.partition("@")
    if not other:
        return model, model, runs
    return f"{model}@{Path(other).name}", model, Path(other)


def fold_scores(runs: Path, data: Path, models: List[str], fold: int, held_out: List[str], tta: bool,
                threads: int) -> Dict[str, Dict[str, float]]:
    from NerveSegLogic.inference import backends
    from NerveSegLogic.inference.segmenter import Segmenter
    from NerveSegLogic.train.evaluate import evaluate
    from NerveSegLogic.train.evaluate_weights import card_for_weights

    from NerveSegLogic.train.crossval import fold_frames, summary_scores

    cards, singles, labels = [], [], []
    for entry in models:
        label, model, member_runs = parse_member(entry, runs)
        labels.append(label)
        run_dir = member_runs / "cv" / model / f"fold{fold}"
        graph = run_dir / "onnx" / f"{model}.onnx"
        if not graph.is_file():
            raise SystemExit(f"{graph}: missing; score the fold with benchmarks/accuracy/compare_models.py first")
        card, _, _ = card_for_weights(model, run_dir / f"{model}.safetensors")
        cards.append(card)
        singles.append(backends.OnnxBackend(graph, threads=threads))
    spec = cards[0].input
    for card in cards[1:]:
        if card.input != spec:
            raise SystemExit(f"{card.name}'s input block {card.input} differs from {cards[0].name}'s {spec}: "
                             "one preprocessing cannot feed both")
    frames = fold_frames(data, held_out)
    scored = {}
    variants = [(label, Segmenter(card, backend)) for label, card, backend in zip(labels, cards, singles)]
    variants.append(("+".join(labels), Segmenter(cards[0], MeanBackend(singles))))
    if tta:
        variants.append(("+".join(labels) + " + flip", Segmenter(cards[0], backends.FlipTTABackend(
            MeanBackend(singles), model="+".join(labels)))))
    for name, segmenter in variants:
        scored[name] = summary_scores(evaluate(segmenter, frames, progress=False, keep_labelmaps=False).summary)
    return scored


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--runs", type=Path, required=True, help="the --out folder of a compare_models run")
    parser.add_argument("--models", required=True,
                        help="comma-separated, at least two; MODEL@FOLDER takes MODEL's folds from another "
                             "compare_models --out folder")
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument("--tta", choices=("none", "flip"), default="none")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--report", type=Path, default=REPO / "benchmarks" / "accuracy" / "ensemble_cv.md")
    args = parser.parse_args(argv)

    from NerveSegLogic.datasets.readers import open_dataset
    from NerveSegLogic.train.data import split_indices

    from NerveSegLogic.train.crossval import stats

    models = [m.strip() for m in args.models.split(",") if m.strip()]
    if len(models) < 2:
        raise SystemExit("--models: name at least two models to average")
    names = sorted(open_dataset(args.data).names())
    per_fold: List[Dict[str, Dict[str, float]]] = []
    for fold in range(args.folds):
        _, validation = split_indices(names, args.folds, fold)
        per_fold.append(fold_scores(args.runs, args.data, models, fold, [names[i] for i in validation],
                                    args.tta == "flip", args.threads))
        print(f"fold {fold}: " + "; ".join(f"{k} nerve {v['nerve_dice']:.3f}" for k, v in per_fold[-1].items()),
              flush=True)

    rows = ["| models | " + " | ".join(KEYS) + " |", "|---|" + "---|" * len(KEYS)]
    summary = {}
    for name in per_fold[0]:
        summary[name] = {}
        cells = []
        for key in KEYS:
            values = [fold[name][key] for fold in per_fold]
            figures = stats(values)  # compare_models' figures: mean and population std over the folds
            mean, std = figures["mean"], figures["std"]
            summary[name][key] = {"mean": mean, "std": std, "folds": values}
            cells.append(f"{mean:.3f} ± {std:.3f}")
        rows.append(f"| {name} | " + " | ".join(cells) + " |")
    command = "python benchmarks/accuracy/ensemble_cv.py " + " ".join(
        {str(args.data): "DATA", str(args.runs): "RUNS"}.get(a, a) for a in (argv or sys.argv[1:]))
    when = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    text = [f"# Ensembles, cross-validated ({args.folds} contiguous blocks)", "",
            "The mean of the models' class probabilities costs the sum of their time per frame: a candidate for "
            "offline pre-labelling or a teacher to distil a live model from, not a live model on 2 CPU cores.", "",
            f"Command: `{command}`; {when}. Each fold's float32 ONNX graphs (weights at the end of training, trained "
            "on the other blocks), alone and averaged, segment its held-out block through the live path's "
            "Segmenter; mean ± std over folds.", "", *rows, ""]
    args.report.write_text("\n".join(text), encoding="utf-8")
    args.report.with_suffix(".json").write_text(json.dumps({"models": models, "tta": args.tta, "summary": summary,
                                                            "date": when}, indent=1), encoding="utf-8")
    print("\n".join(rows))
    print(f"wrote {args.report}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
