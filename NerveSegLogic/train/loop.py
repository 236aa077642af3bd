"""Training a registered model on a labelled data set: the card's recipe, block validation, resumable checkpoints.

:func:`train` (and ``nerveseg train``) does, by default, what the model's card says: its loss, optimiser,
learning-rate schedule, batch size, epochs, augmentations, sampling and input size; options override each.

- Validation is one contiguous block of frames (``folds`` blocks of the frames sorted by name, block ``fold``;
  neighbouring frames come from the same scan, so frames are never split at random). ``folds <= 1`` trains on every
  frame without validation (the final models) and keeps the last epoch.
- Every epoch ends with validation through the live path (:mod:`.evaluate`: mean Dice over frames per class) and a
  checkpoint; the best epoch's weights are ``<out>/<model>.safetensors``.
- Checkpoints are safetensors, nothing pickled: ``checkpoint-<step>.safetensors`` holds the model's tensors
  (``model.*``), the optimiser's per-parameter state (``optimizer.<index>.<name>``) and torch's RNG state;
  ``checkpoint.json`` holds the epoch, the step, the position inside the epoch, the loss history, the best epoch,
  the optimiser's hyper-parameters and everything the run was started with. The JSON is written last and names its
  tensor file, so a crash while saving leaves the previous checkpoint whole.
- Running again with the same ``out`` resumes from the checkpoint: same step count, optimiser state restored, and
  the same data order and augmentations as an uninterrupted run (both are functions of seed, epoch and position).
  Checkpoints are also written mid-epoch every ``checkpoint_minutes`` and when ``limit_minutes`` (training time
  summed over all runs of this ``out``) is reached.
- ``init`` (``--init NAME|WEIGHTS|RUN_DIR``, :mod:`.site`): start from a trained model's weights instead of
  random or ImageNet ones, with the site recipe (short schedule, lower learning rate, optionally frozen encoder
  and batch-norm statistics); the init's sha256 is part of what a resumed run must match.
- Data that labels only some of the model's classes (per data set, or per frame of an annotation store) trains
  those only: :func:`.losses.marginal_loss` merges the other classes into "not labelled here" for that frame.
- At the end: ``<out>/card.json`` (the card with the weights file and sha256, the recipe and input size used, the
  data (its fingerprint, the frames used and held out, the classes labelled), the init, epochs, steps, threads,
  device, wall time and notes such as training on CPU with fewer epochs than the paper) and
  ``<out>/learning_curve.png`` (train loss and validation Dice per epoch).
- ``distributed`` (``torchrun --nproc-per-node N -m NerveSegLogic.train``, ``nerveseg train --distributed``, and
  :mod:`.distributed`): the same recipe on several processes with DistributedDataParallel, the global batch the
  card's, one step the single-process step on it; rank 0 validates and writes, and the card records the world size.
"""

from __future__ import annotations

import copy
import json
import logging
import math
import os
import platform
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np

from ..imaging import placement as pp
from ..inference.backends import resolve_device  # one rule for auto, cpu and cuda in training and the live path
from . import data as td
from .augment import Augmenter
from .evaluate import json_ready, write_json

#: How the notes a training run writes into its card begin (see Trainer.notes); a later run drops them from the
#: card it starts from and writes its own.
RUN_NOTE_PREFIXES = ("Trained on CPU", "Trained for ", "Input ", "batch_size ", "augmentations ", "learning rate ",
                     "Balanced (1:1", "The recipe's test-time", "Trained on every frame", "Weights of the epoch",
                     "Negative frames: ", "Pretrained encoder (", "Distilled from ", "Fine-tuned from ", "Frozen ",
                     "Partial labels: ", "Batch size ", "Distributed ")

log = logging.getLogger(__name__)

CHECKPOINT_JSON = "checkpoint.json"
CHECKPOINT_FORMAT = 1


class CheckpointError(RuntimeError):
    """A checkpoint in the output folder cannot be resumed (other model, other setup, or damaged files)."""


@dataclass
class TrainOptions:
    """What to train, where, and what to change from the card's recipe (None keeps the card's value)."""

    model: str
    data: Optional[Path]
    out: Path
    epochs: Optional[int] = None
    device: str = "auto"
    input_size: Optional[Tuple[int, int]] = None
    folds: int = 5
    fold: Optional[int] = None
    seed: int = 0
    limit_minutes: Optional[float] = None
    batch_size: Optional[int] = None
    lr: Optional[float] = None
    augmentations: Optional[List[str]] = None
    data_format: str = "auto"
    mapping: Optional[Dict[int, str]] = None
    limit_images: Optional[int] = None
    threads: Optional[int] = None
    checkpoint_minutes: float = 10.0
    progress: bool = True
    build_overrides: Dict[str, Any] = field(default_factory=dict)
    cards_dir: Optional[Path] = None
    teachers: List[str] = field(default_factory=list)  # [MODEL@]WEIGHTS to distil from (train/distill.py)
    distill_weight: float = 0.5  # share of the teachers' soft term in the loss
    distill_temperature: float = 1.0
    init: Optional[str] = None  # NAME|[MODEL@]WEIGHTS|RUN_DIR to start from (train/site.py); the site recipe applies
    site: Optional[Dict[str, Any]] = None  # the site recipe's values (default train.site.SITE_RECIPE)
    freeze_encoder: Optional[bool] = None  # None: the site recipe's with --init, else False
    freeze_norm: Optional[bool] = None  # None: the site recipe's with --init, else False
    statuses: Optional[List[str]] = None  # an annotation store's version statuses to train on (default: accepted)
    distributed: bool = False  # one of the processes torchrun started (train/distributed.py)
    sync_batchnorm: bool = True  # distributed: batch-norm statistics of the global batch, not of each process's


@dataclass
class TrainResult:
    out: Path
    weights: Optional[Path]
    card: Optional[Path]
    finished: bool
    epochs_done: int
    global_step: int
    history: List[Dict]
    stop_reason: str


