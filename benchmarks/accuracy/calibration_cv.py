"""Presence calibration of the default model, fitted on cross-validation folds (issue 25 item 4).

Each fold's base model (the default recipe trained on the other four usgra-seg blocks, weights at the end of
training: the runs benchmarks/accuracy/adaptation.py uses) segments its own held-out block, every frame, plus one nerve-free
window cut from each frame where nothing is labelled, through the live path's backend (ONNX Runtime INT8 as ``auto``
runs the default). Each frame gives each class a raw presence score (its highest probability). Then:

- **cross-fitted** figures (what a new frame can expect): for each fold, Platt scaling fitted on the other folds'
  frames and applied to this fold's; ECE, the reliability diagram and the false-frame rate / recall at the
  thresholds are computed from these out-of-fold calibrated presences;
- the **shipped** block: Platt scaling fitted on all folds' frames, written into Resources/Models/<model>.json's
  ``presence`` block with ``--write-card`` (release tooling: it changes a shipped card).

    python benchmarks/accuracy/calibration_cv.py --data ../shared/data/usgra-seg --base-runs runs/adapt/base \\
        --report benchmarks/accuracy/calibration.md [--write-card]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
from datetime import datetime, timezone
from pathlib import Path
from typing import Dict, List

import numpy as np

ROOT = Path(__file__).resolve().parents[2]

MODEL = "effnet2-unet"


def fold_rows(data: Path, base_runs: Path, fold: int, backend: str, threads: int, cache: Path) -> List[Dict]:
    """Rows of one fold's held-out block (+ windows), cached as JSON."""
    from NerveSegLogic.train.crossval import base_run, block_names

    from NerveSegLogic.datasets.readers import open_dataset
    from NerveSegLogic.inference.segmenter import load_segmenter
    from NerveSegLogic.train import calibrate
    from NerveSegLogic.train.data import FrameStore
    from NerveSegLogic.train.negatives import negative_frames

    path = cache / f"rows_fold{fold}_{backend}.json"
    if path.is_file():
        return json.loads(path.read_text())
    run = base_run(base_runs, fold, data, threads)
    names = block_names(data)[fold]
    dataset = open_dataset(data)
    all_names = dataset.names()
    frames = FrameStore(dataset, None, [all_names.index(n) for n in names])
    frames.frames.extend(negative_frames(frames.frames, seed=0, rate=1.0))
    from NerveSegLogic.models.weights import sha256_file

    weights = run / f"{MODEL}.safetensors"
    expected = json.loads((run / "card.json").read_text())["weights"]["sha256"]
    if sha256_file(weights) != expected:
        raise SystemExit(f"{weights}: sha256 differs from its run's card.json")
    segmenter = load_segmenter(MODEL, backend=backend, threads=threads, weights_path=weights,
                               onnx_cache=cache / "onnx")
    rows = [dict(vars(r), fold=fold) for r in calibrate.collect(segmenter, frames, segmenter.classes)]
    cache.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(rows))
    return rows


def cross_fitted(rows: List[Dict], keys: List[str]):
    """{key: (out-of-fold calibrated presences, truths, per-fold fits)}."""
    from NerveSegLogic.inference import presence as pr

    out = {}
    folds = sorted({r["fold"] for r in rows})
    for key in keys:
        predicted, truth, fits = [], [], {}
        for fold in folds:
            train = [r for r in rows if r["fold"] != fold]
            test = [r for r in rows if r["fold"] == fold]
            fit = pr.fit_platt([r["scores"][key] for r in train], [r["truth"][key] for r in train])
            fits[fold] = fit
            predicted += [fit(r["scores"][key]) for r in test]
            truth += [r["truth"][key] for r in test]
        out[key] = (np.array(predicted), np.array(truth), fits)
    return out


