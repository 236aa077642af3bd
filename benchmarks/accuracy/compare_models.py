#!/usr/bin/env python3
"""Compare every registered architecture on a labelled data set: cross-validation by contiguous blocks, then final
models trained on every frame. One command regenerates the table; it can run for hours and be restarted.

    python benchmarks/accuracy/compare_models.py --data path/to/usgra-seg --out runs/comparison

For each model and each of ``--folds`` contiguous blocks of the frames (sorted by name; never random frames):
train on the other blocks with the model card's recipe (``nerveseg train``'s loop), then evaluate the held-out
block through the live path (``nerveseg evaluate``'s code). Then, unless ``--no-final``, train each model on every
frame and write its weights and card (with the cross-validated figures and the measured CPU speed) into
``<out>/final/<model>/``, ready to be copied into Resources/Models.

Everything is resumable per (model, fold): a finished fold's metrics are kept, an unfinished one resumes from its
checkpoint (training time limits are summed over restarts). After every fold the report is rewritten with what is
done so far: ``--report`` (default benchmarks/accuracy/comparison.md) with .json and .png beside it.

On a CPU the papers' recipes take days (100 epochs at 256x256, BPMSegNet at 640x640); --epochs, --input-size and
--minutes (training time per model and fold) bound the run, globally or per model with --model-options, and the
report and cards say what was used.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import shlex
import sys
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Dict, List, Optional

import numpy as np

# Waiting OpenMP workers must sleep, not spin: spinning ones made training 8x slower whenever another process
# held a core (measured here: 484 vs 41 ms per 128x128 frame on 2 threads). Set before torch loads.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

REPO = Path(__file__).resolve().parents[2]

from NerveSegLogic.models.readme_table import README_BEGIN, README_END, origin as paper_origin  # noqa: E402
from NerveSegLogic.train.crossval import (INT8_CALIBRATION_FRAMES, LAST_WEIGHTS, fold_frames,  # noqa: E402
                                          format_stat, stats, summary_scores, use_last_weights)

log = logging.getLogger("compare_models")

#: The live default's whole Segmenter.segment (ONNX Runtime) may take this long per frame on the CPU: the live path's
#: p50 budget is 25 ms (issue 12) and transport, hand-over and the scene take about 5 ms of it.
LIVE_MODEL_MS = 20.0
#: float16 weights ship when the mean Dice of every class moves by less than this (issue 4).
FLOAT16_DICE_TOLERANCE = 0.005


# ---------------------------------------------------------------------------------------------------- options
def parse_model_options(items: List[str]) -> Dict[str, Dict]:
    """``["bpmsegnet:epochs=10,input=320x320,minutes=120,batch=2"]`` -> {"bpmsegnet": {...}}.

    ``augment=flip+affine+gamma`` replaces the card's training augmentations (``+`` between names, since ``,``
    separates the keys; ``augment=none`` trains without any); unknown names are refused here, before any training."""
    out: Dict[str, Dict] = {}
    for item in items or []:
        if ":" not in item:
            raise SystemExit(f"--model-options {item!r}: expected MODEL:key=value,... (keys epochs, input, minutes, "
                             f"batch, lr, augment)")
        name, settings = item.split(":", 1)
        parsed: Dict = {}
        for pair in settings.split(","):
            key, _, value = pair.partition("=")
            key = key.strip()
            if key == "input":
                h, _, w = value.lower().partition("x")
                parsed["input_size"] = (int(h), int(w or h))
            elif key in ("epochs", "batch"):
                parsed["batch_size" if key == "batch" else key] = int(value)
            elif key in ("minutes", "lr"):
                parsed[key] = float(value)
            elif key == "augment":
                parsed["augmentations"] = _augmentation_names(item, value)
            else:
                raise SystemExit(f"--model-options {item!r}: unknown key {key!r} "
                                 "(epochs, input, minutes, batch, lr, augment)")
        out[name.strip()] = parsed
    return out


def _augmentation_names(item: str, value: str) -> List[str]:
    from NerveSegLogic.train.augment import AUGMENTATIONS

    names = [] if value.strip().lower() == "none" else [n.strip() for n in value.split("+") if n.strip()]
    unknown = [n for n in names if n not in AUGMENTATIONS]
    if unknown or not value.strip():
        raise SystemExit(f"--model-options {item!r}: augment={value!r}: unknown augmentation(s) {unknown or [value]}; "
                         f"expected names from {sorted(AUGMENTATIONS)} joined by '+', or 'none'")
    return names


def settings_for(model: str, args) -> Dict:
    settings = {"epochs": args.epochs, "input_size": tuple(args.input_size) if args.input_size else None,
                "minutes": args.minutes, "batch_size": None, "lr": None, "augmentations": None}
    settings.update(args.model_options.get(model, {}))
    return settings


# ---------------------------------------------------------------------------------------------------- steps
def train_run(model: str, data: Path, out: Path, settings: Dict, folds: int, fold: Optional[int], args):
    from NerveSegLogic.train.loop import TrainOptions, train

    return train(TrainOptions(
        model=model, data=data, out=out, epochs=settings["epochs"], device=args.device,
        input_size=settings["input_size"], folds=folds, fold=fold, seed=args.seed, limit_minutes=settings["minutes"],
        batch_size=settings["batch_size"], lr=settings["lr"], augmentations=settings["augmentations"],
        threads=args.threads, progress=args.progress, checkpoint_minutes=args.checkpoint_minutes))


def _forget_scores(run_dir: Path) -> None:
    """Remove what was computed from a fold's earlier weights: evaluation, extras, ONNX graphs (``speed.json``,
    the torch ms/frame, does not depend on which weights and stays)."""
    import shutil

    for name in ("eval", "onnx"):
        shutil.rmtree(run_dir / name, ignore_errors=True)
    (run_dir / "extras.json").unlink(missing_ok=True)


def evaluate_run(model: str, data: Path, run_dir: Path, names: Optional[List[str]], args) -> Dict:
    """Evaluate the run's weights on the frames ``names`` (None: all) into ``run_dir/eval``; returns the summary."""
    from NerveSegLogic.train.evaluate_weights import evaluate_data_set

    summary, _ = evaluate_data_set(model, data, run_dir / "eval", weights=run_dir / f"{model}.safetensors",
                                   device=args.device, pictures=2, progress=args.progress, threads=args.threads,
                                   names=names, command="benchmarks/accuracy/compare_models.py (validation block)")
    return summary