# ------------------------------------------------------------------------------------------------------ recipe
def resolve_recipe(card, options: TrainOptions) -> Dict[str, Any]:
    """The recipe this run uses: the card's ``training.recipe`` (with ``--init``: the site recipe derived from it,
    :func:`.site.site_recipe`) with the options' overrides applied."""
    if options.init:
        from .site import site_recipe

        recipe = site_recipe(card.training["recipe"], options.site)
    else:
        recipe = copy.deepcopy(card.training["recipe"])
    if options.epochs is not None:
        recipe["epochs"] = int(options.epochs)
    if options.batch_size is not None:
        recipe["batch_size"] = int(options.batch_size)
    if options.lr is not None:
        recipe["optimizer"]["lr"] = float(options.lr)
    if options.augmentations is not None:
        recipe["augmentations"] = list(options.augmentations)
    for key in ("freeze_encoder", "freeze_norm"):
        value = getattr(options, key)
        if value is not None:
            recipe[key] = bool(value)
    recipe.setdefault("augmentations", [])
    recipe.setdefault("sampling", "uniform")
    return recipe


def learning_rate(recipe: Mapping[str, Any], epoch: int) -> float:
    """Learning rate for ``epoch`` (0-based): constant; poly ``lr (1 - epoch / epochs) ** power``; step ``lr *
    gamma ** (epoch // step_epochs)``; cosine ``lr (min_factor + (1 - min_factor) (1 + cos(pi epoch / epochs)) / 2)``
    (``min_factor`` default 0.01)."""
    base = float(recipe["optimizer"]["lr"])
    schedule = recipe.get("schedule") or {"name": "constant"}
    name = schedule.get("name", "constant")
    if name == "constant":
        return base
    if name == "poly":
        return base * (1.0 - epoch / max(1, int(recipe["epochs"]))) ** float(schedule.get("power", 0.9))
    if name == "step":
        return base * float(schedule.get("gamma", 0.1)) ** (epoch // max(1, int(schedule.get("step_epochs", 10))))
    if name == "cosine":
        floor = float(schedule.get("min_factor", 0.01))
        phase = min(1.0, epoch / max(1, int(recipe["epochs"])))
        return base * (floor + (1.0 - floor) * 0.5 * (1.0 + math.cos(math.pi * phase)))
    raise ValueError(f"unknown learning-rate schedule {name!r}; expected constant, poly, step or cosine")


def make_optimizer(model, recipe: Mapping[str, Any]):
    import torch

    settings = recipe["optimizer"]
    lr = float(settings["lr"])
    weight_decay = float(settings.get("weight_decay") or 0.0)
    params = [p for p in model.parameters() if p.requires_grad]
    if settings["name"] == "adam":
        return torch.optim.Adam(params, lr=lr, weight_decay=weight_decay)
    if settings["name"] == "adamw":  # decoupled weight decay (Loshchilov & Hutter)
        return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    if settings["name"] == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=float(settings.get("momentum") or 0.0),
                               weight_decay=weight_decay)
    raise ValueError(f"unknown optimizer {settings['name']!r}; expected adam, adamw or sgd")


def run_card(card, spec: pp.InputSpec):
    """The card with the input size actually used (what the live path must feed the trained model)."""
    if (spec.height, spec.width) == (card.input.height, card.input.width):
        return card
    data = card.to_json()
    data["input"] = dict(data["input"], size=[spec.height, spec.width])
    return type(card).from_dict(data, card.path)


# ------------------------------------------------------------------------------------------------------ checkpoints
def _flatten_optimizer(optimizer) -> Tuple[Dict[str, Any], Dict[str, Any]]:
    """Optimizer state as (tensors, JSON-ready rest)."""
    import torch

    state = optimizer.state_dict()
    tensors, scalars = {}, {}
    for index, entries in state["state"].items():
        for name, value in entries.items():
            if isinstance(value, torch.Tensor):
                tensors[f"optimizer.{index}.{name}"] = value.detach().cpu().contiguous()
            else:
                scalars[f"{index}.{name}"] = value
    return tensors, {"param_groups": state["param_groups"], "scalars": scalars}


def _unflatten_optimizer(tensors: Mapping[str, Any], meta: Mapping[str, Any]) -> Dict[str, Any]:
    state: Dict[int, Dict[str, Any]] = {}
    for key, value in tensors.items():
        if key.startswith("optimizer."):
            _, index, name = key.split(".", 2)
            state.setdefault(int(index), {})[name] = value
    for key, value in meta.get("scalars", {}).items():
        index, name = key.split(".", 1)
        state.setdefault(int(index), {})[name] = value
    return {"state": state, "param_groups": copy.deepcopy(meta["param_groups"])}


def save_checkpoint(out: Path, model, optimizer, progress: Dict[str, Any]) -> Path:
    """Write the tensors of model and optimizer and torch's RNG state, then ``checkpoint.json`` (atomically)."""
    import torch
    from safetensors.torch import save_file

    tensors = {f"model.{k}": v.detach().cpu().contiguous().clone() for k, v in model.state_dict().items()}
    optim_tensors, optim_meta = _flatten_optimizer(optimizer)
    tensors.update(optim_tensors)
    tensors["rng.torch"] = torch.get_rng_state()
    if torch.cuda.is_available():
        for i, value in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"rng.cuda.{i}"] = value
    file_name = f"checkpoint-{int(progress['global_step']):08d}.safetensors"
    temporary = out / f".{file_name}.tmp"
    save_file(tensors, str(temporary), metadata={"format": str(CHECKPOINT_FORMAT), "model": progress["model"]})
    os.replace(temporary, out / file_name)
    record = dict(progress, tensors=file_name, optimizer=optim_meta, format=CHECKPOINT_FORMAT)
    write_json(out / CHECKPOINT_JSON, record)
    for old in out.glob("checkpoint-*.safetensors"):
        if old.name != file_name:
            old.unlink()
    return out / file_name


def read_checkpoint(out: Path) -> Optional[Tuple[Dict[str, Any], Dict[str, Any]]]:
    """(progress record, tensors) of the checkpoint in ``out``, or None when there is none."""
    from safetensors.torch import load_file

    path = out / CHECKPOINT_JSON
    if not path.is_file():
        return None
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
        tensors_path = out / record["tensors"]
    except (ValueError, KeyError) as error:
        raise CheckpointError(f"{path}: damaged checkpoint record ({error}); delete it to start afresh") from None
    if record.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(f"{path}: checkpoint format {record.get('format')} is not {CHECKPOINT_FORMAT}")
    if not tensors_path.is_file():
        raise CheckpointError(f"{path} names {tensors_path.name}, which is missing; delete {path} to start afresh")
    return record, load_file(str(tensors_path))


