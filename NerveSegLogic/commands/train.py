"""``nerveseg train``: train a registered model on a labelled data set with its paper's recipe."""

from __future__ import annotations

import argparse

DESCRIPTION = """\
Train a registered model on a labelled data set (image/mask folders like usgra-seg, Kaggle, COCO, Labelme, Slicer
.seg.nrrd, nnU-Net, or an annotation store project.nsdb), by default with the recipe in the model's card: loss,
optimiser, learning-rate schedule, batch size, epochs, augmentations (Smistad's gamma, rotation, Gaussian shadows,
depth cut, JPEG, elastic; Kim's shear), sampling and input size. Instance models (bpmsegnet) get one instance per
connected region of each class.

Fine-tuning for a site: --init NAME|WEIGHTS|RUN_DIR starts from a registered model's weights, a .safetensors file
or a training run's folder (same architecture, classes and input channels as --model, else refused) instead of
random or ImageNet weights, with the site recipe (train/site.py SITE_RECIPE: a short schedule, the card's learning
rate x 0.03 with cosine decay, the card's augmentations, batch-norm statistics frozen); --epochs, --lr,
--batch-size, --augmentations and --[no-]freeze-encoder / --[no-]freeze-norm override it. An annotation store
gives the current version of each accepted frame (--statuses widens it); its held-out block is contiguous within
each recording. Data that labels only some of the model's classes (--format kaggle --map 255=nerve, or versions
labelling the nerve only) trains only those: the others are left out of the loss, never taught as background.

Validation is one contiguous block of frames (--folds blocks of the frames sorted by name; never random frames,
since neighbouring frames come from the same scan). Every epoch is checkpointed (safetensors + JSON, nothing
pickled); running the same command again RESUMES from the checkpoint in --out. Writes into --out:
  <model>.safetensors   weights of the epoch with the best validation Dice (--folds 1: the last epoch)
  card.json             the model card with those weights' sha256, the recipe and input size used, data, epochs,
                        device, wall time and notes (copy both into Resources/Models to ship them)
  learning_curve.png    train loss and validation Dice per epoch
Uses CUDA when torch sees a GPU (--device auto), else all CPU cores.

Several GPUs or nodes: torchrun starts one process per GPU (or per share of the CPU cores) and each runs the same
recipe with DistributedDataParallel (NCCL on GPUs, gloo on CPUs): the global batch stays the card's (each process
takes batch / processes frames; a process count that does not divide the batch is refused), batch norm is
synchronised over the processes (--no-sync-batchnorm: each process's own statistics), rank 0 validates and writes
the checkpoints and the card (which records the world size), and running again resumes:
  torchrun --nproc-per-node 4 -m NerveSegLogic.train --model unet --data DATA --out runs/unet-4gpu
(--distributed is the same through 'nerveseg train' started by torchrun; without torchrun it prints the command)."""

EPILOG = """\
defaults: --out runs/<model>, the card's epochs and input size, --folds 5 --fold 4 (last block validates),
          --seed 0, --device auto, no time limit.
examples:
  nerveseg train --model smistad-unet --data path/to/usgra-seg
  nerveseg train --model sa-unet --data path/to/usgra-seg --epochs 30 --input-size 128 128 --limit-minutes 60
  nerveseg train --model unet --data path/to/usgra-seg --folds 1 --out runs/unet-all   # every frame, no validation
  nerveseg train --model effnet2-unet --data path/to/usgra-seg --fold 1 --out runs/distilled \\
      --teacher runs/cv/effnet2-unet/fold1 --teacher runs/other/effnet2-unet/fold1   # two teachers, same block
  nerveseg train --model effnet2-unet --init effnet2-unet --data project.nsdb --out runs/site   # fine-tune a site
  nerveseg train --model effnet2-unet --init runs/site --data kaggle/ --format kaggle --map 255=nerve \\
      --folds 1 --epochs 10 --freeze-encoder --out runs/site-nerve   # nerve-only labels, from a run folder
  torchrun --nproc-per-node 4 -m NerveSegLogic.train --model unet --data path/to/usgra-seg   # 4 GPUs, one node
  torchrun --nnodes 2 --nproc-per-node 4 --node-rank 0 --rdzv-backend c10d --rdzv-endpoint node0:29400 \\
      -m NerveSegLogic.train --model unet --data /shared/usgra-seg --out /shared/runs/unet   # on each node"""


