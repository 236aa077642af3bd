#!/usr/bin/env python3
"""Would favouring the nerve in the decision find the nerves the live default misses on unseen blocks? (issue 12)

On the hard blocks the model often misses a small nerve entirely (benchmarks/accuracy/comparison.md, worst overlays). The
live path labels each pixel with the class of highest probability. Adding ``b`` to the nerve's probability before
that decision (a class prior) trades invented nerves for found ones without any training. This measures it with
the cross-validation folds of a finished ``benchmarks/accuracy/compare_models.py`` run: each fold's float32 graph segments
its held-out block (and one nerve-free window per frame, as comparison.md's false-nerve figure) through the live
path's Segmenter, for every ``b`` in --biases. Figures per ``b``: mean over folds of nerve Dice, vessel Dice,
nerve detection F1 and the false-nerve window rate.

Choosing ``b`` on these same folds would flatter it, so the report also gives a nested figure: for each fold, the
``b`` with the best mean nerve Dice over the OTHER folds, scored on this one.

    python benchmarks/accuracy/nerve_bias_cv.py --data ../shared/data/usgra-seg --runs runs/cv5 --model effnet2-unet

A benchmark, not a test.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
from datetime import datetime, timezone
from pathlib import Path
from typing import Dict, List

import numpy as np

REPO = Path(__file__).resolve().parents[2]

KEYS = ("nerve_dice", "vessel_dice", "nerve_f1", "false_nerve_rate")


class CachedBackend:
    """Runs ``inner`` once per distinct input batch (every bias sees the same frames)."""

    task = "semantic"
    name = "cached"

    def __init__(self, inner):
        self.inner, self.cache = inner, {}

    def run(self, batch: np.ndarray) -> np.ndarray:
        key = hashlib.sha1(np.ascontiguousarray(batch, dtype=np.float32).tobytes()).hexdigest()
        if key not in self.cache:
            self.cache[key] = np.asarray(self.inner.run(batch), dtype=np.float32)
        return self.cache[key]


class NerveBiasBackend:
    """``inner``'s probabilities with ``bias`` added to class ``label`` (the nerve) before the live path's argmax."""

    task = "semantic"
    name = "nerve-bias"

    def __init__(self, inner, bias: float, label: int = 1):
        self.inner, self.bias, self.label = inner, float(bias), int(label)

    def run(self, batch: np.ndarray) -> np.ndarray:
        out = np.array(self.inner.run(batch), dtype=np.float32, copy=True)
        out[:, self.label] += self.bias
        return out


def fold_scores(runs: Path, data: Path, model: str, fold: int, held_out: List[str], biases: List[float],
                threads: int) -> Dict[float, Dict[str, float]]:
    from NerveSegLogic.inference import backends
    from NerveSegLogic.inference.segmenter import Segmenter
    from NerveSegLogic.train.evaluate import evaluate
    from NerveSegLogic.train.negatives import negative_frames
    from NerveSegLogic.train.evaluate_weights import card_for_weights

    from NerveSegLogic.train.crossval import fold_frames, summary_scores

    run_dir = runs / "cv" / model / f"fold{fold}"
    graph = run_dir / "onnx" / f"{model}.onnx"
    if not graph.is_file():
        raise SystemExit(f"{graph}: missing; score the fold with benchmarks/accuracy/compare_models.py first")
    card, _, _ = card_for_weights(model, run_dir / f"{model}.safetensors")
    nerve = next(c.label for c in card.classes if c.key == "nerve")
    cached = CachedBackend(backends.OnnxBackend(graph, threads=threads))
    real = fold_frames(data, held_out)
    windows = fold_frames(data, held_out)
    windows.frames[:] = negative_frames(windows.frames, seed=1, rate=1.0, per_frame=1)  # as comparison.md's
    scored = {}
    for bias in biases:
        segmenter = Segmenter(card, NerveBiasBackend(cached, bias, nerve))
        figures = summary_scores(evaluate(segmenter, real, progress=False, keep_labelmaps=False).summary)
        on_windows = evaluate(segmenter, windows, progress=False, keep_labelmaps=False).summary
        figures["false_nerve_rate"] = on_windows["presence"]["nerve"]["false_frame_rate"]
        scored[bias] = figures
    return scored


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--runs", type=Path, required=True, help="the --out folder of a compare_models run")
    parser.add_argument("--model", default="effnet2-unet")
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument("--biases", default="0,0.05,0.1,0.15,0.2,0.3")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--report", type=Path, default=REPO / "benchmarks" / "accuracy" / "nerve_bias_cv.md")
    args = parser.parse_args(argv)

    from NerveSegLogic.datasets.readers import open_dataset
    from NerveSegLogic.train.data import split_indices

    biases = [float(b) for b in args.biases.split(",")]
    names = sorted(open_dataset(args.data).names())
    per_fold: List[Dict[float, Dict[str, float]]] = []
    for fold in range(args.folds):
        _, validation = split_indices(names, args.folds, fold)
        per_fold.append(fold_scores(args.runs, args.data, args.model, fold, [names[i] for i in validation], biases,
                                    args.threads))
        print(f"fold {fold}: " + "; ".join(f"b={b:g} nerve {v['nerve_dice']:.3f} F1 {v['nerve_f1']:.3f} "
                                             f"false {v['false_nerve_rate']:.3f}" for b, v in per_fold[-1].items()),
              flush=True)

    def mean(key, bias, folds):
        return float(np.mean([per_fold[k][bias][key] for k in folds]))

    rows = ["| nerve bias b | " + " | ".join(KEYS) + " |", "|---|" + "---|" * len(KEYS)]
    summary = {}
    for bias in biases:
        summary[str(bias)] = {key: {"mean": mean(key, bias, range(args.folds)),
                                    "folds": [per_fold[k][bias][key] for k in range(args.folds)]} for key in KEYS}
        rows.append(f"| {bias:g} | " + " | ".join(f"{summary[str(bias)][key]['mean']:.3f}" for key in KEYS) + " |")
    nested = []
    for fold in range(args.folds):
        others = [k for k in range(args.folds) if k != fold]
        chosen = max(biases, key=lambda b: mean("nerve_dice", b, others))
        nested.append({"fold": fold, "chosen_bias": chosen, **per_fold[fold][chosen]})
    nested_row = "| nested (b chosen on the other folds) | " + " | ".join(
        f"{np.mean([n[key] for n in nested]):.3f}" for key in KEYS) + " |"
    rows.append(nested_row)
    command = "python benchmarks/accuracy/nerve_bias_cv.py " + " ".join(
        {str(args.data): "DATA", str(args.runs): "RUNS"}.get(a, a) for a in (argv or sys.argv[1:]))
    when = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    text = [f"# A nerve prior in the live path's decision, cross-validated ({args.model}, {args.folds} folds)", "",
            f"Command: `{command}`; {when}. Each fold's float32 ONNX graph (weights at the end of training, trained "
            "on the other blocks) segments its held-out block, and one nerve-free window per frame, through the live "
            "path's Segmenter with b added to the nerve's probability before the argmax; means over folds. The "
            "nested row picks b per fold on the other folds' mean nerve Dice (chosen: "
            + ", ".join(f"fold {n['fold']}: {n['chosen_bias']:g}" for n in nested) + ").", "", *rows, ""]
    args.report.write_text("\n".join(text), encoding="utf-8")
    args.report.with_suffix(".json").write_text(json.dumps({"model": args.model, "biases": biases,
                                                            "summary": summary, "nested": nested, "date": when},
                                                           indent=1), encoding="utf-8")
    print("\n".join(rows))
    print(f"wrote {args.report}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
