"""Held-out evaluation of a training run, through the live path, and (optionally) shipping its weights.

Takes a ``nerveseg train`` output folder trained with ``--folds F --fold K`` and scores the weights on block K, the
frames that run never trained on (the script checks the block's names against the run's checkpoint):

- nerve / vessel Dice, HD95 (pixels) and detection F1 with the project's evaluator (:mod:`NerveSegLogic.train.evaluate`,
  each frame segmented by :class:`~NerveSegLogic.inference.segmenter.Segmenter` on ONNX Runtime, as live);
- frames without a nerve: windows of the held-out frames that hold no labelled structure
  (:mod:`NerveSegLogic.train.negatives`, same rule as training, other seed): the share in which the model marks a
  nerve (false-positive nerve-frame rate), and the AUC of "a nerve is in this frame" scored by the largest nerve
  probability, held-out frames with a nerve against those windows.

``--weights last`` (default) takes the last epoch from the checkpoint: no choice was made on the held-out block.
``--weights best`` takes the run's ``<model>.safetensors`` (the epoch with the best Dice on that same block: an
optimistic number, reported as such). ``--ship`` writes the weights as float16 safetensors next to the card in
Resources/Models, evaluates the shipped file through ``Segmenter.from_name`` (what the live path loads) and stores the
numbers, the run and the data credit in the card.

    .venv/bin/python benchmarks/accuracy/eval_heldout.py --run runs/effnet-unet-fold4 --data ../shared/data/usgra-seg \\
        --report benchmarks/accuracy/effnet_unet_heldout.json --ship
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import platform
import sys
import tempfile
from pathlib import Path
from typing import Dict

REPO = Path(__file__).resolve().parents[2]

from NerveSegLogic.train.crossval import held_out_store, load_run, portable, score_held_out  # noqa: E402


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", type=Path, required=True, help="nerveseg train output folder")
    parser.add_argument("--data", type=Path, required=True, help="the data set the run was trained on")
    parser.add_argument("--weights", choices=("last", "best"), default="last")
    parser.add_argument("--threads", type=int, default=2, help="ONNX Runtime threads (default 2)")
    parser.add_argument("--seed", type=int, default=1, help="seed of the negative windows (training used 0)")
    parser.add_argument("--negatives-rate", type=float, default=1.0, help="windows per held-out frame (default 1)")
    parser.add_argument("--report", type=Path, default=None, help="JSON file for the results")
    parser.add_argument("--ship", action="store_true", help="write float16 weights and the card to Resources/Models")
    args = parser.parse_args(argv)

    import torch

    torch.set_num_threads(args.threads)
    from NerveSegLogic.inference.backends import OnnxBackend
    from NerveSegLogic.inference.segmenter import Segmenter
    from NerveSegLogic.models import registry

    card, model, record = load_run(args.run, args.weights)
    setup = record["setup"]
    store = held_out_store(args.data, card, int(setup["folds"]), int(setup["fold"] if setup["fold"] is not None
                                                                       else setup["folds"] - 1), setup["val_names"])
    if args.ship:
        card = ship(card, model, record, args)
        segmenter = Segmenter.from_name(card.name, backend="onnx", threads=args.threads)
    else:
        with tempfile.TemporaryDirectory() as tmp:
            path = registry.export_onnx(model, Path(tmp) / "model.onnx", card=card)
            segmenter = Segmenter(card, OnnxBackend(path, threads=args.threads))
    results = score_held_out(segmenter, store, args.seed, args.negatives_rate)
    out = {
        "date": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": f"{platform.machine()}, {os.cpu_count()} logical CPUs; torch {torch.__version__}",
        "load_average": " ".join(f"{v:.2f}" for v in os.getloadavg()),
        "command": "python benchmarks/accuracy/eval_heldout.py "
                   + " ".join(portable(argv if argv is not None else sys.argv[1:])),
        "data": args.data.name, "model": card.name,
        "weights": args.weights + (" (shipped float16)" if args.ship else " (float32)"),
        "run_epochs": record["epoch"], "run_steps": record["global_step"], "run_training_s": record["elapsed_s"],
        "held_out_block": {"folds": setup["folds"], "fold": setup["fold"], "first_last": [store.frames[0].name,
                                                                                          store.frames[-1].name]},
        "train_frames": len(setup["train_names"]), "held_out": results,
    }
    print(json.dumps(out, indent=2))
    if args.report:
        args.report.write_text(json.dumps(out, indent=2) + "\n")
    if args.ship:
        write_metrics(card, out)
    return 0


def ship(card, model, record, args):
    """Float16 weights next to the card and the card's weights/training blocks; returns the registered card."""
    from NerveSegLogic.models import registry
    from NerveSegLogic.models.card import write_card

    registered = registry.card(card.name)
    weights = registered.path.parent / f"{card.name}.safetensors"
    sha256 = registry.save_weights(model, weights, dtype="float16")
    setup = record["setup"]
    data = registered.to_json()
    data["input"] = dict(data["input"], size=list(setup["input_size"]))
    data["weights"] = {"file": weights.name, "sha256": sha256, "dtype": "float16"}
    training = dict(data["training"])
    run_card = args.run / "card.json"
    run = json.loads(run_card.read_text()) if run_card.is_file() else {}
    training["recipe"] = setup["recipe"]
    training["data"] = (f"{args.data.name} (see its ATTRIBUTION.md for credit and license): "
                        f"{len(setup['train_names'])} frames {setup['train_names'][0]}..{setup['train_names'][-1]} "
                        "for training, block "
                        f"{setup['fold']} of {setup['folds']} contiguous blocks ({len(setup['val_names'])} frames "
                        f"{setup['val_names'][0]}..{setup['val_names'][-1]}) held out; classes 1=nerve, "
                        "2=blood_vessel")
    notes = [n for n in run.get("training", {}).get("notes", training.get("notes", []))
             if not n.startswith("Weights of the epoch")]
    notes.append(f"Weights of the {'last epoch' if args.weights == 'last' else 'best held-out epoch'} "
                 f"({record['epoch']}) of a run of {record['elapsed_s'] / 60:.0f} minutes of training on one CPU "
                 "thread (per-epoch validation included); "
                 + ("no choice was made on the held-out block." if args.weights == "last"
                    else "chosen on the held-out block (optimistic)."))
    training["notes"] = notes
    if run.get("training", {}).get("run"):
        training["run"] = run["training"]["run"]
    data["training"] = training
    write_card(data, registered.path)
    return registry.card(card.name)


def write_metrics(card, out: Dict) -> None:
    from NerveSegLogic.models.card import write_card

    data = card.to_json()
    held = out["held_out"]
    data["metrics"] = {"held_out": {
        "data": f"{out['data']}, {held['frames']} frames never trained on (block {out['held_out_block']['fold']} "
                f"of {out['held_out_block']['folds']} contiguous blocks: {out['held_out_block']['first_last'][0]}.."
                f"{out['held_out_block']['first_last'][1]})",
        "weights": out["weights"], "input_size": data["input"]["size"], "epochs": out["run_epochs"],
        "training_minutes_one_thread": round(out["run_training_s"] / 60.0, 1),
        **{k: held[k] for k in ("nerve_dice", "vessel_dice", "nerve_f1", "vessel_f1", "nerve_hd95_px",
                                "vessel_hd95_px")},
        "negative_frames": held["negative_frames"], "false_nerve_frame_rate": held["false_nerve_frame_rate"],
        "nerve_presence_auc": held["nerve_presence_auc"],
        "command": out["command"], "measured_utc": out["date"],
    }}
    write_card(data, card.path)


if __name__ == "__main__":
    sys.exit(main())
