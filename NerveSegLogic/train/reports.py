"""What a training run reports: the learning curve (``learning_curve.png``: train loss and validation Dice per
epoch) and, at the end, its card (``card.json``: the model card with the weights file and sha256, the recipe and
input size used, the data, the init, epochs, steps, threads, device, wall time, and notes on what differed from the
card's recipe).
"""

from __future__ import annotations

import copy
import math
import os
import platform
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, List, Mapping, Sequence

from ..models.card import ModelCard
from . import data as td
from .evaluate import json_ready, write_json
from .site import site_recipe

#: How the notes a training run writes into its card begin (see run_notes); a later run drops them from the
#: card it starts from and writes its own.
RUN_NOTE_PREFIXES = ("Trained on CPU", "Trained for ", "Input ", "batch_size ", "augmentations ", "learning rate ",
                     "Balanced (1:1", "The recipe's test-time", "Trained on every frame", "Weights of the epoch",
                     "Negative frames: ", "Pretrained encoder (", "Distilled from ", "Fine-tuned from ", "Frozen ",
                     "Partial labels: ", "Batch size ", "Distributed ")


def plot_learning_curve(history: Sequence[Mapping[str, Any]], path: Path, title: str) -> None:
    """PNG of train loss (left axis) and validation Dice per class and mean (right axis) per epoch."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    epochs = [h["epoch"] for h in history]
    figure, loss_axis = plt.subplots(figsize=(8, 4.5), dpi=100)
    loss_axis.plot(epochs, [h["train_loss"] for h in history], color="tab:blue", marker=".", label="train loss")
    loss_axis.set_xlabel("epoch")
    loss_axis.set_ylabel("train loss", color="tab:blue")
    if any(h.get("val") for h in history):
        dice_axis = loss_axis.twinx()
        keys = sorted({k for h in history for k in (h.get("val") or {}).get("dice", {})})
        for key, color in zip(keys, ("tab:orange", "tab:red", "tab:purple", "tab:brown")):
            dice_axis.plot(epochs, [(h.get("val") or {}).get("dice", {}).get(key, math.nan) for h in history],
                           color=color, marker=".", label=f"val Dice {key}")
        dice_axis.plot(epochs, [(h.get("val") or {}).get("mean_dice", math.nan) for h in history], color="tab:green",
                       marker="o", label="val Dice mean")
        dice_axis.set_ylabel("validation Dice")
        dice_axis.set_ylim(0, 1)
    handles = [h for axis in figure.axes for h in axis.get_legend_handles_labels()[0]]
    labels = [label for axis in figure.axes for label in axis.get_legend_handles_labels()[1]]
    loss_axis.set_title(title, fontsize=10)
    figure.tight_layout(rect=(0, 0.1, 1, 1))
    figure.legend(handles, labels, loc="lower center", ncol=len(labels), fontsize=8, frameon=False)
    temporary = path.with_name(f".{path.name}.tmp.png")
    figure.savefig(temporary)
    plt.close(figure)
    os.replace(temporary, path)


def run_notes(trainer, stop_reason: str) -> List[str]:
    """What the run of ``trainer`` (a :class:`.loop.Trainer`) did differently from the card's recipe; every note
    starts with one of RUN_NOTE_PREFIXES."""
    paper_recipe = trainer.base_card.training["recipe"]
    if trainer.init is not None:  # the reference is the site recipe: say what differs from it
        paper_recipe = site_recipe(paper_recipe, trainer.options.site)
    notes = []
    if trainer.init is not None:
        init = trainer.init
        notes.append(f"Fine-tuned from {init.model} ({init.kind} {init.weights}, sha256 {init.sha256[:12]}) with "
                     f"the site recipe: {trainer.recipe['epochs']} epochs at learning rate "
                     f"{trainer.recipe['optimizer']['lr']:g} ({trainer.recipe['schedule'].get('name')}); the weights "
                     "of the init replace random and ImageNet initialisation.")
    if trainer.dist.distributed:
        notes.append(f"Distributed over {trainer.dist.world_size} processes (torchrun, {trainer.dist.backend}): "
                     f"global batch {trainer.batch_size} = {trainer.dist.world_size} x {trainer.per_rank_batch} per "
                     "process, the recipe's loss on the gathered global batch, gradients averaged by "
                     "DistributedDataParallel; batch norm " + (trainer.sync_batchnorm or "not in training") + ".")
    if trainer.device == "cpu":
        notes.append(f"Trained on CPU ({platform.processor() or platform.machine()}, {os.cpu_count()} cores), "
                     "not on the GPU the paper used.")
    if trainer.epoch < int(paper_recipe["epochs"]):
        why = ("chosen with --epochs" if stop_reason == "finished"
               else f"stopped at the {stop_reason}" if stop_reason.startswith("time limit") else stop_reason)
        notes.append(f"Trained for {trainer.epoch} epochs, fewer than the recipe's {paper_recipe['epochs']} "
                     f"({why}).")
    if trainer.frozen:
        parts = []
        if "encoder_tensors" in trainer.frozen:
            parts.append(f"the encoder ({trainer.frozen['encoder_tensors']} parameter tensors not trained)")
        if "norm_layers" in trainer.frozen:
            parts.append(f"normalisation ({trainer.frozen['norm_layers']} batch-norm layers in eval mode with the "
                         "init's statistics, their scale and shift not trained)")
        notes.append("Frozen: " + " and ".join(parts) + ".")
    if trainer.batch_size < int(trainer.recipe["batch_size"]):
        notes.append(f"Batch size {trainer.batch_size}: the recipe's {trainer.recipe['batch_size']} is more than the "
                     f"{len(trainer.store)} training frames.")
    if trainer.partial or (trainer.val_store is not None and trainer.val_store.partial):
        notes.append(f"Partial labels: {trainer.labelled_summary()}. A class a frame does not label is left out of "
                     "its loss (its probability counts as 'not the labelled classes'), never taught as "
                     "background; validation scores each frame on the classes it labels.")
    if (trainer.spec.height, trainer.spec.width) != (trainer.base_card.input.height, trainer.base_card.input.width):
        base = trainer.base_card.input
        smaller = trainer.spec.height * trainer.spec.width < base.height * base.width
        notes.append(f"Input {trainer.spec.height}x{trainer.spec.width} instead of the card's "
                     f"{base.height}x{base.width}" + (" (smaller, for CPU training)" if smaller else " (larger)")
                     + "; the live path feeds this size.")
    which = "the site recipe's" if trainer.init is not None else "the recipe's"
    for key in ("batch_size", "augmentations"):
        if trainer.recipe.get(key) != paper_recipe.get(key):
            notes.append(f"{key} {trainer.recipe.get(key)} instead of {which} {paper_recipe.get(key)}.")
    if trainer.recipe["optimizer"]["lr"] != paper_recipe["optimizer"]["lr"]:
        notes.append(f"learning rate {trainer.recipe['optimizer']['lr']} instead of {which} "
                     f"{paper_recipe['optimizer']['lr']}.")
    if trainer.recipe.get("sampling") == "balanced" and all(td.has_foreground(f) for f in trainer.store.frames):
        notes.append("Balanced (1:1 positive/negative) sampling had no negative frames to draw (every training "
                     "frame shows a structure), so it was uniform.")
    if trainer.negatives:
        notes.append(f"Negative frames: {trainer.negatives} windows of training frames with no labelled structure "
                     f"(label 0 everywhere) added to the {len(trainer.train_names)} training frames.")
    if trainer.pretrained:
        notes.append(f"Pretrained encoder ({trainer.pretrained['source']}): missing keys "
                     f"{trainer.pretrained['missing'] or 'none'}, unexpected keys "
                     f"{trainer.pretrained['unexpected'] or 'none'}.")
    if trainer.teachers:
        names = ", ".join(f"{t.model_name} {t.weights.parent.name}/{t.weights.name} ({t.sha256[:12]})"
                          for t in trainer.teachers)
        notes.append(f"Distilled from {len(trainer.teachers)} teacher(s), their mean probabilities as soft targets: "
                     f"{names}; loss = {1 - trainer.options.distill_weight:g} x the recipe's loss + "
                     f"{trainer.options.distill_weight:g} x T^2 KL at T = {trainer.options.distill_temperature:g}.")
    if trainer.recipe.get("tta"):
        notes.append("The recipe's test-time augmentation is not applied: validation, evaluation and the live "
                     "path segment each frame once.")
    if trainer.val_store is None:
        notes.append("Trained on every frame (no validation); the weights are the last epoch's.")
    else:
        notes.append(f"Weights of the epoch with the best validation mean Dice (epoch {trainer.best['epoch']}).")
    return notes


def write_run_card(trainer, stop_reason: str) -> Path:
    """``<out>/card.json``: the card with the weights, recipe, input, data and notes of the run of ``trainer`` (a
    :class:`.loop.Trainer`)."""
    import torch

    data = trainer.card.to_json()
    if trainer.init is not None:
        # What was measured on the base model's weights (its cross-validated figures, its speed, its INT8 check,
        # its presence calibration) does not describe these: dropped, so that a site model is never run as
        # INT8 or drawn with thresholds on the base model's evidence. ``nerveseg calibrate`` fits its own.
        for measured in ("metrics", "speed", "int8", "presence"):
            data.pop(measured, None)
    data["build"] = dict(data["build"], **copy.deepcopy(trainer.options.build_overrides))
    data["weights"] = {"file": f"{trainer.card.name}.safetensors", "sha256": trainer.best["sha256"],
                       "dtype": "float32"}
    training = dict(data.get("training", {}))
    dataset = trainer.dataset
    training["data"] = (f"{Path(getattr(dataset, 'root', trainer.options.data or '.')).name}: "
                        f"{len(trainer.train_names)} frames for training"
                        + (f", {len(trainer.val_names)} for validation" if trainer.val_names else "")
                        + f" ({getattr(dataset, 'format', 'data set')}; classes "
                        + ", ".join(f"{c.label}={c.key}" for c in trainer.card.classes) + ")")
    training["recipe"] = copy.deepcopy(trainer.recipe)
    if trainer.init is not None:
        training["init"] = trainer.init.record()
    else:
        training.pop("init", None)  # a base card that was itself fine-tuned: that was another run's start
    training["data_fingerprint"] = trainer.data_fingerprint
    training["labelled_classes"] = trainer.labelled_record()
    # The base card may be a shipped one, whose notes already describe the run that made its weights: keep the
    # notes about the model and its paper, replace those about a run with this run's.
    kept = [note for note in training.get("notes", []) if not note.startswith(RUN_NOTE_PREFIXES)]
    training["notes"] = kept + run_notes(trainer, stop_reason)
    training["run"] = json_ready({
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "device": trainer.device if trainer.device != "cpu" else f"cpu ({os.cpu_count()} cores)",
        "torch": torch.__version__,
        "wall_time_s": round(trainer.elapsed, 1),
        "epochs": trainer.epoch, "epochs_planned": int(trainer.recipe["epochs"]), "steps": trainer.global_step,
        "stop_reason": stop_reason,
        "input_size": [trainer.spec.height, trainer.spec.width],
        "seed": trainer.options.seed,
        "split": {"kind": trainer.split_kind, "folds": trainer.options.folds,
                  "validation_fold": (trainer.options.folds - 1 if trainer.options.fold is None
                                      else trainer.options.fold) if trainer.val_names else None,
                  "train_first_last": [trainer.train_names[0], trainer.train_names[-1]],
                  "validation_first_last": ([trainer.val_names[0], trainer.val_names[-1]] if trainer.val_names
                                            else None)},
        "frames": {"train": trainer.train_names, "held_out": trainer.val_names},
        "budget": {"epochs": trainer.epoch, "steps": trainer.global_step, "wall_time_s": round(trainer.elapsed, 1),
                   "threads": torch.get_num_threads() if trainer.device == "cpu" else None,
                   "batch_size": trainer.batch_size, "frames": len(trainer.train_names)},
        "best_epoch": trainer.best.get("epoch"),
        "validation": trainer.best.get("val"),
        "validation_data": (
            f"held-out frames of this run's own data ({len(trainer.val_names)} frames, {trainer.split_kind}, block "
            f"{trainer.options.folds - 1 if trainer.options.fold is None else trainer.options.fold} of "
            f"{trainer.options.folds}), never trained on; the weights are those of the epoch that scored best on "
            "them" if trainer.val_names else None),
        **({"distillation": trainer.distillation_record()} if trainer.teachers else {}),
        "world_size": trainer.dist.world_size,
        **({"distributed": dict(trainer.dist.record(trainer.per_rank_batch, trainer.sync_batchnorm),
                                sessions=trainer.sessions)} if trainer.dist.distributed or len(trainer.sessions) > 1
           else {}),
    })
    data["training"] = training
    ModelCard.from_dict(data)  # validate before writing
    path = trainer.out / "card.json"
    write_json(path, data)
    return path