def cpu_speed(model: str, run_dir: Path, data: Path, threads: int, repeats: int) -> Dict:
    """Median and 95th percentile ms per frame of the whole live path (torch, CPU) on a real frame."""
    import torch

    from NerveSegLogic.datasets.readers import open_dataset
    from NerveSegLogic.inference.segmenter import Segmenter, time_segment
    from NerveSegLogic.models import registry
    from NerveSegLogic.train.evaluate_weights import card_for_weights

    card, weights_path, sha256 = card_for_weights(model, run_dir / f"{model}.safetensors")
    module = registry.load_from_card(card, device="cpu", weights_path=weights_path, sha256=sha256)
    previous = torch.get_num_threads()
    try:
        segmenter = Segmenter.from_module(card, module, device="cpu", threads=threads)
        frame = open_dataset(data)[0].image
        median, p95 = time_segment(segmenter, frame, repeats=repeats)
    finally:
        torch.set_num_threads(previous)
    return {"cpu_ms_per_frame": round(median, 1), "cpu_ms_p95": round(p95, 1), "cpu_threads": threads,
            "frame_size": list(frame.shape), "what": "whole live path (preprocess, torch model, postprocess)",
            # other processes on the machine slow the measurement: the load says how busy it was
            "load_average_1min": round(os.getloadavg()[0], 2), "machine": machine(), "date": today()}


def float16_check(model: str, run_dir: Path, data: Path, args) -> Dict:
    """Evaluate float32 and float16 copies of the final weights on every frame; ship float16 when no class's mean
    Dice moves by FLOAT16_DICE_TOLERANCE or more. Returns what was measured and decided."""
    from NerveSegLogic.models import registry
    from NerveSegLogic.train.evaluate_weights import card_for_weights

    weights = run_dir / f"{model}.safetensors"
    card, _, sha256 = card_for_weights(model, weights)
    fp32 = evaluate_run(model, data, run_dir, None, args)
    module = registry.load_from_card(card, weights_path=weights, sha256=sha256)
    half_dir = run_dir / "float16"
    half_dir.mkdir(exist_ok=True)
    half_sha = registry.save_weights(module, half_dir / f"{model}.safetensors", dtype="float16")
    half_card = card.to_json()
    half_card["weights"] = {"file": f"{model}.safetensors", "sha256": half_sha, "dtype": "float16"}
    from NerveSegLogic.train.evaluate import write_json

    write_json(half_dir / "card.json", half_card)
    fp16 = evaluate_run(model, data, half_dir, None, args)
    keys = list(fp32["classes"])
    change = {k: abs(fp16["per_class"][k]["dice"] - fp32["per_class"][k]["dice"]) for k in keys}
    return {"dice_change": change, "float16": all(v < FLOAT16_DICE_TOLERANCE for v in change.values()),
            "float16_sha256": half_sha, "evaluated_on": f"all {fp32['n_images']} frames (training frames: this "
                                                       "measures the precision loss, not accuracy)"}


# ---------------------------------------------------------------------------------------------- fold extras
def fold_extras(model: str, data: Path, run_dir: Path, train_names: List[str], held_out: List[str],
                threads: int = 1) -> Dict:
    """What the held-out evaluation does not give, for one fold's weights (semantic models), all on ONNX Runtime:

    - per-frame presence on frames without a nerve: the held-out frames plus one window per frame cut where
      nothing is labelled (:mod:`NerveSegLogic.train.negatives`, seed 1; training cut its windows from training
      frames only with seed 0): the rate of nerve-free windows in which the model marks a nerve, and the AUC of
      "a nerve is in this frame" with the highest nerve probability as the score;
    - INT8: the float32 graph quantized as the live path does (:func:`backends.quantize_int8`), calibrated on
      frames of this fold's TRAINING blocks, scored on the held-out block against the float32 graph (Dice change
      per class, as issue 13 asks: on the cross-validation folds, not on training frames);
    - ms per frame of the whole live path (preprocess, model, postprocess) on ONNX Runtime, float32 and INT8,
      ``threads`` intra-op threads, with the load average (a busy machine inflates it).
    """
    from NerveSegLogic.inference import backends
    from NerveSegLogic.inference import quantize
    from NerveSegLogic.models import int8
    from NerveSegLogic.inference.segmenter import Segmenter
    from NerveSegLogic.models import registry
    from NerveSegLogic.train.evaluate import evaluate
    from NerveSegLogic.train.negatives import negative_frames
    from NerveSegLogic.train.evaluate_weights import card_for_weights

    card, weights_path, sha256 = card_for_weights(model, run_dir / f"{model}.safetensors")
    module = registry.load_from_card(card, device="cpu", weights_path=weights_path, sha256=sha256)
    graphs = run_dir / "onnx"
    graphs.mkdir(exist_ok=True)
    fp32_path = graphs / f"{model}.onnx"
    if not fp32_path.is_file():
        registry.export_onnx(module, fp32_path, card=card)
    step = max(1, len(train_names) // INT8_CALIBRATION_FRAMES)
    calibration = [f.image for f in fold_frames(data, train_names[::step][:INT8_CALIBRATION_FRAMES]).frames]
    recipe = int8.int8_recipe_of(registry.card(model))  # the registered card's, as the live path will make it
    int8_path = graphs / f"{model}.int8-{recipe}.onnx"
    if not int8_path.is_file():
        quantize.quantize_int8(fp32_path, int8_path, card, frames=calibration, recipe=recipe)
    fp32 = Segmenter(card, backends.OnnxBackend(fp32_path, threads=threads))
    int8 = Segmenter(card, backends.OnnxInt8Backend(int8_path, threads=threads))

    real = fold_frames(data, held_out)
    scored = {}
    for name, segmenter in (("float32", fp32), ("int8", int8)):
        scored[name] = summary_scores(evaluate(segmenter, real, progress=False, keep_labelmaps=False).summary)
    change = {key: (abs(scored["int8"][key] - scored["float32"][key])
                    if scored["int8"][key] is not None and scored["float32"][key] is not None else None)
              for key in ("nerve_dice", "vessel_dice")}

    with_negatives = fold_frames(data, held_out)
    windows = negative_frames(with_negatives.frames, seed=1, rate=1.0, per_frame=1)
    with_negatives.frames.extend(windows)
    presence = evaluate(fp32, with_negatives, progress=False, keep_labelmaps=False).summary["presence"]["nerve"]

    return {"presence": {"negative_windows": len(windows), "false_nerve_frame_rate": presence["false_frame_rate"],
                         "false_nerve_frames": presence["false_frames"], "nerve_presence_auc": presence.get("auc")},
            "int8": {"calibration": f"{len(calibration)} frames of the fold's training blocks", "recipe": recipe,
                     "float32": scored["float32"], "int8": scored["int8"], "dice_change": change,
                     "max_dice_change": max(v for v in change.values() if v is not None)},
            "live_path_ms": _time_live_path({"onnx": fp32, "onnx-int8": int8}, real[0].image, threads),
            "computed": today()}


def _time_live_path(segmenters: Dict, frame: np.ndarray, threads: int) -> Dict:
    from NerveSegLogic.inference.segmenter import time_segment

    speed: Dict = {}
    load_before = os.getloadavg()[0]
    for name, segmenter in segmenters.items():
        median, p95 = time_segment(segmenter, frame, repeats=50)
        speed[name] = {"ms": round(median, 2), "p95_ms": round(p95, 2)}
    return dict(speed, threads=threads, frame_size=list(frame.shape), load_average_1min=round(load_before, 2),
                date=today(), what="Segmenter.segment on one held-out frame: preprocess, ONNX Runtime, postprocess")


def fold_int8_graph(model: str, run_dir: Path, recipe: str) -> Path:
    """The INT8 graph :func:`fold_extras` made and scored for this fold with ``recipe`` (the registered card's).

    Folds scored before recipes had names hold ``<model>.int8.onnx``, made with the default (min/max) recipe: that
    file stands for the default recipe only. FileNotFoundError names the file expected."""
    from NerveSegLogic.models import int8

    path = run_dir / "onnx" / f"{model}.int8-{recipe}.onnx"
    legacy = run_dir / "onnx" / f"{model}.int8.onnx"
    if not path.is_file() and recipe == int8.INT8_RECIPE and legacy.is_file():
        return legacy
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no INT8 graph with recipe {recipe} for this fold; score the fold first "
                                "(benchmarks/accuracy/compare_models.py without --speed-again makes it)")
    return path


