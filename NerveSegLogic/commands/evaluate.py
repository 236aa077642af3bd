"""``nerveseg evaluate``: score a model on a labelled data set exactly as the live path segments it."""

from __future__ import annotations

import argparse

DESCRIPTION = """\
Evaluate a registered model on any labelled data set (image/mask folders like usgra-seg, Kaggle, COCO, Labelme,
Slicer .seg.nrrd, nnU-Net). Every frame is segmented by the live path's own code (the card's preprocessing, the
model, its probabilities resampled to the frame's size and argmax, regions under a 7-pixel-radius circle dropped),
then compared with its mask.

Writes into --out:
  metrics.json   {"model", "n_images", "per_class": {"nerve": {"dice", "iou", "precision", "recall", "hd95_px",
                 "hd95_mm", "auc"}, "blood_vessel": {...}, "vessel": same as blood_vessel}, "detection": {"nerve":
                 {"precision", "recall", "f1", "pooled"}, ...}, "coco" (instance models), "per_image", ...};
                 every figure the mean over the frames where it is defined (NaN/null otherwise)
  report.md      the tables and overlay pictures (overlays/*.png) of the best and worst frames
Detection follows Smistad et al.: a true region counts as found when a predicted region overlaps it with Dice above
0.25; regions smaller than a 7-pixel-radius circle are ignored. HD95 is in pixels, and in mm where the data gives
a pixel spacing. Per-frame presence: the rate of frames with no class labelled where the model marks it
(false_frame_rate), of frames with it where the model marks nothing, and the AUC of "the class is in this frame"
(frame score: the class's highest probability), under "presence" in metrics.json.
Data that labels only some of the model's classes (the Kaggle nerve set labels the nerve only) is scored on the
classes both have; the others are named as not labelled. The command stops when the data shares no class with the
model, or labels a class the model lacks, and says which mapping the model expects (give it with --map, e.g.
--map 3=background to leave a class out). Research use only, not for clinical decisions."""

EPILOG = """\
defaults: --out evaluation/<model>, the card's shipped weights, --device cpu.
examples:
  nerveseg evaluate --model smistad-unet --data Resources/Sample
  nerveseg evaluate --model unet --data path/to/usgra-seg --weights runs/unet/unet.safetensors
  nerveseg evaluate --model sa-unet --data my_frames --map 1=nerve,2=blood_vessel --out eval-sa
  nerveseg evaluate --model unet --data path/to/usgra-seg --negatives 1   # + one nerve-free window per frame
  nerveseg evaluate --model unet --data kaggle/train --format kaggle      # labels the nerve only: nerve scored
  nerveseg evaluate --model effnet-unet --data path/to/usgra-seg --tta flip  # + mirror-image mean"""


def register(subparsers) -> None:
    # The package's own imports inside functions here are lazy on purpose: registering a subcommand stays cheap: what
    # it runs loads only when it runs.
    from .predict import add_tta_argument
    from .train import add_data_arguments

    parser = subparsers.add_parser("evaluate", help="score a model on a labelled data set", description=DESCRIPTION,
                                   epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="registered model name (see 'nerveseg models list')")
    add_data_arguments(parser)
    parser.add_argument("--out", default=None, help="output folder (default: evaluation/<model>)")
    parser.add_argument("--weights", default=None,
                        help="safetensors weights to use instead of the card's; a card.json beside them (as "
                             "'nerveseg train' writes) supplies their sha256 and input size")
    parser.add_argument("--device", default="cpu", help="torch device: cpu, cuda or auto (default: %(default)s)")
    parser.add_argument("--limit-images", type=int, default=None, help="only the first N frames by name")
    parser.add_argument("--pictures", type=int, default=3, help="best and worst frames pictured (default: 3)")
    parser.add_argument("--negatives", type=float, default=0.0, metavar="RATE",
                        help="also score about RATE windows per frame cut where nothing is labelled (frames without "
                             "a nerve, for the presence figures; a window is the frame magnified) (default: 0)")
    add_tta_argument(parser)
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.set_defaults(func=run)


def run(args) -> int:
    import sys
    from pathlib import Path

    from ..datasets.dataset import DatasetError
    from ..models.weights import WeightsError
    from ..train.data import ClassMismatchError
    from ..train.evaluate_weights import evaluate_data_set

    out = Path(args.out or Path("evaluation") / args.model)
    try:
        summary, paths = evaluate_data_set(args.model, Path(args.data), out, weights=args.weights,
                                           device=args.device, data_format=args.data_format, mapping=args.mapping,
                                           limit_images=args.limit_images, pictures=args.pictures,
                                           negatives=args.negatives, tta=args.tta,
                                           progress=not args.no_progress,
                                           command="nerveseg " + " ".join(sys.argv[1:]))
    except (ClassMismatchError, DatasetError, WeightsError, KeyError, ValueError) as error:
        # KeyError's str() quotes its message; show the message itself
        message = error.args[0] if isinstance(error, KeyError) and error.args else str(error)
        print(f"nerveseg evaluate: {message}", file=sys.stderr)
        return 2
    for key in summary["classes"]:
        m, d, p = summary["per_class"][key], summary["detection"][key], summary["presence"][key]
        print(f"{key}: Dice {m['dice']:.3f}  IoU {m['iou']:.3f}  HD95 {m['hd95_px']:.1f} px  "
              f"detection F1 {d['f1']:.3f}  false-{key} frames {p['false_frames']}/{p['frames_without']}  "
              f"presence AUC {p['auc']:.3f}")
    if summary.get("not_labelled"):
        print(f"not scored (the data does not label them): {', '.join(summary['not_labelled'])}")
    if args.tta != "none":
        print(f"test-time augmentation: {args.tta} (mean with the mirror image; twice the model time)")
    print(f"{summary['n_images']} frames; metrics: {paths['metrics']}; report: {paths['report']}")
    return 0