def _check_resumable(record: Mapping[str, Any], setup: Mapping[str, Any], path: Path) -> None:
    """The checkpoint must come from the same model, input, data split, seed and recipe (epochs may grow)."""
    for key, value in setup.items():
        theirs, ours = record.get("setup", {}).get(key), json_ready(value)
        if key == "recipe" and isinstance(theirs, dict) and isinstance(ours, dict):
            theirs = {k: v for k, v in theirs.items() if k != "epochs"}
            ours = {k: v for k, v in ours.items() if k != "epochs"}
        if theirs != ours:
            raise CheckpointError(f"{path / CHECKPOINT_JSON} was written by a different run: {key} was {theirs!r}, "
                                  f"now {ours!r}. Use another --out, or delete the checkpoint to start afresh.")


# ------------------------------------------------------------------------------------------------------ learning curve
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


# ------------------------------------------------------------------------------------------------------ training
class Trainer:
    """One training run; see the module docstring. Build with :func:`train` or directly for tests."""

    def __init__(self, options: TrainOptions, dataset=None, card=None, dist=None):
        import torch

        from ..models import registry
        from .distributed import context

        self.options = options
        # one process (distributed.Single), or this process's place among those torchrun started (distributed.Group)
        self.dist = dist if dist is not None else context(options.distributed)
        self.out = Path(options.out)
        self.base_card = card if card is not None else registry.card(options.model, options.cards_dir)
        self.init = None
        if options.init:
            from .site import resolve_init

            # before the data is read: a wrong --init fails at once, naming both models
            self.init = resolve_init(options.init, self.base_card, options.build_overrides, options.cards_dir)
        self.recipe = resolve_recipe(self.base_card, options)
        # a world size that does not divide the batch fails before the data is read
        self.dist.split_batch(int(self.recipe["batch_size"]),
                              "--batch-size" if options.batch_size is not None else "the recipe's batch_size")
        self.out.mkdir(parents=True, exist_ok=True)
        size = options.input_size or ((self.init.card.input.height, self.init.card.input.width) if self.init
                                      else (self.base_card.input.height, self.base_card.input.width))
        self.spec = pp.InputSpec(int(size[0]), int(size[1]), self.base_card.input.channels,
                                 self.base_card.input.resize, self.base_card.input.normalize)
        self.card = run_card(self.base_card, self.spec)
        self.instance = self.card.task == "instance"
        self.labels = [c.label for c in self.card.classes]

        if dataset is None:
            from ..datasets.readers import open_dataset

            extra = {"statuses": list(options.statuses)} if options.statuses else {}
            dataset = open_dataset(options.data, format=options.data_format, mapping=options.mapping, **extra)
        self.dataset = dataset
        # data that labels only some of the model's classes is accepted: the others are left out of its loss
        translation = td.label_translation(self.card.classes, dataset.classes, f"model {self.card.name}",
                                           f"the data set {getattr(dataset, 'root', options.data)}")
        names = list(dataset.names())
        count = len(names) if options.limit_images is None else min(len(names), int(options.limit_images))
        order = sorted(range(len(names)), key=lambda i: names[i])[:count]
        sorted_names = [names[i] for i in order]
        # an annotation store's recordings: each holds out its own contiguous block
        sources = dataset.sources() if hasattr(dataset, "sources") else None
        groups = [sources[i] for i in order] if sources is not None else None
        train_idx, val_idx = td.split_indices(sorted_names, options.folds, options.fold, groups)
        self.split_kind = ("contiguous blocks of each recording (frame source) sorted by index"
                           if groups is not None and len(set(groups)) > 1 else
                           "contiguous blocks of frames sorted by name")
        self.train_names = [sorted_names[i] for i in train_idx]
        self.val_names = [sorted_names[i] for i in val_idx]
        self.train_items = [order[i] for i in train_idx]
        self.val_items = [order[i] for i in val_idx]
        if not train_idx:
            raise ValueError(f"no training frames left in {options.data} (folds={options.folds})")
        model_name = f"model {self.card.name}"
        self.store = td.FrameStore(dataset, translation, self.train_items, self.card.classes, model_name)
        self.negatives = 0
        if self.recipe.get("negatives"):
            # frames without a nerve, cut from training frames only (never from the validation block)
            from .negatives import negative_frames

            extra = negative_frames(self.store.frames, seed=options.seed, **self.recipe["negatives"])
            self.store.frames.extend(extra)
            self.negatives = len(extra)
        self.val_store = (td.FrameStore(dataset, translation, self.val_items, self.card.classes, model_name)
                          if val_idx else None)
        self.partial = self.store.partial
        if self.partial and self.instance:
            raise ValueError(f"{self.card.name} is an instance model: it cannot train on frames that label only some "
                             f"of its classes ({self.labelled_summary()}); give every frame all its classes")
        # the batch never exceeds the frames there are (a site may have 5 of them); no frame is dropped
        self.batch_size = max(1, min(int(self.recipe["batch_size"]), len(self.store)))
        # distributed: the global batch stays the card's, each process takes its share
        self.per_rank_batch = self.dist.split_batch(
            self.batch_size, f"the recipe's {self.recipe['batch_size']} cut to the {len(self.store)} training frames"
            if self.batch_size < int(self.recipe["batch_size"]) else
            "--batch-size" if options.batch_size is not None else "the recipe's batch_size")
        self.shard_sizes: Optional[List[int]] = None  # frames of the current global batch per process (step)
        self.shard_share = 1.0  # this process's share of the current global batch (instance models' loss)
        self.augmenter = Augmenter.from_recipe(self.recipe)
        # what identifies the frames used, taken as they were read (a store may gain versions while this runs)
        from .site import data_fingerprint

        self.data_fingerprint = data_fingerprint(dataset, self.train_items + self.val_items, self.data_frames())

        self.device = self.dist.start(resolve_device(options.device))  # distributed: joins the process group
        if self.device == "cpu":
            torch.set_num_threads(self.dist.threads(options.threads))
        torch.manual_seed(options.seed)
        self.model = registry.build_from_card(self.card, **options.build_overrides)
        self.pretrained = None
        if self.init is not None:
            # the init's weights replace random and ImageNet ones (a checkpoint, if any, replaces them in turn)
            from .site import load_init

            load_init(self.model, self.init)
        elif self.recipe.get("pretrained"):
            # ImageNet weights from an installed package, at training time only (a checkpoint, if any, replaces them)
            if not hasattr(self.model, "load_pretrained"):
                raise ValueError(f"{self.card.name}: the recipe asks for pretrained weights "
                                 f"({self.recipe['pretrained']!r}) but the model has no load_pretrained()")
            missing, unexpected = self.model.load_pretrained()
            self.pretrained = {"source": self.recipe["pretrained"], "missing": missing, "unexpected": unexpected}
        self.frozen: Dict[str, int] = {}
        if self.recipe.get("freeze_encoder"):
            from .site import freeze_encoder

            self.frozen["encoder_tensors"] = freeze_encoder(self.model, self.card.architecture)
        if self.recipe.get("freeze_norm"):
            from .site import freeze_norm

            self.frozen["norm_layers"] = freeze_norm(self.model)
        self.sync_batchnorm: Optional[str] = None
        if self.dist.world_size > 1:
            self.sync_batchnorm = self._synchronise_batchnorm()
        self.model = self.model.to(self.device)
        self.optimizer = make_optimizer(self.model, self.recipe)  # the parameters still trained
        self.batch_labelled: Optional[List[Any]] = None  # the labelled classes of the batch's frames (step)
        if not self.instance:
            from .losses import marginal_loss, semantic_loss

            l2 = float(self.recipe.get("l2_lambda", 1e-3))
            self.loss_fn = semantic_loss(self.recipe["loss"], l2=l2)
            # frames that label only some classes: the others are left out of their loss (marginal loss)
            self.partial_loss = marginal_loss(self.recipe["loss"], l2=l2) if self.partial else None
        self.teachers = self._load_teachers()
        self.setup = {"model": self.card.name, "architecture": self.card.architecture,
                      "input_size": [self.spec.height, self.spec.width], "recipe": self.recipe,
                      "seed": options.seed, "folds": options.folds, "fold": options.fold,
                      "train_names": self.train_names, "val_names": self.val_names,
                      "build_overrides": options.build_overrides}
        # a resumed run must start from the very same weights (by checksum, wherever they lie)
        self.setup["init"] = None if self.init is None else {"model": self.init.model, "sha256": self.init.sha256}
        # a resumed run must distil from the very same weights (by checksum, wherever they lie), or not at all
        self.setup["distillation"] = None if not self.teachers else dict(
            self.distillation_record(), teachers=[{"model": t.model_name, "sha256": t.sha256} for t in self.teachers])
        self.epoch = 0
        self.position = 0  # frames of the current epoch already trained on
        self.global_step = 0
        self.history: List[Dict[str, Any]] = []
        self.epoch_loss = [0.0, 0]  # sum, batches
        self.best = {"epoch": None, "score": -math.inf, "val": None, "sha256": None}
        self.elapsed = 0.0  # training seconds over every run of this out folder
        self.resumed_from: Optional[int] = None
        self.sessions: List[Dict[str, Any]] = []  # the world size each run of this out folder trained with
        self._resume()
        session = {"world_size": self.dist.world_size, "backend": self.dist.backend,
                   "batch_norm": self.sync_batchnorm, "from_step": self.global_step}
        if not self.sessions or {k: v for k, v in self.sessions[-1].items() if k != "from_step"} != \
                {k: v for k, v in session.items() if k != "from_step"}:
            self.sessions.append(session)
        # distributed: every rank found the same checkpoint, read the same frames and runs the same setup
        self.dist.check_agree({
            "checkpoint": (f"step {self.global_step} (epoch {self.epoch + 1}, {self.position} frames into it)"
                           if self.resumed_from is not None else "no checkpoint"),
            "data": {k: v for k, v in self.data_fingerprint.items() if k != "root"}, "setup": self.setup})
        self.forward_model = self.dist.wrap(self.model)  # DistributedDataParallel, or the model itself
        if self.dist.rank > 0:
            # the model is initialised alike on every rank (same seed); from here each rank's torch stream differs
            torch.manual_seed(int(np.random.SeedSequence([options.seed, self.dist.rank, self.global_step])
                                  .generate_state(1)[0]))

    def _synchronise_batchnorm(self) -> Optional[str]:
        """Distributed: batch norm over the global batch (options.sync_batchnorm), else per-process statistics;
        a description for the card, None without batch norm in training mode."""
        from .distributed import convert_batchnorm
        from .site import norm_layers

        if not norm_layers(self.model) or self.recipe.get("freeze_norm"):
            return None
        if not self.options.sync_batchnorm:
            return (f"per-process statistics ({self.per_rank_batch} frames each; --no-sync-batchnorm), running "
                    "statistics of rank 0's frames")
        device = self.device
        self.model, count = convert_batchnorm(self.model, device)
        kind = "torch.nn.SyncBatchNorm" if str(device).startswith("cuda") else "GlobalBatchNorm (gloo all-reduce)"
        return f"synchronised over the {self.dist.world_size} processes ({count} layers, {kind}): statistics of " \
               f"the global batch of {self.batch_size}"

    def _load_teachers(self):
        options = self.options
        if not options.teachers:
            return []
        if self.instance:
            raise ValueError(f"{self.card.name} is an instance model: distillation (--teacher) needs a semantic "
                             "student")
        if not 0.0 < options.distill_weight <= 1.0:
            raise ValueError(f"distillation weight must be in (0, 1], got {options.distill_weight}")
        if options.distill_temperature <= 0:
            raise ValueError(f"distillation temperature must be positive, got {options.distill_temperature}")
        from .distill import load_teachers

        return load_teachers(options.teachers, self.card, self.spec, self.device, options.cards_dir)

    def labelled_record(self) -> Dict[str, Any]:
        """The classes the training data labels: every class of the model, and how many frames label each set."""
        keys = {c.label: c.key for c in self.card.classes}
        counts: Dict[str, int] = {}
        labelled = set()
        for frame in self.data_frames():
            labels = sorted(keys) if frame.labelled is None else sorted(frame.labelled)
            labelled.update(labels)
            name = "+".join(keys[label] for label in labels) or "none"
            counts[name] = counts.get(name, 0) + 1
        return {"classes": [keys[label] for label in sorted(labelled)],
                "not_labelled": [keys[label] for label in sorted(set(keys) - labelled)],
                "frames_per_label_set": counts}

    def data_frames(self) -> List[td.Frame]:
        """The frames of the data set this run uses (training, then held out), without the negative windows."""
        frames = list(self.store.frames[:len(self.train_items)])
        return frames + (list(self.val_store.frames) if self.val_store is not None else [])

    def labelled_summary(self) -> str:
        record = self.labelled_record()
        return ", ".join(f"{n} frame(s) label {name}" for name, n in record["frames_per_label_set"].items())

    def distillation_record(self) -> Dict[str, Any]:
        return {"teachers": [t.record() for t in self.teachers], "weight": self.options.distill_weight,
                "temperature": self.options.distill_temperature}

    # -------------------------------------------------------------------------------------------------- resume
    def _resume(self) -> None:
        import torch

        found = read_checkpoint(self.out)
        if found is None:
            return
        record, tensors = found
        _check_resumable(record, self.setup, self.out)
        model_state = {k[len("model."):]: v for k, v in tensors.items() if k.startswith("model.")}
        self.model.load_state_dict(model_state, strict=True)
        self.optimizer.load_state_dict(_unflatten_optimizer(tensors, record["optimizer"]))
        torch.set_rng_state(tensors["rng.torch"])
        cuda_states = [tensors[k] for k in sorted(tensors) if k.startswith("rng.cuda.")]
        if cuda_states and torch.cuda.is_available() and len(cuda_states) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(cuda_states)
        self.epoch, self.position = int(record["epoch"]), int(record["position"])
        self.global_step = int(record["global_step"])
        self.history = list(record["history"])
        self.sessions = list(record.get("sessions") or [])
        self.epoch_loss = list(record["epoch_loss"])
        self.best = dict(record["best"])
        self.best["score"] = -math.inf if self.best.get("score") is None else float(self.best["score"])
        self.elapsed = float(record["elapsed_s"])
        self.resumed_from = self.global_step
        if self.dist.writer:
            log.info("resuming %s from %s: epoch %d, %d frames into it, step %d", self.card.name, self.out,
                     self.epoch + 1, self.position, self.global_step)

    def _progress_record(self) -> Dict[str, Any]:
        return {"model": self.card.name, "setup": self.setup, "epoch": self.epoch, "position": self.position,
                "global_step": self.global_step, "history": self.history, "epoch_loss": self.epoch_loss,
                "best": self.best, "elapsed_s": self.elapsed, "sessions": self.sessions,
                "saved": datetime.now(timezone.utc).isoformat(timespec="seconds")}

    def checkpoint(self) -> Optional[Path]:
        """Write a checkpoint (distributed: rank 0 writes, between two barriers; the others return None)."""
        self.dist.barrier()
        path = save_checkpoint(self.out, self.model, self.optimizer, self._progress_record()) \
            if self.dist.writer else None
        self.dist.barrier()
        return path

    # -------------------------------------------------------------------------------------------------- steps
    def _batch(self, indices: Sequence[int], epoch: int, first_position: int):
        import torch

        if not indices:  # distributed: a process whose shard of a short last batch is empty
            height, width = self.spec.height, self.spec.width
            x = torch.zeros((0, self.spec.channels, height, width), dtype=torch.float32, device=self.device)
            return x, (torch.zeros((0, height, width), dtype=torch.int64, device=self.device) if not self.instance
                       else [])
        images, targets = [], []
        for offset, index in enumerate(indices):
            rng = td.augmentation_rng(self.options.seed, epoch, first_position + offset)
            image, target = td.prepare(self.store[index], self.spec, self.augmenter, rng)
            images.append(image)
            targets.append(target)
        x = torch.from_numpy(np.stack(images)).to(self.device)
        if not self.instance:
            return x, torch.from_numpy(np.stack(targets)).to(self.device)
        instance_targets = []
        for target in targets:
            t = td.instance_targets(target, self.labels)
            instance_targets.append({k: torch.from_numpy(v).to(self.device) for k, v in t.items()})
        return x, instance_targets

    def step(self, x, y) -> float:
        """One optimiser step on a batch; returns the loss.

        Distributed: ``x, y`` are this process's shard of the global batch (``shard_sizes``); the semantic loss is
        the recipe's loss on the global batch (every process's logits and targets gathered), so the step is the
        single-process step; an instance model's loss is weighted by the process's share and DDP averages it."""
        from .losses import instance_loss

        self.model.train()
        if self.recipe.get("freeze_norm"):
            from .site import keep_norm_frozen

            keep_norm_frozen(self.model)
        self.optimizer.zero_grad(set_to_none=True)
        model = self.forward_model
        scale = 1.0  # the factor of the loss that is backpropagated (instance models, distributed)
        if self.instance:
            loss = instance_loss(model(x, y))
            scale = self.shard_share * self.dist.world_size
        else:
            logits = model(x)
            soft = None
            if self.teachers:
                from .distill import teacher_probabilities

                soft = teacher_probabilities(self.teachers, x, self.options.distill_temperature)
            if self.dist.distributed and self.shard_sizes is not None:
                logits = self.dist.gather_rows(logits, self.shard_sizes)
                y = self.dist.gather_rows(y, self.shard_sizes)
                if soft is not None:
                    soft = self.dist.gather_rows(soft, self.shard_sizes)
            labelled = self.batch_labelled
            if self.partial_loss is not None and labelled is not None and any(s is not None for s in labelled):
                loss = self.partial_loss(logits, y, self.model, labelled)
            else:
                loss = self.loss_fn(logits, y, self.model)
            if soft is not None:
                from .distill import distillation_loss

                weight = self.options.distill_weight
                loss = (1.0 - weight) * loss + weight * distillation_loss(logits, soft,
                                                                          self.options.distill_temperature)
        if not torch_isfinite(loss):
            raise FloatingPointError(f"loss became {loss.item()} at step {self.global_step} of {self.card.name}; "
                                     f"lower the learning rate (--lr) or check the data")
        (loss * scale if scale != 1.0 else loss).backward()
        self.optimizer.step()
        if self.instance and self.dist.distributed:
            return self.dist.weighted_mean(float(loss.item()), self.shard_share)
        return float(loss.item())

    def validate(self) -> Optional[Dict[str, Any]]:
        """Mean Dice and detection F1 per class over the validation frames, segmented through the live path
        (None without validation). HD95 and AUC are left to ``nerveseg evaluate``: they cost more than an epoch of
        a small model. Distributed: rank 0 validates, every rank gets its result."""
        return self.dist.from_writer(self._validate_here)

    def _validate_here(self) -> Optional[Dict[str, Any]]:
        if self.val_store is None:
            return None
        from ..inference.segmenter import Segmenter
        from . import metrics

        segmenter = Segmenter.from_module(self.card, self.model, device=self.device)
        dice: Dict[str, List[float]] = {c.key: [] for c in self.card.classes}
        f1: Dict[str, List[float]] = {c.key: [] for c in self.card.classes}
        try:
            for frame in self.val_store.frames:
                labelmap = segmenter.segment(frame.image).labelmap
                for c in self.card.classes:
                    if frame.labelled is not None and c.label not in frame.labelled:
                        continue  # the frame does not label this class: nothing to score
                    pred, truth = labelmap == c.label, frame.mask == c.label
                    dice[c.key].append(metrics.dice(pred, truth))
                    f1[c.key].append(metrics.match_regions(pred, truth).f1)
        finally:
            self.model.train()
        mean_dice = {k: metrics.nan_stats(v)["mean"] for k, v in dice.items()}
        finite = [v for v in mean_dice.values() if not math.isnan(v)]
        return {"dice": mean_dice, "detection_f1": {k: metrics.nan_stats(v)["mean"] for k, v in f1.items()},
                "mean_dice": float(np.mean(finite)) if finite else math.nan}

    def _save_best(self, val: Optional[Mapping[str, Any]], epoch: int) -> None:
        """Write the current weights as ``<out>/<model>.safetensors`` (atomically) and remember them as the best."""
        from ..models import registry

        path = self.out / f"{self.card.name}.safetensors"
        temporary = self.out / f".{self.card.name}.safetensors.tmp"
        sha256 = None  # distributed: rank 0 alone writes (and knows) the weights
        if self.dist.writer:
            sha256 = registry.save_weights(self.model, temporary)
            os.replace(temporary, path)
        score = (val or {}).get("mean_dice")
        self.best = {"epoch": epoch, "score": score if score is not None else -math.inf, "val": val,
                     "sha256": sha256}

    # -------------------------------------------------------------------------------------------------- loop
    def run(self) -> TrainResult:
        options = self.options
        epochs = int(self.recipe["epochs"])
        batch_size = self.batch_size
        limit_s = options.limit_minutes * 60.0 if options.limit_minutes is not None else math.inf
        session_start = time.perf_counter()
        elapsed_at_start = self.elapsed
        last_checkpoint = session_start
        stop_reason = "finished"
        train_indices = list(range(len(self.store)))
        dist = self.dist  # distributed: rank 0 decides what depends on its clock, and alone writes and shows
        sampler = td.ShardedEpoch(self.store, train_indices, options.seed, self.recipe["sampling"], batch_size,
                                  dist.rank, dist.world_size)

        def over_limit() -> bool:
            return elapsed_at_start + (time.perf_counter() - session_start) >= limit_s

        while self.epoch < epochs:
            if dist.decide(over_limit())[0]:
                stop_reason = f"time limit of {options.limit_minutes:g} minutes"
                break
            lr = learning_rate(self.recipe, self.epoch)
            for group in self.optimizer.param_groups:
                group["lr"] = lr
            order = sampler.order(self.epoch)  # td.epoch_order: the same on every process
            total_batches = math.ceil(len(order) / batch_size)
            bar = None
            if options.progress and dist.writer:
                from tqdm import tqdm

                bar = tqdm(total=total_batches, initial=self.position // batch_size, unit="batch", leave=False,
                           desc=f"{self.card.name} epoch {self.epoch + 1}/{epochs}")
            epoch_start = time.perf_counter()
            stopped = False
            while self.position < len(order):
                chunk = order[self.position:self.position + batch_size]
                lo, hi = sampler.shard(len(chunk))  # this process's frames of the global batch (all of it alone)
                self.shard_sizes = sampler.shard_sizes(len(chunk))
                self.shard_share = (hi - lo) / len(chunk)
                if hi == lo and self.instance:
                    # an instance model cannot run on no frame: a stand-in frame whose loss counts for nothing
                    x, y = self._batch(chunk[:1], self.epoch, self.position)
                else:
                    x, y = self._batch(chunk[lo:hi], self.epoch, self.position + lo)
                self.batch_labelled = [self.store[i].labelled for i in chunk]  # the global batch's
                loss = self.step(x, y)
                self.position += len(chunk)
                self.global_step += 1
                self.epoch_loss = [self.epoch_loss[0] + loss, self.epoch_loss[1] + 1]
                self.elapsed = elapsed_at_start + (time.perf_counter() - session_start)
                if bar is not None:
                    bar.update(1)
                    bar.set_postfix(loss=f"{self.epoch_loss[0] / self.epoch_loss[1]:.4f}", lr=f"{lr:.2g}")
                if self.position < len(order):
                    stop_now, save_now = dist.decide(
                        over_limit(), time.perf_counter() - last_checkpoint >= options.checkpoint_minutes * 60.0)
                    if stop_now:
                        stopped = True
                        break
                    if save_now:
                        self.checkpoint()
                        last_checkpoint = time.perf_counter()
            if bar is not None:
                bar.close()
            if stopped:
                stop_reason = f"time limit of {options.limit_minutes:g} minutes (mid-epoch {self.epoch + 1})"
                self.checkpoint()
                break
            val = self.validate()
            record = {"epoch": self.epoch + 1, "train_loss": self.epoch_loss[0] / max(1, self.epoch_loss[1]),
                      "lr": lr, "val": val, "seconds": time.perf_counter() - epoch_start, "step": self.global_step}
            self.history.append(record)
            improved = val is None or (val["mean_dice"] is not None and not math.isnan(val["mean_dice"])
                                       and val["mean_dice"] > self.best["score"])
            self.epoch += 1
            self.position = 0
            self.epoch_loss = [0.0, 0]
            if improved:
                self._save_best(val, self.epoch)
            self.elapsed = elapsed_at_start + (time.perf_counter() - session_start)
            if dist.writer:
                log.info("%s epoch %d/%d: loss %.4f%s (%.0f s)", self.card.name, self.epoch, epochs,
                         record["train_loss"], "" if val is None else
                         ", val Dice " + ", ".join(f"{k} {v:.3f}" for k, v in val["dice"].items() if v is not None),
                         record["seconds"])
            self.checkpoint()
            last_checkpoint = time.perf_counter()
            if dist.writer:
                plot_learning_curve(self.history, self.out / "learning_curve.png", self._curve_title())

        finished = self.epoch >= epochs or stop_reason != "finished"
        weights = card_path = None
        if finished:
            weights, card_path = self._finish(stop_reason)
        dist.barrier()  # the others leave once rank 0 has written everything
        return TrainResult(out=self.out, weights=weights, card=card_path, finished=finished,
                           epochs_done=self.epoch, global_step=self.global_step, history=self.history,
                           stop_reason=stop_reason)

    def _curve_title(self) -> str:
        return (f"{self.card.name}: {len(self.train_names)} train / {len(self.val_names)} val frames, "
                f"input {self.spec.height}x{self.spec.width}, {self.device}")

    def _finish(self, stop_reason: str) -> Tuple[Optional[Path], Optional[Path]]:
        """Best (or, without validation, last) weights, card.json and the learning curve (distributed: rank 0
        writes them; the others return None, None)."""
        weights = self.out / f"{self.card.name}.safetensors"
        if self.dist.decide(self.val_store is None or self.best.get("sha256") is None or not weights.is_file())[0]:
            # No validation, or stopped before the first epoch ended: keep the model as it is now.
            self._save_best(self.validate(), self.epoch)
        if not self.dist.writer:  # distributed: rank 0 writes the card and the curve
            return None, None
        if self.history:
            plot_learning_curve(self.history, self.out / "learning_curve.png", self._curve_title())
        return weights, self.write_card(stop_reason)

    def notes(self, stop_reason: str) -> List[str]:
        """What this run did differently from the card's recipe; every note starts with one of RUN_NOTE_PREFIXES."""
        paper_recipe = self.base_card.training["recipe"]
        if self.init is not None:  # the reference is the site recipe: say what differs from it
            from .site import site_recipe

            paper_recipe = site_recipe(paper_recipe, self.options.site)
        notes = []
        if self.init is not None:
            init = self.init
            notes.append(f"Fine-tuned from {init.model} ({init.kind} {init.weights}, sha256 {init.sha256[:12]}) with "
                         f"the site recipe: {self.recipe['epochs']} epochs at learning rate "
                         f"{self.recipe['optimizer']['lr']:g} ({self.recipe['schedule'].get('name')}); the weights "
                         "of the init replace random and ImageNet initialisation.")
        if self.dist.distributed:
            notes.append(f"Distributed over {self.dist.world_size} processes (torchrun, {self.dist.backend}): global "
                         f"batch {self.batch_size} = {self.dist.world_size} x {self.per_rank_batch} per process, the "
                         "recipe's loss on the gathered global batch, gradients averaged by DistributedDataParallel; "
                         "batch norm " + (self.sync_batchnorm or "not in training") + ".")
        if self.device == "cpu":
            notes.append(f"Trained on CPU ({platform.processor() or platform.machine()}, {os.cpu_count()} cores), "
                         "not on the GPU the paper used.")
        if self.epoch < int(paper_recipe["epochs"]):
            why = "chosen with --epochs" if stop_reason == "finished" else f"stopped at the {stop_reason}"
            notes.append(f"Trained for {self.epoch} epochs, fewer than the recipe's {paper_recipe['epochs']} "
                         f"({why}).")
        if self.frozen:
            parts = []
            if "encoder_tensors" in self.frozen:
                parts.append(f"the encoder ({self.frozen['encoder_tensors']} parameter tensors not trained)")
            if "norm_layers" in self.frozen:
                parts.append(f"normalisation ({self.frozen['norm_layers']} batch-norm layers in eval mode with the "
                             "init's statistics, their scale and shift not trained)")
            notes.append("Frozen: " + " and ".join(parts) + ".")
        if self.batch_size < int(self.recipe["batch_size"]):
            notes.append(f"Batch size {self.batch_size}: the recipe's {self.recipe['batch_size']} is more than the "
                         f"{len(self.store)} training frames.")
        if self.partial or (self.val_store is not None and self.val_store.partial):
            notes.append(f"Partial labels: {self.labelled_summary()}. A class a frame does not label is left out of "
                         "its loss (its probability counts as 'not the labelled classes'), never taught as "
                         "background; validation scores each frame on the classes it labels.")
        if (self.spec.height, self.spec.width) != (self.base_card.input.height, self.base_card.input.width):
            notes.append(f"Input {self.spec.height}x{self.spec.width} instead of the card's "
                         f"{self.base_card.input.height}x{self.base_card.input.width} (smaller, for CPU training); "
                         "the live path feeds this size.")
        which = "the site recipe's" if self.init is not None else "the recipe's"
        for key in ("batch_size", "augmentations"):
            if self.recipe.get(key) != paper_recipe.get(key):
                notes.append(f"{key} {self.recipe.get(key)} instead of {which} {paper_recipe.get(key)}.")
        if self.recipe["optimizer"]["lr"] != paper_recipe["optimizer"]["lr"]:
            notes.append(f"learning rate {self.recipe['optimizer']['lr']} instead of {which} "
                         f"{paper_recipe['optimizer']['lr']}.")
        if self.recipe.get("sampling") == "balanced" and all(td.has_foreground(f) for f in self.store.frames):
            notes.append("Balanced (1:1 positive/negative) sampling had no negative frames to draw (every training "
                         "frame shows a structure), so it was uniform.")
        if self.negatives:
            notes.append(f"Negative frames: {self.negatives} windows of training frames with no labelled structure "
                         f"(label 0 everywhere) added to the {len(self.train_names)} training frames.")
        if self.pretrained:
            notes.append(f"Pretrained encoder ({self.pretrained['source']}): missing keys "
                         f"{self.pretrained['missing'] or 'none'}, unexpected keys "
                         f"{self.pretrained['unexpected'] or 'none'}.")
        if self.teachers:
            names = ", ".join(f"{t.model_name} {t.weights.parent.name}/{t.weights.name} ({t.sha256[:12]})"
                              for t in self.teachers)
            notes.append(f"Distilled from {len(self.teachers)} teacher(s), their mean probabilities as soft targets: "
                         f"{names}; loss = {1 - self.options.distill_weight:g} x the recipe's loss + "
                         f"{self.options.distill_weight:g} x T^2 KL at T = {self.options.distill_temperature:g}.")
        if self.recipe.get("tta"):
            notes.append("The recipe's test-time augmentation is not applied: validation, evaluation and the live "
                         "path segment each frame once.")
        if self.val_store is None:
            notes.append("Trained on every frame (no validation); the weights are the last epoch's.")
        else:
            notes.append(f"Weights of the epoch with the best validation mean Dice (epoch {self.best['epoch']}).")
        return notes

    def write_card(self, stop_reason: str) -> Path:
        """``<out>/card.json``: the card with this run's weights, recipe, input, data and notes."""
        import torch

        from ..models.card import ModelCard

        data = self.card.to_json()
        if self.init is not None:
            # What was measured on the base model's weights (its cross-validated figures, its speed, its INT8 check,
            # its presence calibration) does not describe these: dropped, so that a site model is never run as
            # INT8 or drawn with thresholds on the base model's evidence. ``nerveseg calibrate`` fits its own.
            for measured in ("metrics", "speed", "int8", "presence"):
                data.pop(measured, None)
        data["build"] = dict(data["build"], **copy.deepcopy(self.options.build_overrides))
        data["weights"] = {"file": f"{self.card.name}.safetensors", "sha256": self.best["sha256"], "dtype": "float32"}
        training = dict(data.get("training", {}))
        dataset = self.dataset
        training["data"] = (f"{Path(getattr(dataset, 'root', self.options.data or '.')).name}: "
                            f"{len(self.train_names)} frames for training"
                            + (f", {len(self.val_names)} for validation" if self.val_names else "")
                            + f" ({getattr(dataset, 'format', 'data set')}; classes "
                            + ", ".join(f"{c.label}={c.key}" for c in self.card.classes) + ")")
        training["recipe"] = copy.deepcopy(self.recipe)
        if self.init is not None:
            training["init"] = self.init.record()
        else:
            training.pop("init", None)  # a base card that was itself fine-tuned: that was another run's start
        training["data_fingerprint"] = self.data_fingerprint
        training["labelled_classes"] = self.labelled_record()
        # The base card may be a shipped one, whose notes already describe the run that made its weights: keep the
        # notes about the model and its paper, replace those about a run with this run's.
        kept = [note for note in training.get("notes", []) if not note.startswith(RUN_NOTE_PREFIXES)]
        training["notes"] = kept + self.notes(stop_reason)
        training["run"] = json_ready({
            "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "device": self.device if self.device != "cpu" else f"cpu ({os.cpu_count()} cores)",
            "torch": torch.__version__,
            "wall_time_s": round(self.elapsed, 1),
            "epochs": self.epoch, "epochs_planned": int(self.recipe["epochs"]), "steps": self.global_step,
            "stop_reason": stop_reason,
            "input_size": [self.spec.height, self.spec.width],
            "seed": self.options.seed,
            "split": {"kind": self.split_kind, "folds": self.options.folds,
                      "validation_fold": (self.options.folds - 1 if self.options.fold is None else self.options.fold)
                      if self.val_names else None,
                      "train_first_last": [self.train_names[0], self.train_names[-1]],
                      "validation_first_last": [self.val_names[0], self.val_names[-1]] if self.val_names else None},
            "frames": {"train": self.train_names, "held_out": self.val_names},
            "budget": {"epochs": self.epoch, "steps": self.global_step, "wall_time_s": round(self.elapsed, 1),
                       "threads": torch.get_num_threads() if self.device == "cpu" else None,
                       "batch_size": self.batch_size, "frames": len(self.train_names)},
            "best_epoch": self.best.get("epoch"),
            "validation": self.best.get("val"),
            "validation_data": (
                f"held-out frames of this run's own data ({len(self.val_names)} frames, {self.split_kind}, block "
                f"{self.options.folds - 1 if self.options.fold is None else self.options.fold} of "
                f"{self.options.folds}), never trained on; the weights are those of the epoch that scored best on "
                "them" if self.val_names else None),
            **({"distillation": self.distillation_record()} if self.teachers else {}),
            "world_size": self.dist.world_size,
            **({"distributed": dict(self.dist.record(self.per_rank_batch, self.sync_batchnorm),
                                    sessions=self.sessions)} if self.dist.distributed or len(self.sessions) > 1
               else {}),
        })
        data["training"] = training
        ModelCard.from_dict(data)  # validate before writing
        path = self.out / "card.json"
        write_json(path, data)
        return path


def torch_isfinite(loss) -> bool:
    import torch

    return bool(torch.isfinite(loss.detach()).all())


def train(options: TrainOptions, dataset=None, card=None) -> TrainResult:
    """Train (or resume training) as ``options`` say; see the module docstring.

    Raises ClassMismatchError when the data's classes are not the model's, CheckpointError when ``out`` holds a
    checkpoint of a different run, and the data set readers' DatasetError for bad data.
    """
    from .distributed import context

    dist = context(options.distributed)  # distributed: torchrun's environment; raises when it lacks one
    try:
        return Trainer(options, dataset=dataset, card=card, dist=dist).run()
    finally:
        dist.close()