def live_path_speed(model: str, data: Path, run_dir: Path, held_out: List[str], threads: int) -> Dict:
    """:func:`_time_live_path` again on the graphs :func:`fold_extras` wrote (for a re-measurement when idle)."""
    from NerveSegLogic.inference import backends
    from NerveSegLogic.models import int8
    from NerveSegLogic.inference.segmenter import Segmenter
    from NerveSegLogic.models import registry
    from NerveSegLogic.train.evaluate_weights import card_for_weights

    card, _, _ = card_for_weights(model, run_dir / f"{model}.safetensors")
    recipe = int8.int8_recipe_of(registry.card(model))
    segmenters = {"onnx": Segmenter(card, backends.OnnxBackend(run_dir / "onnx" / f"{model}.onnx", threads=threads)),
                  "onnx-int8": Segmenter(card, backends.OnnxInt8Backend(fold_int8_graph(model, run_dir, recipe),
                                                                         threads=threads))}
    return _time_live_path(segmenters, fold_frames(data, held_out[:1])[0].image, threads)


# ---------------------------------------------------------------------------------------------------- results
def machine() -> str:
    return f"{platform.node()} ({platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, " \
           f"{platform.system()} {platform.release()})"


def today() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def _read(path: Path) -> Optional[Dict]:
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None


def collect(models: List[str], out: Path, folds: int) -> Dict[str, Dict]:
    """Everything finished so far, read from the run folders (the script keeps no other state)."""
    from NerveSegLogic.models import registry

    table: Dict[str, Dict] = {}
    for model in models:
        card = registry.card(model)
        entry: Dict = {"parameters": registry.parameter_count(card), "task": card.task, "folds": [],
                       "recipe_epochs": card.training["recipe"]["epochs"],
                       "recipe_input": [card.input.height, card.input.width]}
        for fold in range(folds):
            run_dir = out / "cv" / model / f"fold{fold}"
            metrics = _read(run_dir / "eval" / "metrics.json")
            run_card = _read(run_dir / "card.json")
            if metrics is None or run_card is None:
                continue
            run = run_card["training"]["run"]
            entry["folds"].append({
                "fold": fold, "n_images": metrics["n_images"],
                "nerve_dice": metrics["per_class"]["nerve"]["dice"],
                "vessel_dice": metrics["per_class"].get("blood_vessel", {}).get("dice"),
                "nerve_f1": metrics["detection"]["nerve"]["f1"],
                "vessel_f1": metrics["detection"].get("blood_vessel", {}).get("f1"),
                "nerve_hd95_px": metrics["per_class"]["nerve"]["hd95_px"],
                "vessel_hd95_px": metrics["per_class"].get("blood_vessel", {}).get("hd95_px"),
                "coco": metrics.get("coco"),
                "epochs": run["epochs"], "epochs_planned": run["epochs_planned"], "input_size": run["input_size"],
                "wall_time_s": run["wall_time_s"], "stop_reason": run["stop_reason"],
                "threads": run.get("threads"), "device": run.get("device"), "weights": run.get("weights")})
            extras = _read(run_dir / "extras.json")
            if extras:
                entry["folds"][-1].update({
                    "false_nerve_frame_rate": extras["presence"]["false_nerve_frame_rate"],
                    "nerve_presence_auc": extras["presence"]["nerve_presence_auc"],
                    "negative_windows": extras["presence"]["negative_windows"],
                    "int8_nerve_dice_change": extras["int8"]["dice_change"]["nerve_dice"],
                    "int8_vessel_dice_change": extras["int8"]["dice_change"]["vessel_dice"],
                    "int8_max_dice_change": extras["int8"]["max_dice_change"],
                    # signed, INT8 minus float32 on the same held-out block: their means over folds are the change
                    # of the cross-validated Dice, what `auto` decides by (_int8_change)
                    "int8_nerve_dice_delta": _delta(extras["int8"], "nerve_dice"),
                    "int8_vessel_dice_delta": _delta(extras["int8"], "vessel_dice"),
                    "int8_nerve_dice": extras["int8"]["int8"]["nerve_dice"]})
                if fold == 0:
                    entry["live_path_ms"] = extras["live_path_ms"]
        for key in ("nerve_dice", "vessel_dice", "nerve_f1", "vessel_f1", "nerve_hd95_px", "vessel_hd95_px",
                    "false_nerve_frame_rate", "nerve_presence_auc", "int8_nerve_dice_change",
                    "int8_vessel_dice_change", "int8_max_dice_change", "int8_nerve_dice_delta",
                    "int8_vessel_dice_delta", "int8_nerve_dice"):
            entry[key] = stats([f.get(key) for f in entry["folds"]])
        final_dir = out / "final" / model
        entry["final"] = _read(final_dir / "card.json") is not None
        entry["speed"] = _read(final_dir / "speed.json") or _read(out / "cv" / model / "fold0" / "speed.json")
        entry["float16"] = _read(final_dir / "float16.json")
        table[model] = entry
    return table


def _delta(int8: Dict, key: str) -> Optional[float]:
    after, before = int8["int8"].get(key), int8["float32"].get(key)
    return None if after is None or before is None else after - before


def _int8_change(entry: Dict) -> Optional[float]:
    """The change INT8 makes to the cross-validated Dice: per class |mean over folds of (INT8 - float32)|, the
    largest over classes; None unless every fold has it. This is what `auto` compares with its 0.01 tolerance (the
    cards' ``int8.cross_validation.max_dice_change``). The mean over folds of each fold's largest |change|
    (``int8_max_dice_change``, shown beside it) is larger: with ~40 frames per block a fold's Dice moves by ~0.01
    either way, and that figure counts a fold where INT8 scored higher as a loss too."""
    changes = []
    for key in ("int8_nerve_dice_delta", "int8_vessel_dice_delta"):
        values = [f.get(key) for f in entry["folds"]]
        if any(v is not None for v in values):
            if any(v is None for v in values):
                return None
            changes.append(abs(float(np.mean(values))))
    return max(changes) if changes else None