def main() -> int:
    from NerveSegLogic.inference import presence as pr
    from NerveSegLogic.models import registry
    from NerveSegLogic.models.card import write_card
    from NerveSegLogic.train import calibrate

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--base-runs", type=Path, required=True)
    parser.add_argument("--folds", default="0,1,2,3,4")
    parser.add_argument("--backend", default="onnx-int8")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--cache", type=Path, default=Path("runs/calibration_cv"))
    parser.add_argument("--report", type=Path, default=ROOT / "benchmarks" / "accuracy" / "calibration.md")
    parser.add_argument("--write-card", action="store_true", help="write the pooled block into the shipped card")
    args = parser.parse_args()
    folds = [int(v) for v in args.folds.split(",")]
    rows = [row for fold in folds for row in fold_rows(args.data, args.base_runs, fold, args.backend, args.threads,
                                                       args.cache)]
    keys = sorted(rows[0]["truth"])
    crossed = cross_fitted(rows, keys)
    command = "python benchmarks/accuracy/calibration_cv.py " + " ".join(sys.argv[1:])
    objects = [calibrate.Row(r["name"], r["scores"], r["truth"]) for r in rows]
    fitted = {"data": "usgra-seg: 5 contiguous blocks, each scored by the model trained on the other four, plus one "
                      "nerve-free window per frame", "frames": len(rows), "folds": folds, "backend": args.backend,
              "date": datetime.now(timezone.utc).isoformat(timespec="seconds"), "command": command,
              "report": "benchmarks/accuracy/calibration.md"}
    block, pooled_report = calibrate.fit(objects, fitted=fitted)
    # the report's figures: out-of-fold (cross-fitted) calibrated presences
    report = {"classes": {}, "show": pr.DEFAULT_SHOW, "uncertain": pr.DEFAULT_UNCERTAIN, "frames": len(rows)}
    for key in keys:
        predicted, truth, fits = crossed[key]
        raw = np.array([r["scores"][key] for r in rows])
        report["classes"][key] = {
            "fitted": True, "frames_with": int(truth.sum()), "frames_without": int((~truth).sum()),
            "auc": pooled_report["classes"][key]["auc"],
            "ece_raw": pr.expected_calibration_error(raw, truth)[0],
            "bins_raw": pr.expected_calibration_error(raw, truth)[1],
            "ece": pr.expected_calibration_error(predicted, truth)[0],
            "bins": pr.expected_calibration_error(predicted, truth)[1],
            "at_show": pr.operating_point(predicted, truth, pr.DEFAULT_SHOW),
            "at_uncertain": pr.operating_point(predicted, truth, pr.DEFAULT_UNCERTAIN),
            "raw_at_half": pr.operating_point(raw, truth, 0.5),
            "fold_fits": {str(f): [round(c.a, 3), round(c.b, 3)] for f, c in fits.items()},
            "sweep": [pr.operating_point(predicted, truth, t) for t in (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)],
        }
    picture = args.report.with_name(args.report.stem + "_reliability.png")
    calibrate.reliability_picture(report, picture, title=f"{MODEL}: out-of-fold presence on usgra-seg blocks "
                                                          f"{','.join(map(str, folds))} + nerve-free windows")
    lines = ["# Presence calibration of the default model (cross-validated)", "",
             f"- model: {MODEL}, each block scored by its fold's base model (the default recipe trained on the other "
             f"four blocks, weights at the end of training), backend {args.backend}, {args.threads} threads",
             f"- frames: {len(rows)} ({sum(1 for r in rows if '~negative' not in r['name'])} usgra-seg frames of "
             f"blocks {folds} + one nerve-free window cut from each where nothing is labelled)",
             "- presence score: the class's highest probability in the frame; calibrated by Platt scaling on its "
             "logit. Figures below are **out of fold**: each block's presences come from a fit on the other blocks.",
             f"- machine: {platform.machine()}, {os.cpu_count()} cores; command: `{command}`", "",
             "| class | frames with / without | presence AUC | ECE raw max probability | ECE calibrated | "
             f"drawn (>= {pr.DEFAULT_SHOW}): false frames / recall | drawn at all (>= {pr.DEFAULT_UNCERTAIN}): false "
             "frames / recall | raw >= 0.5: false frames / recall |", "|---|---|---|---|---|---|---|---|"]
    for key, entry in report["classes"].items():
        s, u, r = entry["at_show"], entry["at_uncertain"], entry["raw_at_half"]
        lines.append(f"| {key} | {entry['frames_with']} / {entry['frames_without']} | {entry['auc']:.3f} | "
                     f"{entry['ece_raw']:.3f} | {entry['ece']:.3f} | {s['false_frame_rate']:.3f} / {s['recall']:.3f} | "
                     f"{u['false_frame_rate']:.3f} / {u['recall']:.3f} | {r['false_frame_rate']:.3f} / "
                     f"{r['recall']:.3f} |")
    lines += ["", f"![reliability diagram]({picture.name})", "",
              "False frames: frames without the class in which the live view would draw it (rate over frames "
              "without); recall: frames with it in which it is drawn. Threshold sweep (out of fold):", "",
              "| class | threshold | false frames | recall |", "|---|---|---|---|"]
    for key, entry in report["classes"].items():
        for point in entry["sweep"]:
            lines.append(f"| {key} | {point['threshold']:.1f} | {point['false_frame_rate']:.3f} | "
                         f"{point['recall']:.3f} |")
    lines += ["", "Per-fold fits (a, b) used for the out-of-fold figures: " + "; ".join(
        f"{key}: {entry['fold_fits']}" for key, entry in report["classes"].items()),
        "", "Shipped block (fitted on all folds' frames): " + json.dumps(block["calibration"])]
    args.report.write_text("\n".join(lines) + "\n")
    args.report.with_suffix(".json").write_text(json.dumps({"report": report, "presence": block}, indent=2))
    print("\n".join(lines))
    if args.write_card:
        card = registry.card(MODEL)
        data = card.to_json()
        data["presence"] = block
        write_card(data, card.path)
        print(f"wrote the presence block into {card.path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
