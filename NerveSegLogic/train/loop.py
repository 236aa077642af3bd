"""Training a registered model on a labelled data set: the card's recipe, block validation, resumable checkpoints.

:func:`train` (and ``nerveseg train``) does, by default, what the model's card says: its loss, optimiser,
learning-rate schedule, batch size, epochs, augmentations, sampling and input size; options override each
(:mod:`.recipe`).

- Validation is one contiguous block of frames (``folds`` blocks of the frames sorted by name, block ``fold``;
  neighbouring frames come from the same scan, so frames are never split at random). ``folds <= 1`` trains on every
  frame without validation (the final models) and keeps the last epoch.
- Every epoch ends with validation through the live path (:mod:`.evaluate`: mean Dice over frames per class) and a
  checkpoint; the best epoch's weights are ``<out>/<model>.safetensors``.
- Checkpoints (:mod:`.checkpoints`) are safetensors plus ``checkpoint.json``, nothing pickled, written so that a
  crash while saving leaves the previous checkpoint whole.
- Running again with the same ``out`` resumes from the checkpoint: same step count, optimiser state restored, and
  the same data order and augmentations as an uninterrupted run (both are functions of seed, epoch and position).
  Checkpoints are also written mid-epoch every ``checkpoint_minutes`` and when ``limit_minutes`` (training time
  summed over all runs of this ``out``) is reached. ``stop_after_epoch`` stops at the end of that epoch instead
  (the recipe's schedule, which may depend on its epochs, is unchanged): a long recipe trained in slices whose
  weights are always a whole epoch's.
- ``init`` (``--init NAME|WEIGHTS|RUN_DIR``, :mod:`.site`): start from a trained model's weights instead of
  random or ImageNet ones, with the site recipe (short schedule, lower learning rate, optionally frozen encoder
  and batch-norm statistics); the init's sha256 is part of what a resumed run must match.
- Data that labels only some of the model's classes (per data set, or per frame of an annotation store) trains
  those only: :func:`.losses.marginal_loss` merges the other classes into "not labelled here" for that frame.
- At the end (:mod:`.reports`): ``<out>/card.json`` (the card with the weights file and sha256, the recipe and input
  size used, the data (its fingerprint, the frames used and held out, the classes labelled), the init, epochs, steps,
  threads, device, wall time and notes such as training on CPU with fewer epochs than the paper) and
  ``<out>/learning_curve.png`` (train loss and validation Dice per epoch, also drawn after every epoch).
- ``distributed`` (``torchrun --nproc-per-node N -m NerveSegLogic.train``, ``nerveseg train --distributed``, and
  :mod:`.distributed`): the same recipe on several processes with DistributedDataParallel, the global batch the
  card's, one step the single-process step on it; rank 0 validates and writes, and the card records the world size.
"""

from __future__ import annotations

import logging
import math
import os
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np

from ..imaging import placement as pp
from ..inference.backends import resolve_device  # one rule for auto, cpu and cuda in training and the live path
from . import data as td, metrics
from .augment import Augmenter
from .checkpoints import check_resumable, read_checkpoint, restore_checkpoint, save_checkpoint
from .recipe import learning_rate, make_optimizer, per_iteration, resolve_recipe, run_card
from .reports import plot_learning_curve, write_run_card
from ..inference.segmenter import Segmenter
from ..models import registry
from .distributed import context, convert_batchnorm
from .site import data_fingerprint, norm_layers

log = logging.getLogger(__name__)


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
    stop_after_epoch: Optional[int] = None  # stop once this many of the recipe's epochs are done (schedule kept)
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


# ------------------------------------------------------------------------------------------------------ training
class Trainer:
    """One training run; see the module docstring. Build with :func:`train` or directly for tests."""

    def __init__(self, options: TrainOptions, dataset=None, card=None, dist=None):
        import torch

        self.options = options
        # one process (distributed.Single), or this process's place among those torchrun started (distributed.Group)
        self.dist = dist if dist is not None else context(options.distributed)
        self.out = Path(options.out)
        self.base_card = card if card is not None else registry.card(options.model, options.cards_dir)
        self.init = None
        if options.init:
            # The package's own imports inside functions here are lazy on purpose: they load torch, which importing
            # this module must not.
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
        found = read_checkpoint(self.out)
        if found is None:
            return
        record, tensors = found
        check_resumable(record, self.setup, self.out)
        restore_checkpoint(self.model, self.optimizer, record, tensors)
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

        stepwise = per_iteration(self.recipe)

        def over_limit() -> bool:
            return elapsed_at_start + (time.perf_counter() - session_start) >= limit_s

        if options.stop_after_epoch is not None and options.stop_after_epoch < 1:
            raise ValueError(f"--stop-after-epoch must be a positive number of epochs, got {options.stop_after_epoch}")
        while self.epoch < epochs:
            if options.stop_after_epoch is not None and self.epoch >= options.stop_after_epoch:
                stop_reason = f"stopped after epoch {self.epoch} of {epochs} (--stop-after-epoch)"
                break
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
                if stepwise:  # poly decay per iteration: the share of this epoch already trained counts
                    lr = learning_rate(self.recipe, self.epoch + self.position / len(order))
                    for group in self.optimizer.param_groups:
                        group["lr"] = lr
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
        return weights, write_run_card(self, stop_reason)


def torch_isfinite(loss) -> bool:
    import torch

    return bool(torch.isfinite(loss.detach()).all())


def train(options: TrainOptions, dataset=None, card=None) -> TrainResult:
    """Train (or resume training) as ``options`` say; see the module docstring.

    Raises ClassMismatchError when the data's classes are not the model's, CheckpointError when ``out`` holds a
    checkpoint of a different run, and the data set readers' DatasetError for bad data.
    """
    dist = context(options.distributed)  # distributed: torchrun's environment; raises when it lacks one
    try:
        return Trainer(options, dataset=dataset, card=card, dist=dist).run()
    finally:
        dist.close()
