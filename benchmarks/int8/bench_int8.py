#!/usr/bin/env python3
"""INT8 on the CPU: every shipped semantic model as float32 ONNX and as its statically quantized INT8 graph.

For each model with weights: the float32 graph (``--backend onnx``) and the INT8 graph (``--backend onnx-int8``,
ONNX Runtime's quantize_static, QDQ, per-channel int8 weights, uint8 activations calibrated on the 24 bundled
sample frames) segment every frame of a labelled data set through the live path's Segmenter; the report gives
each class's mean Dice against the ground truth for both, their change, and how well the INT8 masks agree with
the float32 ones. Speed: the model alone (``backend.run``) in torch, float32 ONNX and INT8 ONNX, and the whole
``segment()`` (preprocess, model, postprocess) in ONNX float32 and INT8, on ``--threads`` threads, rounds
interleaved (torch, fp32, int8, torch, fp32, int8, ...), load average recorded before and after each round.

    .venv/bin/python benchmarks/int8/bench_int8.py --data path/to/usgra-seg                 # writes benchmarks/int8/int8.md
    .venv/bin/python benchmarks/int8/bench_int8.py --data path/to/usgra-seg --write-cards   # also the cards' "int8"

The shipped weights were trained on every frame of usgra-seg and the cross-validation folds' weights are not
kept, so the Dice change is measured on training frames (those not used for calibration): it measures what
quantization loses against float32, not the model's accuracy. ``auto`` runs INT8 only where the change recorded in
the card is under 0.01 for every class (NerveSegLogic.inference.backends.INT8_MAX_DICE_CHANGE).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shlex
import statistics
import sys
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Dict, List

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # waiting OpenMP threads sleep: the machine is shared

REPO = Path(__file__).resolve().parents[2]

import numpy as np  # noqa: E402

from NerveSegLogic.inference.segmenter import load_segmenter
from NerveSegLogic.models import int8
from NerveSegLogic.imaging import placement as pp  # noqa: E402
from NerveSegLogic.models import registry  # noqa: E402
from NerveSegLogic.train.metrics import dice  # noqa: E402
from NerveSegLogic.testing.machine import cpu_name, load_note  # noqa: E402

#: The live path keeps 30 fps when a frame's whole segment() takes at most this (ms).
FRAME_BUDGET_MS = 1000.0 / 30.0


def load_average() -> List[float]:
    return [round(v, 2) for v in os.getloadavg()]


def calibration_names() -> set:
    from NerveSegLogic.datasets.readers import open_dataset
    from NerveSegLogic.resources import sample_dir

    sample = open_dataset(sample_dir())
    return {sample[i].name for i in range(len(sample))}


def mean(values: List[float]) -> float:
    finite = [v for v in values if not math.isnan(v)]
    return float(np.mean(finite)) if finite else math.nan


def accuracy(fp32, int8, dataset, skip: set) -> Dict:
    """Per class: mean Dice of float32 and INT8 against the truth, and of INT8 against float32, over the frames
    whose names are not in ``skip`` (the calibration frames)."""
    classes = [(c.key, c.label) for c in fp32.classes]
    scores = {key: {"fp32": [], "int8": [], "agreement": []} for key, _ in classes}
    used = 0
    for i in range(len(dataset)):
        item = dataset[i]
        if item.name in skip:
            continue
        used += 1
        a = fp32.segment(item.image).labelmap
        b = int8.segment(item.image).labelmap
        for key, label in classes:
            truth = item.mask == label
            scores[key]["fp32"].append(dice(a == label, truth))
            scores[key]["int8"].append(dice(b == label, truth))
            scores[key]["agreement"].append(dice(b == label, a == label))
    out = {"frames": used, "dice_float32": {}, "dice_int8": {}, "dice_change": {}, "mask_agreement_dice": {}}
    for key, _ in classes:
        d32, d8 = mean(scores[key]["fp32"]), mean(scores[key]["int8"])
        out["dice_float32"][key] = round(d32, 4)
        out["dice_int8"][key] = round(d8, 4)
        out["dice_change"][key] = round(abs(d8 - d32), 4)
        agreement = mean(scores[key]["agreement"])  # NaN when both masks were empty on every frame
        out["mask_agreement_dice"][key] = None if math.isnan(agreement) else round(agreement, 4)
    out["max_dice_change"] = max(out["dice_change"].values())
    out["float32_segments_something"] = any(v is not None for v in out["mask_agreement_dice"].values())
    return out


def timed(call, warmup: int, runs: int) -> List[float]:
    for _ in range(warmup):
        call()
    samples = []
    for _ in range(runs):
        start = time.perf_counter()
        call()
        samples.append((time.perf_counter() - start) * 1000.0)
    return samples


def speed(segmenters: Dict, frame: np.ndarray, rounds: int, warmup: int, runs: int) -> Dict:
    """Median ms of the model alone per backend, and of the whole segment() for the ONNX ones; rounds interleaved."""
    card = next(iter(segmenters.values())).card
    batch = pp.preprocess(frame, card.input)[0][np.newaxis]
    model = {name: [] for name in segmenters}
    whole = {name: [] for name in segmenters if name != "torch"}
    loads = []
    for _ in range(rounds):
        before = load_average()
        for name, segmenter in segmenters.items():
            model[name] += timed(lambda: segmenter.backend.run(batch), warmup, runs)
            if name in whole:
                whole[name] += timed(lambda: segmenter.segment(frame), warmup, runs)
        loads.append({"before": before, "after": load_average()})
    return {"model_ms": {k: round(statistics.median(v), 2) for k, v in model.items()},
            "model_ms_p90": {k: round(float(np.percentile(v, 90)), 2) for k, v in model.items()},
            "segment_ms": {k: round(statistics.median(v), 2) for k, v in whole.items()},
            "segment_ms_p90": {k: round(float(np.percentile(v, 90)), 2) for k, v in whole.items()},
            "load_average": loads}


def bench(name: str, dataset, args, skip: set) -> Dict:
    started = load_average()
    fp32 = load_segmenter(name, backend="onnx", threads=args.threads)
    int8 = load_segmenter(name, backend="onnx-int8", threads=args.threads)
    segmenters = {"onnx": fp32, "onnx-int8": int8}
    if not args.no_torch:
        segmenters = {"torch": load_segmenter(name, backend="torch", device="cpu", threads=args.threads),
                      **segmenters}
    row = {"name": name, "input": [fp32.card.input.height, fp32.card.input.width]}
    row["accuracy"] = accuracy(fp32, int8, dataset, skip)
    row["speed"] = speed(segmenters, dataset[0].image, args.rounds, args.warmup, args.runs)
    row["load_average_start"] = started
    return row


def card_block(row: Dict, args, command: str, calibration: int) -> Dict:
    acc, spd = row["accuracy"], row["speed"]
    recipe = int8.int8_recipe_of(registry.card(row["name"]))
    return {
        "max_dice_change": acc["max_dice_change"],
        "dice_change": acc["dice_change"],
        "dice_float32": acc["dice_float32"],
        "dice_int8": acc["dice_int8"],
        "mask_agreement_dice": acc["mask_agreement_dice"],
        "ms_per_frame": {"onnx_float32": spd["model_ms"]["onnx"], "onnx_int8": spd["model_ms"]["onnx-int8"]},
        "segment_ms_per_frame": {"onnx_float32": spd["segment_ms"]["onnx"],
                                 "onnx_int8": spd["segment_ms"]["onnx-int8"]},
        "threads": args.threads,
        "evaluated_on": (f"usgra-seg, the {acc['frames']} frames not used for calibration; training frames of the "
                         "shipped weights (fold weights are not kept), so this measures what INT8 loses against "
                         "float32, not accuracy"),
        "calibration": f"{calibration} bundled sample frames (Resources/Sample), recipe {recipe}",
        "recipe": recipe,
        "auto_uses_int8": bool(acc["max_dice_change"] < int8.INT8_MAX_DICE_CHANGE
                               and acc["float32_segments_something"]
                               and spd["model_ms"]["onnx-int8"] < spd["model_ms"]["onnx"]),
        "load_average": spd["load_average"][0]["before"],
        "machine": f"{cpu_name()}, {os.cpu_count()} cores",
        "measured_utc": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M"),
        "command": command,
    }


def write_card_block(name: str, block: Dict) -> None:
    """Add or replace only the card's ``int8`` block; the card is read right before writing (others edit notes).

    The block's ``cross_validation`` part (benchmarks/release/int8_cv_to_cards.py, from the folds) is kept, and with it
    ``auto_uses_int8`` says what ``auto`` decides from the whole block, as int8_cv_to_cards.py writes it."""
    from NerveSegLogic.models.card import ModelCard, write_card

    path = registry.card(name).path
    data = json.loads(path.read_text(encoding="utf-8"))
    block = dict(block)
    folds = (data.get("int8") or {}).get("cross_validation")
    if folds is not None:
        block["cross_validation"] = folds
        data["int8"] = block
        block["auto_uses_int8"] = bool(int8.int8_allowed(ModelCard.from_dict(data)))
    data["int8"] = block
    write_card(data, path)


def fmt(value) -> str:
    return "-" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.3f}"


def report(rows: List[Dict], args, command: str, calibration: int) -> str:
    lines = [
        "# INT8 on the CPU: float32 against statically quantized ONNX graphs",
        "",
        f"- machine: {cpu_name()}, {os.cpu_count()} cores; "
        + load_note(load["before"][0] for row in rows for load in row["speed"]["load_average"])
        + ": the load average before/after every round is listed below",
        f"- date (UTC): {datetime.now(timezone.utc).strftime('%Y-%m-%d %H:%M')}; onnxruntime "
        f"{__import__('onnxruntime').__version__}; {args.threads} intra-op threads; OMP_WAIT_POLICY "
        f"{os.environ.get('OMP_WAIT_POLICY')}",
        f"- command: `{command}`",
        f"- INT8 graph: ONNX Runtime quantize_static after quant_pre_process; QDQ format, int8 weights per output "
        f"channel, uint8 activations calibrated on the {calibration} bundled sample frames with each card's recipe "
        f"(`int8.recipe`; without one `{int8.INT8_RECIPE}`: min/max); input and output stay float32",
        "- Dice: mean over frames of each class's Dice against the ground truth, through the live path's Segmenter "
        "(placement, argmax, small-region removal). The frames are **training frames** of the shipped weights (the "
        "cross-validation folds' weights are not kept), minus the calibration frames: the change measures what "
        "INT8 loses against float32, not accuracy. Agreement: Dice of the INT8 mask against the float32 mask.",
        f"- `auto` runs INT8 where every class's Dice change is under {int8.INT8_MAX_DICE_CHANGE} (recorded in "
        "the card's `int8` block).",
        "",
        "## Accuracy",
        "",
        "| model | frames | class | Dice fp32 | Dice int8 | change | int8 vs fp32 mask Dice |",
        "|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        acc = row["accuracy"]
        for key in acc["dice_change"]:
            lines.append(f"| {row['name']} | {acc['frames']} | {key} | {fmt(acc['dice_float32'][key])} | "
                         f"{fmt(acc['dice_int8'][key])} | {fmt(acc['dice_change'][key])} | "
                         f"{fmt(acc['mask_agreement_dice'][key])} |")
    lines += [
        "",
        "## Speed (ms per frame, median over all rounds; p90 in brackets)",
        "",
        "Model alone: `backend.run` on one preprocessed frame. Whole path: `Segmenter.segment` on a 512x512 "
        f"usgra-seg frame (preprocess, model, postprocess). 30 fps: whole path median <= {FRAME_BUDGET_MS:.1f} ms "
        "on the backend `auto` picks, **in this run**: on a machine shared with other jobs every figure is slower "
        "than idle (the cards' `speed` blocks hold idle figures from benchmarks/speed/bench_models.py); the ratio int8 / "
        "fp32, measured in interleaved rounds, is the figure to read.",
        "",
        "| model | input | torch | ONNX fp32 | ONNX int8 | int8 / fp32 | whole path fp32 | whole path int8 | auto "
        "| 30 fps |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        s = row["speed"]
        m, p, w, wp = s["model_ms"], s["model_ms_p90"], s["segment_ms"], s["segment_ms_p90"]
        acc = row["accuracy"]
        auto = "onnx-int8" if (acc["max_dice_change"] < int8.INT8_MAX_DICE_CHANGE
                               and acc["float32_segments_something"]) else "onnx"
        keeps = "yes" if w[auto] <= FRAME_BUDGET_MS else "no"
        torch_cell = f"{m['torch']:.1f} ({p['torch']:.1f})" if "torch" in m else "-"
        lines.append(f"| {row['name']} | {'x'.join(map(str, row['input']))} | {torch_cell} | "
                     f"{m['onnx']:.1f} ({p['onnx']:.1f}) | {m['onnx-int8']:.1f} ({p['onnx-int8']:.1f}) | "
                     f"{m['onnx-int8'] / m['onnx']:.2f} | {w['onnx']:.1f} ({wp['onnx']:.1f}) | "
                     f"{w['onnx-int8']:.1f} ({wp['onnx-int8']:.1f}) | {auto} | {keeps} |")
    empty = [row["name"] for row in rows if not row["accuracy"]["float32_segments_something"]]
    if empty:
        lines += ["", f"**{', '.join(empty)}: the shipped float32 weights segment nothing on any frame** (background "
                  "probability 1 everywhere, torch and ONNX alike), so its Dice change of 0 is no evidence and "
                  "`auto` keeps float32 for it."]
    lines += ["", "bpmsegnet (instance model) is not exported to ONNX, so it has no INT8 graph.", "",
              "## Load average (1, 5, 15 min) before / after each round", ""]
    for row in rows:
        rounds = "; ".join(f"{' '.join(map(str, r['before']))} / {' '.join(map(str, r['after']))}"
                           for r in row["speed"]["load_average"])
        lines.append(f"- {row['name']}: {rounds}")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", required=True, help="labelled data set (usgra-seg folder)")
    parser.add_argument("--models", nargs="*", default=None, help="default: every semantic model with weights")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--runs", type=int, default=30, help="timed calls per backend and round")
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--no-torch", action="store_true", help="skip the torch column")
    parser.add_argument("--report", default=str(REPO / "benchmarks" / "int8" / "int8.md"))
    parser.add_argument("--write-cards", action="store_true", help="store the int8 block in each card")
    parser.add_argument("--cards-from", default=None, metavar="JSON",
                        help="write the cards' int8 blocks from a finished run's JSON (int8.json) and stop")
    args = parser.parse_args(argv)
    if args.cards_from:
        saved = json.loads(Path(args.cards_from).read_text())
        args.threads = saved["threads"]
        for row in saved["rows"]:
            write_card_block(row["name"], card_block(row, args, saved["command"], saved["calibration_frames"]))
            print(f"{row['name']}: int8 block written")
        return 0

    import torch

    torch.set_num_threads(args.threads)
    from NerveSegLogic.datasets.readers import open_dataset

    dataset = open_dataset(args.data)
    skip = calibration_names()
    models = args.models or [c.name for c in registry.cards() if c.task == "semantic" and c.has_weights]
    given = list(argv or sys.argv[1:])
    # the data set's path says where it lies on this machine, not what was run: a placeholder stands for it
    shown = ["<usgra-seg>" if i and given[i - 1] == "--data" else
             "--data=<usgra-seg>" if a.startswith("--data=") else a for i, a in enumerate(given)]
    command = "benchmarks/int8/bench_int8.py " + " ".join(shlex.quote(a) if a[0] != "<" and "=<" not in a else a
                                                       for a in shown)
    rows = []
    for name in models:
        print(f"{name}: load {load_average()}", flush=True)
        row = bench(name, dataset, args, skip)
        rows.append(row)
        print(json.dumps({"name": name, "accuracy": row["accuracy"], "model_ms": row["speed"]["model_ms"],
                          "segment_ms": row["speed"]["segment_ms"]}), flush=True)
        if args.write_cards:
            write_card_block(name, card_block(row, args, command, len(skip)))
    Path(args.report).write_text(report(rows, args, command, len(skip)))
    saved = {"command": command, "threads": args.threads, "calibration_frames": len(skip), "rows": rows}
    Path(args.report).with_suffix(".json").write_text(json.dumps(saved, indent=2) + "\n")
    print(f"wrote {args.report}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
