#!/usr/bin/env python3
"""Per-frame presence of the shipped models, table from ``nerveseg evaluate`` outputs (their metrics.json).

Run the evaluations first, one folder per model, with negative windows so that frames without a nerve exist:

    for m in unet sa-unet attention-unet unet++ ragcm; do
      nerveseg evaluate --model $m --data path/to/usgra-seg --negatives 1 --out eval-neg/$m --pictures 0 --no-progress
    done
    .venv/bin/python benchmarks/accuracy/presence_report.py eval-neg/*        # writes benchmarks/accuracy/presence.md
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def fmt(value, digits=3):
    return "n/a" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.{digits}f}"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("folders", nargs="+", help="nerveseg evaluate --out folders")
    parser.add_argument("--out", default=str(REPO / "benchmarks" / "accuracy" / "presence.md"))
    args = parser.parse_args(argv)
    rows, first = [], None
    for folder in args.folders:
        path = Path(folder) / "metrics.json"
        try:
            metrics = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as error:
            raise SystemExit(f"{path}: not a readable metrics.json ({error})")
        first = first or metrics
        rows.append(metrics)
    context = first["context"]
    lines = ["# Per-frame presence: frames where a model marks a structure that is not there", "",
             f"- data: `{Path(context['data']).name}`, every frame (all hold a nerve) plus windows cut where nothing "
             f"is labelled (`nerveseg evaluate --negatives 1`: {context.get('negative_windows', 0)} windows; a "
             f"window is a magnified part of a frame, so its speckle is coarser than a real frame's)",
             f"- the shipped weights were trained on every usgra-seg frame: the frames with a nerve are training "
             f"frames, the windows are views the models never saw as such. Indicative, not a held-out result.",
             f"- machine: {first['machine']}; date: {first['date']}",
             "- command: `nerveseg evaluate --model M --data usgra-seg --negatives 1 --out eval-neg/M --pictures 0`, "
             "then `benchmarks/accuracy/presence_report.py eval-neg/*`", "",
             "False-nerve frames: windows (no nerve labelled) where the live path's labelmap shows a nerve. Presence "
             "AUC: how well a frame score ranks frames with a nerve above frames without (rank-based, Mann-Whitney "
             "U), with the highest nerve probability in the frame or the nerve area the labelmap shows as the "
             "score.", "",
             "| model | false-nerve frames | missed-nerve frames | nerve presence AUC (max prob.) | (marked area) | "
             "false-vessel frames | nerve Dice |",
             "|---|---|---|---|---|---|---|"]
    for metrics in rows:
        nerve, vessel = metrics["presence"]["nerve"], metrics["presence"].get("blood_vessel")
        vessel_cell = (f"{vessel['false_frames']}/{vessel['frames_without']} ({fmt(vessel['false_frame_rate'])})"
                       if vessel else "n/a")
        lines.append(f"| {metrics['model']} | {nerve['false_frames']}/{nerve['frames_without']} "
                     f"({fmt(nerve['false_frame_rate'])}) | {nerve['missed_frames']}/{nerve['frames_with']} | "
                     f"{fmt(nerve['auc'])} | {fmt(nerve.get('auc_area'))} | {vessel_cell} | "
                     f"{fmt(metrics['per_class']['nerve']['dice'])} |")
    lines += ["", "Nerve Dice here includes the windows: a window where a nerve is marked scores 0."]
    Path(args.out).write_text("\n".join(lines) + "\n", encoding="utf-8")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