def parse_mapping(text):
    """``1=nerve,2=blood_vessel`` -> {1: "nerve", 2: "blood_vessel"} (labels may also be class names in files)."""
    if not text:
        return None
    mapping = {}
    for item in text.split(","):
        if "=" not in item:
            raise argparse.ArgumentTypeError(f"--map expects VALUE=CLASS pairs separated by commas, got {item!r}")
        source, target = (part.strip() for part in item.split("=", 1))
        mapping[int(source) if source.isdigit() else source] = target
    return mapping


def add_data_arguments(parser) -> None:
    parser.add_argument("--data", required=True,
                        help="data set folder, or file (COCO / Labelme JSON, an annotation store .nsdb / .db)")
    parser.add_argument("--format", dest="data_format", default="auto",
                        help="data set format: auto, folder, kaggle, coco, labelme, slicer, nnunet, store "
                             "(default: auto)")
    parser.add_argument("--map", dest="mapping", type=parse_mapping, default=None, metavar="V=CLASS,...",
                        help="the data's label values (or class names) to classes, e.g. 1=nerve,2=blood_vessel")


def register(subparsers) -> None:
    parser = subparsers.add_parser("train", help="train a model on a labelled data set", description=DESCRIPTION,
                                   epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(parser)


def add_arguments(parser) -> None:
    """The arguments of ``nerveseg train`` (also those of ``python -m NerveSegLogic.train``, which torchrun starts)."""
    parser.add_argument("--model", required=True, help="registered model name (see 'nerveseg models list')")
    add_data_arguments(parser)
    parser.add_argument("--out", default=None, help="output folder (default: runs/<model>)")
    parser.add_argument("--epochs", type=int, default=None, help="epochs (default: the card's recipe)")
    parser.add_argument("--device", default="auto", help="auto, cpu or cuda (default: %(default)s)")
    parser.add_argument("--input-size", type=int, nargs=2, metavar=("H", "W"), default=None,
                        help="model input size (default: the card's; smaller trains faster on a CPU)")
    parser.add_argument("--folds", type=int, default=5, help="contiguous blocks; 1 = no validation (default: 5)")
    parser.add_argument("--fold", type=int, default=None, help="block that validates (default: the last)")
    parser.add_argument("--seed", type=int, default=0, help="seed of initialisation, order and augmentation")
    parser.add_argument("--limit-minutes", type=float, default=None,
                        help="stop after this much training time, summed over resumed runs (default: none)")
    parser.add_argument("--stop-after-epoch", type=int, default=None, metavar="N",
                        help="stop at the end of epoch N of the recipe's (its schedule unchanged); the same command "
                             "with a larger N, or without it, resumes (default: train every epoch)")
    parser.add_argument("--batch-size", type=int, default=None, help="default: the card's recipe")
    parser.add_argument("--lr", type=float, default=None, help="learning rate (default: the card's recipe)")
    parser.add_argument("--augmentations", default=None,
                        help="comma-separated augmentation names, or 'none' (default: the card's recipe)")
    parser.add_argument("--teacher", dest="teachers", action="append", default=[], metavar="[MODEL@]WEIGHTS",
                        help="distil from this trained model (a .safetensors file or a training run's folder; "
                             "repeat for an ensemble): its probabilities on each augmented batch are soft targets")
    parser.add_argument("--distill-weight", type=float, default=0.5,
                        help="share of the teachers' soft term in the loss, in (0, 1] (default: %(default)s)")
    parser.add_argument("--distill-temperature", type=float, default=1.0,
                        help="softmax temperature of teachers and student in the soft term (default: %(default)s)")
    parser.add_argument("--init", default=None, metavar="NAME|WEIGHTS|RUN_DIR",
                        help="fine-tune: start from a registered model's weights, a .safetensors file or a training "
                             "run's folder ([MODEL@]WEIGHTS), with the site recipe (default: random / ImageNet "
                             "weights and the card's recipe)")
    parser.add_argument("--freeze-encoder", action=argparse.BooleanOptionalAction, default=None,
                        help="do not train the encoder (architectures with one, e.g. effnet2-unet) (default: the "
                             "site recipe's with --init, else no)")
    parser.add_argument("--freeze-norm", action=argparse.BooleanOptionalAction, default=None,
                        help="keep batch-norm layers in eval mode with their statistics and scale/shift as "
                             "initialised (default: the site recipe's with --init, else no)")
    parser.add_argument("--statuses", default=None, metavar="accepted[,draft,...]",
                        help="annotation store only: version statuses to train on (default: accepted)")
    parser.add_argument("--limit-images", type=int, default=None, help="use only the first N frames (smoke tests)")
    parser.add_argument("--threads", type=int, default=None, help="CPU threads (default: all cores)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.add_argument("--distributed", action="store_true",
                        help="one of the processes torchrun started: DistributedDataParallel over all of them "
                             "(without torchrun: prints the torchrun command)")
    parser.add_argument("--sync-batchnorm", action=argparse.BooleanOptionalAction, default=True,
                        help="distributed: batch-norm statistics of the global batch, as one process computes them "
                             "(--no-sync-batchnorm: each process's own frames) (default: yes)")
    parser.set_defaults(func=run)


def _arguments_after_command() -> list:
    """This command's arguments as typed (for the torchrun command line shown to the user)."""
    import sys

    argv = sys.argv[1:]
    return argv[argv.index("train") + 1:] if "train" in argv else argv


def run(args) -> int:
    import sys
    from pathlib import Path

    # The package's own imports inside functions here are lazy on purpose: registering a subcommand stays cheap: what
    # it runs loads only when it runs.
    from ..datasets.dataset import DatasetError
    from ..models.weights import WeightsError
    from ..train.data import ClassMismatchError
    from ..train.distributed import DistributedError, launched_by_torchrun, not_launched_message, world_from_env
    from ..train.checkpoints import CheckpointError
    from ..train.loop import TrainOptions, train

    distributed = bool(getattr(args, "distributed", False))
    under_torchrun = launched_by_torchrun()
    if distributed and not under_torchrun:
        print(f"nerveseg train: {not_launched_message(_arguments_after_command())}", file=sys.stderr)
        return 2
    rank = world_from_env()["rank"] if under_torchrun else 0
    if under_torchrun and not distributed and world_from_env()["world_size"] > 1:
        if rank == 0:
            print(f"nerveseg train: started by torchrun as one of {world_from_env()['world_size']} processes, "
                  "without --distributed: each would train alone into the same --out. Add --distributed (or start "
                  "python -m NerveSegLogic.train, which implies it).", file=sys.stderr)
        return 2

    statuses = None
    if args.statuses:
        statuses = [s.strip() for s in args.statuses.split(",") if s.strip()]
    augmentations = None
    if args.augmentations is not None:
        augmentations = [] if args.augmentations.strip().lower() == "none" else \
            [a.strip() for a in args.augmentations.split(",") if a.strip()]
    options = TrainOptions(
        model=args.model, data=Path(args.data), out=Path(args.out or Path("runs") / args.model),
        epochs=args.epochs, device=args.device, input_size=tuple(args.input_size) if args.input_size else None,
        folds=args.folds, fold=args.fold, seed=args.seed, limit_minutes=args.limit_minutes,
        stop_after_epoch=args.stop_after_epoch,
        batch_size=args.batch_size, lr=args.lr, augmentations=augmentations, data_format=args.data_format,
        mapping=args.mapping, limit_images=args.limit_images, threads=args.threads, progress=not args.no_progress,
        teachers=list(args.teachers), distill_weight=args.distill_weight,
        distill_temperature=args.distill_temperature, init=args.init, freeze_encoder=args.freeze_encoder,
        freeze_norm=args.freeze_norm, statuses=statuses, distributed=distributed,
        sync_batchnorm=getattr(args, "sync_batchnorm", True))
    try:
        result = train(options)
    except (ClassMismatchError, CheckpointError, DatasetError, WeightsError, DistributedError, KeyError,
            ValueError) as error:
        # KeyError's str() quotes its message; show the message itself
        message = error.args[0] if isinstance(error, KeyError) and error.args else str(error)
        # distributed: an error every rank meets alike (a batch the world size does not divide) is told once
        if rank == 0 or not getattr(error, "same_on_every_rank", False):
            print(f"nerveseg train{f' (rank {rank})' if rank else ''}: {message}", file=sys.stderr)
        else:
            # torchrun stops every process once one exits: leave rank 0 the time to say why (it exits first and
            # is named as the root cause)
            import time

            time.sleep(3)
        return 2
    if rank != 0:
        return 0  # rank 0 reports
    last = result.history[-1] if result.history else {}
    val = (last.get("val") or {}).get("dice") or {}
    summary = ", ".join(f"{k} {v:.3f}" for k, v in val.items() if v is not None)
    print(f"{result.stop_reason}: {result.epochs_done} epochs, {result.global_step} steps"
          + (f"; last validation Dice {summary}" if summary else ""))
    print(f"weights: {result.weights}\ncard: {result.card}\ncurve: {result.out / 'learning_curve.png'}")
    if args.init:
        print(f"fine-tuned from {args.init}; register it with: nerveseg models add {result.out}")
    return 0
