#!/usr/bin/env python3
"""BPMSegNet with its paper's full recipe on a GPU, in resumable slices that each fit one 10-minute device call
(issue 29).

The paper's recipe, as the card states it (Resources/Models/bpmsegnet.json; checked before anything runs): SGD
momentum 0.9, weight decay 1e-4, learning rate 0.01 divided by 10 every 10 epochs, 640x640 input, the card's
classes (usgra-seg's nerve and blood vessel), batch 2 and 30 epochs (the card's choices: the paper does not give
them). Training is ``nerveseg train``'s own loop (NerveSegLogic.train.loop): its checkpoints in --out, its
``--limit-minutes`` (training time summed over the runs of one --out) set to the time already spent plus
--slice-minutes, so the same command run again resumes where the last one stopped, with the same data order and
augmentation as one uninterrupted run. Validation (the trainer's per-epoch Dice) and the held-out block are block
--fold of --folds contiguous blocks (default: the last of 5, 40 frames, never trained on).

After every slice:
  <out>/bpmsegnet.safetensors   the model at the end of the slice (the last state, not the epoch that scored best
                                on the held-out block: benchmarks/accuracy/compare_models.py's use_last_weights), float32
  <out>/mask_ap.json            COCO mask and box AP (AP50, AP60, AP70, AP over IoU 0.50:0.95) of those weights on
                                the held-out block, segmented through the live path (train/evaluate.py, pycocotools),
                                with the epochs done, steps and training time
  <out>/card.json               the trainer's card with the held-out figures as its metrics and notes saying how far
                                the recipe got
and, with --export DIR (the device's $OUT: at most 8 files of 16 MiB each come back), progress.json (mask_ap.json
with the learning curve's numbers), the run's card, learning_curve.png and, once every epoch is done (or with
--export-weights), the weights in float16 cut into parts under 16 MiB with bpmsegnet.json, the card to ship
(float16 sha256 of the joined parts): ``cat bpmsegnet.safetensors.part* > bpmsegnet.safetensors``.

On a GPU machine lent to the project (one call, then the same command again while the machine is warm: --out
lives under runs/, which git ignores and the device keeps between calls). The device gets the repository only, so
the data, pycocotools and MONAI (neither is in its image) travel as ignored folders named in ``carry``:

    mkdir -p runs && cp -r ../shared/data/usgra-seg runs/usgra-seg
    .venv/bin/python -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \\
        --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \\
        -d .whl pycocotools==2.0.11 monai==1.6.1     # the detection heads' box coder is MONAI's
    run(carry=["runs/usgra-seg", ".whl"], timeout_s=600, command=
        "python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site"
        " .whl/*.whl && export PYTHONPATH=/tmp/site:$PWD || exit;"   # $PWD: the package, not installed there
        " PYTHONUNBUFFERED=1 python3 benchmarks/accuracy/train_bpmsegnet_gpu.py --data runs/usgra-seg"
        " --out runs/bpmsegnet-gpu --slice-minutes 7.5 --export $OUT")

Its two-step CPU test (Testing/test_bpmsegnet_gpu_script.py) runs it with --device cpu on tiny frames.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # CPU runs share the machine (benchmarks/accuracy/compare_models.py)

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]

MODEL = "bpmsegnet"
#: What the paper states (Ding et al.); the card's recipe must say the same, or nothing runs.
PAPER_RECIPE = {"optimizer": {"name": "sgd", "lr": 0.01, "momentum": 0.9, "weight_decay": 1e-4},
                "schedule": {"name": "step", "step_epochs": 10, "gamma": 0.1}, "input": [640, 640]}
#: Notes of the card that describe its earlier CPU run and why it ships without weights: a GPU run's card drops them.
SUPERSEDED_NOTES = ("Trained once here (", "Ships without weights")
#: The device returns files up to 16 MiB: weights are cut into parts below that.
PART_BYTES = 15 * 1024 * 1024
GPU_NOTE = "Trained on a GPU with benchmarks/accuracy/train_bpmsegnet_gpu.py"


def check_recipe(card) -> None:
    """Refuse to run when the card's recipe is not the paper's (a changed card would silently train another)."""
    recipe = card.training["recipe"]
    optimizer = {k: recipe["optimizer"].get(k) for k in PAPER_RECIPE["optimizer"]}
    schedule = {k: recipe.get("schedule", {}).get(k) for k in PAPER_RECIPE["schedule"]}
    found = {"optimizer": optimizer, "schedule": schedule, "input": [card.input.height, card.input.width]}
    if found != PAPER_RECIPE:
        raise SystemExit(f"{card.path}: the card's recipe {found} is not the paper's {PAPER_RECIPE}; "
                         "fix the card before training")


def spent_minutes(out: Path) -> float:
    """Training minutes already spent on this --out (the checkpoint's elapsed_s), 0 without a checkpoint."""
    record = out / "checkpoint.json"
    if not record.is_file():
        return 0.0
    return float(json.loads(record.read_text(encoding="utf-8")).get("elapsed_s", 0.0)) / 60.0


def parse_build(items):
    """``["fpn_channels=32", "anchor_sizes=[8,16,32,64,128]"]`` -> {"fpn_channels": 32, ...} (values are JSON)."""
    build = {}
    for item in items or []:
        key, _, value = item.partition("=")
        try:
            build[key.strip()] = json.loads(value)
        except ValueError:
            raise SystemExit(f"--build {item!r}: the value must be JSON (e.g. fpn_channels=32)") from None
    return build


def held_out_record(summary, card_json, record, data: Path) -> dict:
    run = card_json["training"]["run"]
    split = run["split"]
    return {
        "data": Path(data).name,
        "frames": summary["n_images"],
        "block": split["validation_fold"], "folds": split["folds"],
        "first_last": split["validation_first_last"],
        "weights": "end of training (the last state; nothing chosen on the held-out block)",
        "epochs_done": record["epoch"], "epochs": run["epochs_planned"],
        "steps_into_next_epoch": record.get("position", 0), "global_step": record["global_step"],
        "training_minutes": round(float(record["elapsed_s"]) / 60.0, 2),
        "input_size": run["input_size"], "device": run["device"],
        "coco": summary["coco"],
        "dice": {k: summary["per_class"][k]["dice"] for k in summary["classes"]},
        "scored_with": "NerveSegLogic/train/evaluate.py through the live path; COCO AP by "
                       "metrics.coco_average_precision (pycocotools)",
        "updated": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }


def annotate_card(card_path: Path, held_out: dict, slices: int) -> dict:
    """The run's card with the held-out figures as its metrics and a note on how far the recipe got."""
    from NerveSegLogic.models.card import ModelCard
    from NerveSegLogic.train.evaluate import json_ready, write_json

    card = json.loads(card_path.read_text(encoding="utf-8"))
    complete = held_out["epochs_done"] >= held_out["epochs"]
    segm, bbox = held_out["coco"]["segm"], held_out["coco"]["bbox"]
    note = (f"{GPU_NOTE} ({held_out['device']}): the paper's recipe (SGD momentum 0.9, weight decay 1e-4, lr 0.01 "
            f"/10 every 10 epochs) at {held_out['input_size'][0]}x{held_out['input_size'][1]}, "
            f"{held_out['epochs_done']} of {held_out['epochs']} epochs ({held_out['global_step']} steps, "
            f"{held_out['training_minutes']:.1f} training minutes in {slices} slice(s))"
            + ("" if complete else ", NOT complete")
            + f"; scored on block {held_out['block']} of {held_out['folds']} ({held_out['frames']} frames, never "
            f"trained on) with the last weights: COCO mask AP50 {segm['AP50']:.3f}, mask AP {segm['AP']:.3f}, box "
            f"AP50 {bbox['AP50']:.3f}.")
    notes = [n for n in card["training"].get("notes", []) if not n.startswith(SUPERSEDED_NOTES + (GPU_NOTE,))]
    card["training"]["notes"] = notes + [note]
    card["training"]["run"]["slices"] = slices
    # what was measured on the earlier CPU weights (192x192, 4 epochs) does not describe these
    card["metrics"] = json_ready({"held_out": held_out})
    ModelCard.from_dict(card)  # validate before writing
    write_json(card_path, card)
    return card


def export(out: Path, dest: Path, progress: dict, card: dict, with_weights: bool) -> list:
    """Copy what comes back from the device into ``dest`` (at most 7 files, each under 16 MiB)."""
    from NerveSegLogic.models import registry
    from NerveSegLogic.models.card import ModelCard
    from NerveSegLogic.train.evaluate import write_json

    dest.mkdir(parents=True, exist_ok=True)
    written = []
    write_json(dest / "progress.json", progress)
    written.append("progress.json")
    shutil.copyfile(out / "card.json", dest / "card.json")
    written.append("card.json")
    if (out / "learning_curve.png").is_file():
        shutil.copyfile(out / "learning_curve.png", dest / "learning_curve.png")
        written.append("learning_curve.png")
    if not with_weights:
        return written
    trained = ModelCard.from_dict(card)  # the run folder's name is not the model's: validate the content only
    module = registry.load_from_card(trained, weights_path=out / f"{MODEL}.safetensors",
                                     sha256=card["weights"]["sha256"])
    half = out / f"{MODEL}.float16.safetensors"
    sha256 = registry.save_weights(module, half, dtype="float16")
    data = half.read_bytes()
    for index in range(math.ceil(len(data) / PART_BYTES)):
        name = f"{MODEL}.safetensors.part{index:02d}"
        (dest / name).write_bytes(data[index * PART_BYTES:(index + 1) * PART_BYTES])
        written.append(name)
    shipped = dict(card, weights={"file": f"{MODEL}.safetensors", "sha256": sha256, "dtype": "float16",
                                  "size": len(data)})
    ModelCard.from_dict(shipped)
    write_json(dest / f"{MODEL}.json", shipped)
    written.append(f"{MODEL}.json")
    return written


def main(argv=None) -> int:
    from NerveSegLogic.commands.train import add_data_arguments

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_data_arguments(parser)
    parser.add_argument("--out", default="runs/bpmsegnet-gpu", help="run folder, resumed (default: %(default)s)")
    parser.add_argument("--slice-minutes", type=float, default=7.5,
                        help="training minutes in this call (default: %(default)s, for a 10-minute device call)")
    parser.add_argument("--device", default="cuda",
                        help="cuda (default), or cpu for the CPU test; no silent fall-back to the CPU")
    parser.add_argument("--epochs", type=int, default=None, help="default: the card's 30")
    parser.add_argument("--folds", type=int, default=5, help="contiguous blocks (default: %(default)s)")
    parser.add_argument("--fold", type=int, default=None, help="held-out block (default: the last)")
    parser.add_argument("--input-size", type=int, nargs=2, metavar=("H", "W"), default=None,
                        help="default: the paper's 640 640 (smaller only for the CPU test)")
    parser.add_argument("--build", action="append", default=[], metavar="KEY=JSON",
                        help="override the card's build arguments (the CPU test's tiny FPN); recorded in the card")
    parser.add_argument("--limit-images", type=int, default=None, help="only the first N frames (tests)")
    parser.add_argument("--threads", type=int, default=None, help="CPU threads (--device cpu)")
    parser.add_argument("--export", default=None, metavar="DIR",
                        help="copy progress, card, curve (and weights once complete) here, e.g. the device's $OUT")
    parser.add_argument("--export-weights", action="store_true",
                        help="export the float16 weights even before every epoch is done")
    args = parser.parse_args(argv)

    import torch

    from NerveSegLogic.models import registry
    from NerveSegLogic.train.checkpoints import read_checkpoint
    from NerveSegLogic.train.loop import TrainOptions, train
    from NerveSegLogic.train.evaluate_weights import evaluate_data_set

    if args.device.startswith("cuda") and not torch.cuda.is_available():
        print(f"train_bpmsegnet_gpu: --device {args.device} but torch {torch.__version__} sees no GPU; this script "
              "is for a lent GPU machine (--device cpu only for its test)", file=sys.stderr)
        return 2
    card = registry.card(MODEL)
    check_recipe(card)
    out = Path(args.out)
    before = spent_minutes(out)
    options = TrainOptions(
        model=MODEL, data=Path(args.data), out=out, epochs=args.epochs, device=args.device,
        input_size=tuple(args.input_size) if args.input_size else None, folds=args.folds, fold=args.fold, seed=0,
        limit_minutes=before + args.slice_minutes, data_format=args.data_format, mapping=args.mapping,
        limit_images=args.limit_images, threads=args.threads, progress=False, checkpoint_minutes=2.0,
        build_overrides=parse_build(args.build))
    started = time.perf_counter()
    result = train(options)
    print(f"train_bpmsegnet_gpu: {result.stop_reason}; {result.epochs_done} epochs, step {result.global_step}, "
          f"{spent_minutes(out):.2f} training minutes in all ({time.perf_counter() - started:.0f} s this call)",
          flush=True)

    if read_checkpoint(out) is None:
        print("train_bpmsegnet_gpu: no step was trained in this slice (is --slice-minutes too short?)",
              file=sys.stderr)
        return 1
    from NerveSegLogic.train.crossval import use_last_weights  # the held-out block must not choose the weights it scores

    use_last_weights(MODEL, out)
    record, _ = read_checkpoint(out)
    card_json = json.loads((out / "card.json").read_text(encoding="utf-8"))
    held_out_names = card_json["training"]["run"]["frames"]["held_out"]
    summary, _ = evaluate_data_set(MODEL, Path(args.data), out / "eval", weights=out / f"{MODEL}.safetensors",
                                   device=args.device, data_format=args.data_format, mapping=args.mapping,
                                   pictures=2, progress=False, threads=args.threads, names=held_out_names,
                                   command="benchmarks/accuracy/train_bpmsegnet_gpu.py (held-out block)")
    held_out = held_out_record(summary, card_json, record, Path(args.data))
    previous = out / "mask_ap.json"
    slices = 1 + (int(json.loads(previous.read_text(encoding="utf-8")).get("slices", 0)) if previous.is_file() else 0)
    card_json = annotate_card(out / "card.json", held_out, slices)
    complete = held_out["epochs_done"] >= held_out["epochs"]
    from NerveSegLogic.train.evaluate import write_json

    progress = dict(held_out, complete=complete, slices=slices, stop_reason=result.stop_reason,
                    history=[{k: h.get(k) for k in ("epoch", "train_loss", "lr", "seconds", "step")}
                             | {"val_mean_dice": (h.get("val") or {}).get("mean_dice")} for h in record["history"]])
    write_json(previous, progress)
    segm = held_out["coco"]["segm"]
    print(f"train_bpmsegnet_gpu: {'COMPLETE' if complete else 'not complete, run the same command again'}: "
          f"epoch {held_out['epochs_done']}/{held_out['epochs']}, held-out mask AP50 {segm['AP50']:.3f}, "
          f"mask AP {segm['AP']:.3f} ({held_out['frames']} frames); {previous}", flush=True)
    if args.export:
        written = export(out, Path(args.export), progress, card_json, complete or args.export_weights)
        print(f"train_bpmsegnet_gpu: exported {', '.join(written)} to {args.export}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