def _int8_text(entry: Dict) -> str:
    """'nerve -0.0086, vessel -0.0073 (per fold 0.0169)': the signed change of the cross-validated Dice per class
    and, in brackets, the mean of each fold's largest |change|."""
    nerve, vessel = entry.get("int8_nerve_dice_delta") or {}, entry.get("int8_vessel_dice_delta") or {}
    if nerve.get("mean") is None:
        return format_stat(entry["int8_max_dice_change"], 4)
    parts = [f"nerve {nerve['mean']:+.4f}"] + ([f"vessel {vessel['mean']:+.4f}"] if vessel.get("mean") is not None
                                               else [])
    return ", ".join(parts) + f" (per fold {entry['int8_max_dice_change']['mean']:.4f})"


def _live_ms(entry: Dict) -> Optional[float]:
    """The live path's ms/frame on the backend `auto` would pick for these weights: INT8 where its cross-validated
    Dice change is under the live path's tolerance, else float32 ONNX Runtime (None: not measured)."""
    from NerveSegLogic.models.int8 import INT8_MAX_DICE_CHANGE

    speed = entry.get("live_path_ms")
    if not speed:
        return None
    change = _int8_change(entry)
    if change is not None and change < INT8_MAX_DICE_CHANGE:
        return speed["onnx-int8"]["ms"]
    return speed["onnx"]["ms"]


def recommend_default(table: Dict[str, Dict], folds: int) -> Optional[str]:
    """The best cross-validated nerve Dice among the models whose whole live path (ONNX Runtime, the backend
    `auto` picks) takes at most LIVE_MODEL_MS per frame: what can be the live default."""
    fast = [(entry["nerve_dice"]["mean"], model) for model, entry in table.items()
            if len(entry["folds"]) == folds and entry["nerve_dice"]["mean"] is not None
            and _live_ms(entry) is not None and _live_ms(entry) <= LIVE_MODEL_MS]
    return max(fast)[1] if fast else None


def _weights_warning(table: Dict[str, Dict]) -> str:
    """A warning naming the folds scored with other weights than the last (runs scored by older versions)."""
    other = [f"{model} fold {f['fold']}" for model, entry in table.items() for f in entry["folds"]
             if f.get("weights") != LAST_WEIGHTS]
    return (" **Not so for " + ", ".join(other) + "**: scored with the epoch that was best on the held-out block "
            "(optimistic).") if other else ""


def write_report(table: Dict[str, Dict], args, command: str, n_frames: int, started: str) -> None:
    report = Path(args.report)
    report.parent.mkdir(parents=True, exist_ok=True)
    data_name = Path(args.data).name
    lines = [
        "# Model comparison: cross-validated on real nerve-block ultrasound", "",
        f"- data: {data_name}, {n_frames} frames with nerve and blood-vessel masks (usgra-seg by Timm Kandaouroff, "
        "CC BY 4.0, https://github.com/tmkand/usgra-seg)",
        f"- cross-validation: {args.folds} contiguous blocks of the frames sorted by name (neighbouring frames come "
        "from the same scan, so frames are never split at random); each block is evaluated by the model trained on "
        "the others, with the weights at the END of its training (the checkpoint's last state after the budget "
        "below; nothing is chosen on the held-out block). Figures are the mean ± standard deviation over the folds "
        "of each fold's mean over its frames." + _weights_warning(table),
        "- evaluation: the live path's own code (card preprocessing, model, smooth full-resolution contours, "
        "regions under a 7-pixel-radius circle dropped); Dice per frame (frames where a class is absent on both "
        "sides are skipped); detection F1 by Smistad's rule (a true region is found when a predicted region "
        "overlaps it with Dice > 0.25); HD95 in pixels of the frame (a frame where the class is missed or invented "
        "counts as the frame's diagonal, about 740 px for usgra-seg, so misses weigh heavily in the mean).",
        "- false-nerve frames: every usgra-seg frame holds a nerve, so each held-out frame gives one window cut where "
        "nothing is labelled (35-60 % of the frame, resized to the input; seed 1, while training cut its windows "
        "from training frames with seed 0); the share of those windows where the model marks a nerve, and the AUC "
        "of \"a nerve is in this frame\" (highest nerve probability as the score) over held-out frames and windows. "
        "Windows are magnified parts of labelled scans, not real frames on the way to a target: a lower bound.",
        "- INT8: the float32 ONNX graph quantized as the live path does it (ONNX Runtime static QDQ, per channel), "
        f"calibrated on {INT8_CALIBRATION_FRAMES} frames of the fold's training blocks, scored on the held-out "
        "block. The change: per class, the mean over folds of Dice INT8 - Dice float32 (the change of the "
        "cross-validated Dice); `auto` runs INT8 where its largest |change| over classes is under 0.01. In brackets "
        "the mean over folds of each fold's largest |change|, a stricter figure (a ~40-frame block moves by ~0.01 "
        "either way, and it counts a fold where INT8 scored higher as a loss too). Other recipes: "
        "benchmarks/int8/int8_recipes.md.",
        f"- live path ms/frame: median of `Segmenter.segment` on a held-out frame (preprocess, model, postprocess) on "
        f"ONNX Runtime with {args.speed_threads or 1} thread(s), float32 / INT8, fold 0's weights; the 1-minute load "
        "average at the time in brackets (above the core count other processes competed for the CPU). The live "
        f"default needs <= {LIVE_MODEL_MS:g} ms here (the rest of the 25 ms p50 budget goes to transport and "
        "the scene; benchmarks/speed/live_path.md measures the whole path). torch: the same on torch (`speed.json`). "
        "30 fps: whether the backend `auto` picks (INT8 where its cross-validated Dice change is under 0.01) takes "
        "at most 33.3 ms, so that one core keeps up with a 30 fps stream while the other receives and applies."
        + _speed_provenance(table),
        f"- training budget: `train min/fold` is the wall time of one fold on {args.threads or os.cpu_count()} CPU "
        "thread(s) of this machine (no GPU), per-epoch validation included; runs that hit their time limit did "
        "fewer epochs than planned (listed below).",
        f"- machine: {machine()}; started {started}; updated {today()}",
        f"- command: `{command}`", "",
        "| model | parameters | input | epochs done / planned | train min/fold | folds | nerve Dice | vessel Dice "
        "| nerve detection F1 | nerve HD95 px | vessel HD95 px | false-nerve frames | nerve presence AUC "
        "| live path ms torch / float32 / INT8 | 30 fps | INT8 Dice change (cross-validated; per fold) |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    order = sorted(table, key=lambda m: -(table[m]["nerve_dice"]["mean"] or -1))
    for model in order:
        entry = table[model]
        folds = entry["folds"]
        epochs = (f"{min(f['epochs'] for f in folds)}-{max(f['epochs'] for f in folds)} / "
                  f"{folds[0]['epochs_planned']}") if folds else "-"
        size = "x".join(str(v) for v in folds[0]["input_size"]) if folds else "-"
        minutes = f"{np.mean([f['wall_time_s'] for f in folds]) / 60:.1f}" if folds else "-"
        live, torch_speed = entry.get("live_path_ms"), entry.get("speed")
        torch_ms = f"{torch_speed['cpu_ms_per_frame']:.0f}" if torch_speed else "-"
        live_text = (f"{torch_ms} / {live['onnx']['ms']:.1f} / {live['onnx-int8']['ms']:.1f} "
                     f"({live['load_average_1min']:.1f})" if live else f"{torch_ms} / - / -")
        auto_ms = _live_ms(entry)
        fps = "-" if auto_ms is None else ("yes" if auto_ms <= 1000.0 / 30 else "no")
        lines.append(
            f"| {model} | {entry['parameters'] / 1e6:.2f} M | {size} | {epochs} | {minutes} | {len(folds)}/{args.folds} "
            f"| {format_stat(entry['nerve_dice'])} | {format_stat(entry['vessel_dice'])} | {format_stat(entry['nerve_f1'])} | "
            f"{format_stat(entry['nerve_hd95_px'], 1)} | {format_stat(entry['vessel_hd95_px'], 1)} | "
            f"{format_stat(entry['false_nerve_frame_rate'])} | {format_stat(entry['nerve_presence_auc'])} | {live_text} | {fps} | "
            f"{_int8_text(entry)} |")
    instance = {m: e for m, e in table.items() if e["task"] == "instance" and e["folds"]}
    if instance:
        lines += ["", "COCO AP of the instance models (pycocotools, mean over folds):", "",
                  "| model | box AP50 | box AP60 | box AP70 | box AP | mask AP50 | mask AP60 | mask AP70 | mask AP |",
                  "|---|---|---|---|---|---|---|---|---|"]
        for model, entry in instance.items():
            cells = []
            for kind in ("bbox", "segm"):
                for key in ("AP50", "AP60", "AP70", "AP"):
                    cells.append(format_stat(stats([(f["coco"] or {}).get(kind, {}).get(key) for f in entry["folds"]])))
            lines.append(f"| {model} | " + " | ".join(cells) + " |")
    earlier = _earlier_rows(args, table)
    if earlier:
        lines += earlier
    choice = recommend_default(table, args.folds)
    complete = [m for m in order if len(table[m]["folds"]) == args.folds]
    best = complete[0] if complete else None
    lines += ["", "Targets of issue 12 (cross-validated): best model nerve Dice >= 0.75, vessel Dice >= 0.85, nerve "
                  "detection F1 >= 0.85; the live default within 0.03 nerve Dice of the best.", ""]
    if best:
        b = table[best]
        met = {"nerve Dice >= 0.75": b["nerve_dice"]["mean"] >= 0.75, "vessel Dice >= 0.85": (
            b["vessel_dice"]["mean"] or 0) >= 0.85, "nerve F1 >= 0.85": b["nerve_f1"]["mean"] >= 0.85}
        lines.append(f"Best cross-validated nerve Dice: **{best}** ("
                     + "; ".join(f"{k}: {'met' if v else 'not met'}" for k, v in met.items()) + ").")
    if choice:
        gap = table[best]["nerve_dice"]["mean"] - table[choice]["nerve_dice"]["mean"]
        lines.append(f"Best among the models fast enough for the live default: **{choice}** ({gap:.3f} nerve Dice "
                     f"below the best: {'within' if gap <= 0.03 else 'NOT within'} 0.03).")
    from NerveSegLogic.models import registry

    default = registry.default_name()
    if best and default in table and table[default]["nerve_dice"]["mean"] is not None:
        gap = table[best]["nerve_dice"]["mean"] - table[default]["nerve_dice"]["mean"]
        lines.append(f"The live path's default (Resources/Models): **{default}**, {gap:.3f} nerve Dice below the best; "
                     f"its live path here {_live_ms(table[default]) or float('nan'):.1f} ms per frame "
                     f"(`Segmenter.segment`; benchmarks/speed/live_path.md measures received-to-applied at 30 fps).")
        change = _int8_change(table[default])
        if change is not None and change < _int8_tolerance():
            int8_dice = table[default]["int8_nerve_dice"]["mean"]
            lines.append(f"`auto` runs it in INT8 (cross-validated Dice change {change:.4f} < {_int8_tolerance()}): "
                         f"its INT8 graphs' cross-validated nerve Dice is {int8_dice:.3f}, "
                         f"{table[best]['nerve_dice']['mean'] - int8_dice:.3f} below the best "
                         f"({'within' if table[best]['nerve_dice']['mean'] - int8_dice <= 0.03 else 'NOT within'} "
                         "0.03).")
    notes = sorted({f"{m}: {f['stop_reason']}" for m, e in table.items() for f in e["folds"]
                    if f["stop_reason"] != "finished"})
    if notes:
        lines += ["", "Runs stopped early: " + "; ".join(notes) + "."]
    float16 = {m: e["float16"] for m, e in table.items() if e.get("float16")}
    if float16:
        lines += ["", "float16 weights (final models; Dice change measured on all frames):", ""]
        for model, check in float16.items():
            changes = ", ".join(f"{k} {v:.4f}" for k, v in check["dice_change"].items())
            lines.append(f"- {model}: Dice change {changes} -> ship {'float16' if check['float16'] else 'float32'}")
    lines += ["", f"![Dice per model]({report.with_suffix('.png').name})", "",
              "Training augmentations (a frame of the data set, see augmentations.png):",
              "![augmentations](augmentations.png)", ""]
    report.write_text("\n".join(lines) + "\n", encoding="utf-8")
    from NerveSegLogic.train.evaluate import write_json

    write_json(report.with_suffix(".json"), {"command": command, "machine": machine(), "updated": today(),
                                             "data": data_name, "n_frames": n_frames, "folds": args.folds,
                                             "recommended_default": choice, "best": best, "models": table})
    plot(table, report.with_suffix(".png"))


def _earlier_rows(args, table: Dict[str, Dict]) -> List[str]:
    """Rows of ``--earlier`` (a report's JSON) for the models this run did not cross-validate, marked as such."""
    if not args.earlier:
        return []
    path = Path(args.earlier)
    old = json.loads(path.read_text(encoding="utf-8"))
    missing = [m for m, e in old["models"].items() if e["folds"] and not (table.get(m) or {}).get("folds")]
    if not missing:
        return []
    lines = ["", f"Not re-run here (the CPU time went to the models above): figures of an earlier run, "
                 f"{old['folds']} contiguous blocks, updated {old['updated'][:10]}, from `{path.name}` "
                 f"(command `{old['command']}`), torch ms on {old['command'].split('--speed-threads ')[-1][:1]} "
                 "threads; not comparable fold for fold with the table above.", "",
             "| model | parameters | input | epochs | folds | nerve Dice | vessel Dice | nerve detection F1 "
             "| nerve HD95 px | train min/fold |", "|---|---|---|---|---|---|---|---|---|---|"]
    for model in sorted(missing, key=lambda m: -(old["models"][m]["nerve_dice"]["mean"] or -1)):
        e = old["models"][model]
        folds = e["folds"]
        lines.append(f"| {model} | {e['parameters'] / 1e6:.2f} M | {'x'.join(str(v) for v in folds[0]['input_size'])} "
                     f"| {min(f['epochs'] for f in folds)}-{max(f['epochs'] for f in folds)} | {len(folds)}/"
                     f"{old['folds']} | {format_stat(e['nerve_dice'])} | {format_stat(e['vessel_dice'])} | {format_stat(e['nerve_f1'])} | "
                     f"{format_stat(e['nerve_hd95_px'], 1)} | {np.mean([f['wall_time_s'] for f in folds]) / 60:.0f} |")
    return lines


def readme_table(table: Dict[str, Dict], folds: int, earlier: Optional[str] = None) -> List[str]:
    """The README's model table: the cross-validated figures of ``table`` with each card's origin and weights;
    then the models only ``earlier`` (an earlier report's JSON) cross-validated, marked as such."""
    from NerveSegLogic.models import registry

    default = registry.default_name()
    lines = ["| model | from | parameters | input | nerve Dice | vessel Dice | nerve detection F1 | false-nerve "
             "frames | live path ms (backend) | CV training per fold | shipped weights |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    order = sorted(table, key=lambda m: -(table[m]["nerve_dice"]["mean"] or -1))
    for model in order:
        entry, card = table[model], registry.card(model)
        folds_done = entry["folds"]
        if not folds_done:
            continue
        origin = paper_origin(card)
        name = f"**{model}** (default)" if model == default else model
        auto_ms = _live_ms(entry)
        int8 = _int8_change(entry)
        backend = "-" if auto_ms is None else (
            f"{auto_ms:.1f} (INT8)" if int8 is not None and int8 < _int8_tolerance() else f"{auto_ms:.1f} (float32)")
        epochs = sorted({f["epochs"] for f in folds_done})
        minutes = np.mean([f["wall_time_s"] for f in folds_done]) / 60
        size = "x".join(str(v) for v in folds_done[0]["input_size"])
        run = (card.training or {}).get("run") or {}
        if card.has_weights:
            held = (run.get("split") or {}).get("validation_fold")
            shipped = (f"{run.get('epochs', '?')} epochs at {'x'.join(str(v) for v in run.get('input_size', []))}, "
                       f"{(card.weights or {}).get('dtype', 'float32')}"
                       + ("" if held is None else f", trained without block {held}"))
        else:
            shipped = "none"
        cell = "-" if entry["false_nerve_frame_rate"]["mean"] is None else format_stat(entry["false_nerve_frame_rate"], 2)
        lines.append(
            f"| {name} | {origin} | {entry['parameters'] / 1e6:.2f} M | {size} | {format_stat(entry['nerve_dice'], 2)} | "
            f"{format_stat(entry['vessel_dice'], 2)} | {format_stat(entry['nerve_f1'], 2)} | {cell} | {backend} | "
            f"{epochs[0] if len(epochs) == 1 else f'{epochs[0]}-{epochs[-1]}'} epochs, "
            f"{minutes:.0f} min, {len(folds_done)}/{folds} folds | {shipped} |")
    if earlier:
        old = json.loads(Path(earlier).read_text(encoding="utf-8"))
        for model, entry in sorted(old["models"].items(), key=lambda item: -(item[1]["nerve_dice"]["mean"] or -1)):
            if not entry["folds"] or (table.get(model) or {}).get("folds") or model not in registry.names(None, None):
                continue
            card = registry.card(model)
            origin = paper_origin(card)
            run = (card.training or {}).get("run") or {}
            shipped = (f"{run.get('epochs', '?')} epochs at {'x'.join(str(v) for v in run.get('input_size', []))}, "
                       f"{(card.weights or {}).get('dtype', 'float32')}") if card.has_weights else "none"
            size = "x".join(str(v) for v in entry["folds"][0]["input_size"])
            epochs = sorted({f["epochs"] for f in entry["folds"]})
            lines.append(
                f"| {model} | {origin} | {registry.parameter_count(card) / 1e6:.2f} M | {size} | "
                f"{format_stat(entry['nerve_dice'], 2)} | {format_stat(entry['vessel_dice'], 2)} | {format_stat(entry['nerve_f1'], 2)} | - | - "
                f"| {epochs[0] if len(epochs) == 1 else f'{epochs[0]}-{epochs[-1]}'} epochs, "
                f"{np.mean([f['wall_time_s'] for f in entry['folds']]) / 60:.0f} min, {len(entry['folds'])}/"
                f"{old['folds']} folds of an earlier run ({old['updated'][:10]}) | {shipped} |")
    return lines


def _int8_tolerance() -> float:
    from NerveSegLogic.models.int8 import INT8_MAX_DICE_CHANGE

    return INT8_MAX_DICE_CHANGE


def write_readme_table(table: Dict[str, Dict], folds: int, readme: Path, earlier: Optional[str] = None) -> None:
    """Replace the table between README_BEGIN and README_END in ``readme`` (both markers must be there)."""
    text = readme.read_text(encoding="utf-8")
    if README_BEGIN not in text or README_END not in text:
        raise SystemExit(f"{readme}: the model table's markers are missing; expected a line {README_BEGIN!r} "
                         f"and a line {README_END!r} around it")
    head, rest = text.split(README_BEGIN, 1)
    _, tail = rest.split(README_END, 1)
    readme.write_text(head + README_BEGIN + "\n" + "\n".join(readme_table(table, folds, earlier)) + "\n" + README_END + tail,
                      encoding="utf-8")


def plot(table: Dict[str, Dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    models = [m for m, e in table.items() if e["folds"]]
    if not models:
        return
    figure, axis = plt.subplots(figsize=(max(6, 1.3 * len(models)), 4), dpi=100)
    x = np.arange(len(models))
    for offset, key, label in ((-0.27, "nerve_dice", "nerve Dice"), (0.0, "vessel_dice", "vessel Dice"),
                               (0.27, "nerve_f1", "nerve detection F1")):
        means = [table[m][key]["mean"] or 0.0 for m in models]
        stds = [table[m][key]["std"] or 0.0 for m in models]
        axis.bar(x + offset, means, 0.27, yerr=stds, capsize=3, label=label)
    for target, style in ((0.75, ":"), (0.85, "--")):
        axis.axhline(target, color="grey", linestyle=style, linewidth=0.8)
    axis.set_xticks(x, models, rotation=20)
    axis.set_ylim(0, 1)
    axis.set_ylabel("cross-validated mean (± std over folds)")
    axis.legend(fontsize=8, loc="upper left")
    figure.tight_layout()
    figure.savefig(path)
    plt.close(figure)


def augmentation_picture(data: Path, path: Path) -> None:
    import cv2

    from NerveSegLogic.datasets.readers import open_dataset
    from NerveSegLogic.train.augment import AUGMENTATIONS, augmentation_grid
    from NerveSegLogic.train.data import to_uint8

    sample = open_dataset(data)[0]
    grid = augmentation_grid(to_uint8(sample.image), sample.mask, names=list(AUGMENTATIONS), seed=0, tile=160)
    cv2.imwrite(str(path), cv2.cvtColor(grid, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_PNG_COMPRESSION, 9])


# ---------------------------------------------------------------------------------------------------- main
def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", required=True, help="labelled data set (e.g. the usgra-seg folder)")
    parser.add_argument("--out", default="runs/comparison", help="run folders (default: %(default)s)")
    parser.add_argument("--models", default=None, help="comma-separated names (default: every registered model)")
    parser.add_argument("--folds", type=int, default=3, help="contiguous blocks, at least 3 (default: 3)")
    parser.add_argument("--epochs", type=int, default=None, help="epochs for every model (default: each recipe's)")
    parser.add_argument("--input-size", type=int, nargs=2, metavar=("H", "W"), default=None,
                        help="input size for every model (default: each card's)")
    parser.add_argument("--minutes", type=float, default=None,
                        help="training time limit per model and fold, summed over restarts (default: none)")
    parser.add_argument("--model-options", action="append", default=[], metavar="MODEL:key=v,...",
                        help="per-model epochs, input (HxW), minutes, batch, lr, augment (names joined by +); "
                             "e.g. bpmsegnet:input=320x320,epochs=12")
    parser.add_argument("--cards", type=Path, default=None,
                        help="also write each fully cross-validated model's figures into its card in this folder "
                             "(metrics.cross_validation), e.g. Resources/Models")
    parser.add_argument("--no-train", action="store_true",
                        help="train nothing: score the folds whose training ended (a card.json in the fold's "
                             "folder, e.g. from `nerveseg train --folds F --fold K --out <out>/cv/<model>/fold<K>`) "
                             "and report; folds never trained are left out")
    parser.add_argument("--no-final", action="store_true", help="skip training the final models on every frame")
    parser.add_argument("--no-float16", action="store_true", help="skip the float16 check of the final models")
    parser.add_argument("--device", default="auto", help="auto, cpu or cuda (default: %(default)s)")
    parser.add_argument("--threads", type=int, default=None, help="CPU threads (default: all cores)")
    parser.add_argument("--speed-threads", type=int, default=None,
                        help="threads for the CPU ms/frame measurement (default: --threads or all cores)")
    parser.add_argument("--speed-repeats", type=int, default=20)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--checkpoint-minutes", type=float, default=10.0)
    parser.add_argument("--report", default=str(REPO / "benchmarks" / "accuracy" / "comparison.md"),
                        help="Markdown report; .json and .png are written beside it (default: %(default)s)")
    parser.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bars")
    parser.add_argument("--readme", default=None, metavar="README.md",
                        help="also rewrite the model table between the markers in this README")
    parser.add_argument("--earlier", default=None, metavar="REPORT.json",
                        help="an earlier report's JSON: its models that this run did not cross-validate are listed "
                             "below the table, marked as earlier figures")
    parser.add_argument("--speed-again", action="store_true",
                        help="measure the live path's ms/frame of every semantic model again (fold 0's weights), "
                             "e.g. once the machine is idle; nothing is trained or scored again")
    args = parser.parse_args(argv)
    args.model_options = parse_model_options(args.model_options)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                        datefmt="%H:%M:%S")
    if args.folds < 3:
        raise SystemExit("--folds must be at least 3 (issue 4)")

    from NerveSegLogic.datasets.readers import open_dataset
    from NerveSegLogic.models import registry
    from NerveSegLogic.train.data import split_indices
    from NerveSegLogic.train.evaluate import write_json

    data, out = Path(args.data), Path(args.out)
    models = args.models.split(",") if args.models else registry.names()
    unknown = [m for m in models if m not in registry.names()]
    if unknown:
        raise SystemExit(f"unknown model(s) {unknown}; registered: {', '.join(registry.names())}")
    dataset = open_dataset(data)
    names = sorted(dataset.names())
    # The command as recorded in reports, without this machine's paths.
    command = "python benchmarks/accuracy/compare_models.py " + " ".join(
        shlex.quote({str(args.data): "DATA", str(args.out): "OUT", args.report: "REPORT"}.get(a, a))
        for a in (argv if argv is not None else sys.argv[1:]))
    started = today()
    Path(args.report).parent.mkdir(parents=True, exist_ok=True)
    augmentation_picture(data, Path(args.report).with_name("augmentations.png"))
    speed_threads = args.speed_threads or args.threads or os.cpu_count()

    def refresh():
        # The table keeps every model already run into this --out, not only the ones this command names.
        reported = [m for m in registry.names() if m in models or (out / "cv" / m).is_dir()]
        write_report(collect(reported, out, args.folds), args, command, len(names), started)

    for model in models:
        settings = settings_for(model, args)
        for fold in range(args.folds):
            run_dir = out / "cv" / model / f"fold{fold}"
            _, validation = split_indices(names, args.folds, fold)
            if (run_dir / "eval" / "metrics.json").is_file():
                if (_read(run_dir / "card.json") or {}).get("training", {}).get("run", {}).get("weights") \
                        == LAST_WEIGHTS:
                    continue
                # scored before this script took the last weights: again, from the same training run
                log.info("%s fold %d: scored with the best-on-held-out epoch; scoring the last weights", model, fold)
                _forget_scores(run_dir)
                use_last_weights(model, run_dir)
                evaluate_run(model, data, run_dir, [names[i] for i in validation], args)
                refresh()
                continue
            if args.no_train:
                if (run_dir / "card.json").is_file():
                    log.info("%s fold %d: training ended; scoring its last weights", model, fold)
                    use_last_weights(model, run_dir)
                    evaluate_run(model, data, run_dir, [names[i] for i in validation], args)
                    refresh()
                continue
            log.info("== %s, fold %d of %d", model, fold + 1, args.folds)
            start = time.perf_counter()
            result = train_run(model, data, run_dir, settings, args.folds, fold, args)
            use_last_weights(model, run_dir)
            evaluate_run(model, data, run_dir, [names[i] for i in validation], args)
            log.info("%s fold %d: %s after %d epochs (%.0f min)", model, fold, result.stop_reason,
                     result.epochs_done, (time.perf_counter() - start) / 60)
            refresh()
        first = out / "cv" / model / "fold0"
        if (first / "eval" / "metrics.json").is_file() and not (first / "speed.json").is_file():
            write_json(first / "speed.json", cpu_speed(model, first, data, speed_threads, args.speed_repeats))
            refresh()
        if registry.card(model).task == "semantic":
            for fold in range(args.folds):
                run_dir = out / "cv" / model / f"fold{fold}"
                if not (run_dir / "eval" / "metrics.json").is_file():
                    continue
                train_indices, validation = split_indices(names, args.folds, fold)
                if not (run_dir / "extras.json").is_file():
                    log.info("%s fold %d: presence, INT8 and live-path speed", model, fold)
                    write_json(run_dir / "extras.json", fold_extras(
                        model, data, run_dir, [names[i] for i in train_indices], [names[i] for i in validation],
                        threads=speed_threads))
                    refresh()
                elif args.speed_again and fold == 0:
                    extras = json.loads((run_dir / "extras.json").read_text(encoding="utf-8"))
                    extras["live_path_ms"] = live_path_speed(model, data, run_dir, [names[i] for i in validation],
                                                             speed_threads)
                    write_json(run_dir / "extras.json", extras)
                    refresh()
    if args.cards:
        update_cards(collect(models, out, args.folds), args.cards, args, len(names))
    if not args.no_final and not args.no_train:
        table = collect(models, out, args.folds)
        for model in models:
            final_dir = out / "final" / model
            if (final_dir / "done.json").is_file():
                continue
            settings = settings_for(model, args)
            log.info("== %s on every frame", model)
            train_run(model, data, final_dir, settings, 1, None, args)
            if not (final_dir / "speed.json").is_file():
                write_json(final_dir / "speed.json", cpu_speed(model, final_dir, data, speed_threads,
                                                                args.speed_repeats))
            if not args.no_float16 and not (final_dir / "float16.json").is_file():
                write_json(final_dir / "float16.json", float16_check(model, final_dir, data, args))
            annotate_final_card(final_dir, model, table.get(model, {}), args, len(names))
            write_json(final_dir / "done.json", {"finished": today()})  # later runs leave this model alone
            refresh()
    refresh()
    if args.readme:
        reported = [m for m in registry.names() if m in models or (out / "cv" / m).is_dir()]
        write_readme_table(collect(reported, out, args.folds), args.folds, Path(args.readme), args.earlier)
        print(f"model table: {args.readme}")
    print(f"report: {args.report}")
    return 0


def _speed_provenance(table: Dict[str, Dict]) -> str:
    """When the live-path ms were measured, and any row timed on another graph of the same network."""
    measured = [entry["live_path_ms"] for entry in table.values() if entry.get("live_path_ms")]
    dates = sorted(m["date"][:16].replace("T", " ") for m in measured if m.get("date"))
    text = f" Measured {dates[0]}-{dates[-1][11:]} UTC." if dates else ""
    for model, entry in table.items():
        graph = (entry.get("live_path_ms") or {}).get("graph")
        if graph:
            text += f" {model}: timed on {graph}."
    return text


def cv_metrics(entry: Dict, args, n_frames: int) -> Dict:
    """A card's ``metrics.cross_validation`` from a model's table entry."""
    weights = {f.get("weights") for f in entry["folds"]}
    return {"data": f"{Path(args.data).name}, {n_frames} frames", "folds": args.folds,
            "folds_scored": len(entry["folds"]), "split": "contiguous blocks of frames sorted by name",
            "input_size": entry["folds"][0]["input_size"], "epochs": entry["folds"][0]["epochs"],
            "weights": ("each fold's weights at the end of training (nothing chosen on its held-out block)"
                        if weights == {LAST_WEIGHTS} else "the epoch with the best Dice on the held-out block"),
            **{key: entry[key] for key in ("nerve_dice", "vessel_dice", "nerve_f1", "vessel_f1", "nerve_hd95_px",
                                           "vessel_hd95_px", "false_nerve_frame_rate", "nerve_presence_auc")
               if key in entry},
            **({"coco": {kind: {key: stats([(f["coco"] or {}).get(kind, {}).get(key) for f in entry["folds"]])
                                for key in ("AP50", "AP60", "AP70", "AP")} for kind in ("bbox", "segm")}}
               if entry["task"] == "instance" else {}),
            "source": "benchmarks/accuracy/compare_models.py (benchmarks/accuracy/comparison.md)", "updated": today()}


def update_cards(table: Dict[str, Dict], cards: Path, args, n_frames: int) -> None:
    """Write the cross-validated figures into the cards in ``cards`` of every model scored on all folds (and of an
    instance model scored on fewer, which its ``folds_scored`` says: BPMSegNet's folds take hours here)."""
    from NerveSegLogic.models.card import ModelCard
    from NerveSegLogic.train.evaluate import write_json

    for model, entry in table.items():
        path = cards / f"{model}.json"
        complete = len(entry["folds"]) == args.folds or (entry["task"] == "instance" and entry["folds"])
        if not complete or not path.is_file():
            continue
        card = json.loads(path.read_text(encoding="utf-8"))
        card["metrics"] = dict(card.get("metrics") or {}, cross_validation=cv_metrics(entry, args, n_frames))
        ModelCard.from_dict(card, path)
        write_json(path, card)
        log.info("%s: cross-validated figures written into %s", model, path)


def annotate_final_card(final_dir: Path, model: str, entry: Dict, args, n_frames: int) -> None:
    """Add the cross-validated figures, the speed and (when it passed) float16 weights to the final card."""
    from NerveSegLogic.models.card import ModelCard
    from NerveSegLogic.train.evaluate import write_json

    card = json.loads((final_dir / "card.json").read_text(encoding="utf-8"))
    if entry.get("folds"):
        card["metrics"] = dict(card.get("metrics") or {}, cross_validation=cv_metrics(entry, args, n_frames))
    speed = json.loads((final_dir / "speed.json").read_text()) if (final_dir / "speed.json").is_file() else None
    if speed:
        card["speed"] = dict(card.get("speed") or {}, **speed)
    check = json.loads((final_dir / "float16.json").read_text()) if (final_dir / "float16.json").is_file() else None
    if check and check["float16"] is True:
        half = final_dir / "float16" / f"{model}.safetensors"
        os.replace(half, final_dir / f"{model}.safetensors")
        card["weights"] = {"file": f"{model}.safetensors", "sha256": check["float16_sha256"], "dtype": "float16"}
        check["float16"] = "shipped"
        write_json(final_dir / "float16.json", check)
    elif check and check["float16"] == "shipped":
        card["weights"] = {"file": f"{model}.safetensors", "sha256": check["float16_sha256"], "dtype": "float16"}
    ModelCard.from_dict(card)
    write_json(final_dir / "card.json", card)


if __name__ == "__main__":
    sys.exit(main())
