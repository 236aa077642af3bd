"""``nerveseg predict``: segment image files offline with a registered model."""

from __future__ import annotations

import argparse

DESCRIPTION = """\
Segment image files (PNG, JPEG, TIFF; grey or RGB) with a registered model, exactly as the live path does
(same preprocessing, argmax, back to each image's own size, regions smaller than a 7-pixel-radius circle dropped).
Writes, per image, a class-index mask PNG (0 background, then the model's label values) and an overlay PNG.
Research use only, not for clinical decisions."""

EPILOG = """\
defaults: --out predictions, --model the registry's default, --backend torch.
example:
  nerveseg predict Resources/Sample/images --out /tmp/pred
  nerveseg predict frame1.png frame2.png --model sa-unet --backend onnx
  nerveseg predict Resources/Sample/images --model effnet-unet --tta flip   # mean with the mirrored frame"""

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp")


def register(subparsers) -> None:
    parser = subparsers.add_parser("predict", help="segment image files offline", description=DESCRIPTION,
                                   epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("inputs", nargs="+", help="image files or folders of images")
    parser.add_argument("--out", default="predictions", help="output folder (default: %(default)s)")
    parser.add_argument("--model", default=None, help="registered model name (default: the registry's default)")
    parser.add_argument("--backend", choices=("torch", "onnx"), default="torch", help="(default: %(default)s)")
    parser.add_argument("--device", default="cpu", help="torch device (default: %(default)s)")
    add_tta_argument(parser)
    parser.set_defaults(func=run)


def add_tta_argument(parser) -> None:
    """--tta of the offline commands (predict, annotate prelabel, evaluate); not of serve/demo, where the second
    model run per frame would halve the frame rate."""
    from ..inference.backends import TTA_CHOICES

    parser.add_argument("--tta", choices=TTA_CHOICES, default="none",
                        help="test-time augmentation: flip = mean of the class probabilities of each frame and of its "
                             "mirror image (semantic models; twice the model time) (default: %(default)s)")


def run(args) -> int:
    """Segment every input image. A bad image (unreadable, too large) is reported by name and skipped; a file that
    cannot be written stops the run (the disk is the problem, not the image). Exit 1 when anything failed, with a
    summary of what was written."""
    import sys
    from pathlib import Path

    import cv2
    from tqdm import tqdm

    from ..image_files import ImageFileError, read_image_file, write_image_file
    from ..inference.backends import apply_tta, check_tta, tta_of
    from ..inference.segmenter import Segmenter
    from ..models import registry
    from ..overlay import render_overlay

    files = []
    for item in args.inputs:
        path = Path(item)
        if path.is_dir():
            files += sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        elif path.is_file():
            files.append(path)
        else:
            raise SystemExit(f"nerveseg predict: {path} is neither an image file nor a folder")
    if not files:
        raise SystemExit("nerveseg predict: no image files found in " + ", ".join(args.inputs))
    name = args.model or registry.default_name()
    try:
        check_tta(args.tta, registry.card(name).task, name)  # an instance model with --tta flip: before any loading
    except ValueError as error:
        raise SystemExit(f"nerveseg predict: {error}") from None
    segmenter = apply_tta(Segmenter.from_name(name, backend=args.backend, device=args.device), args.tta)
    out = Path(args.out)
    (out / "masks").mkdir(parents=True, exist_ok=True)
    (out / "overlays").mkdir(parents=True, exist_ok=True)
    done, failed, stopped = 0, [], None
    for path in tqdm(files, desc=f"predict ({segmenter.card.name})", unit="image"):
        try:
            image = read_image_file(path)
            if image.ndim == 3:
                image = cv2.cvtColor(image, cv2.COLOR_BGRA2RGB if image.shape[2] == 4 else cv2.COLOR_BGR2RGB)
            result = segmenter.segment(image)
        except (ImageFileError, ValueError, cv2.error) as error:  # this image is bad: say so, go on with the rest
            failed.append(path)
            tqdm.write(f"nerveseg predict: skipped {path}: {error}", file=sys.stderr)
            continue
        try:
            write_image_file(out / "masks" / f"{path.stem}.png", result.labelmap)
            overlay = render_overlay(image, result.labelmap, segmenter.classes, caption=path.name)
            write_image_file(out / "overlays" / f"{path.stem}.png", cv2.cvtColor(overlay, cv2.COLOR_RGB2BGR))
        except OSError as error:
            stopped = error
            break
        done += 1
    summary = f"wrote {done} of {len(files)} masks and overlays to {out}"
    if tta_of(segmenter.backend) != "none":
        summary += f" ({segmenter.describe()})"
    if failed:
        summary += f"; {len(failed)} image(s) skipped: " + ", ".join(p.name for p in failed[:10]) + (
            ", ..." if len(failed) > 10 else "")
    if stopped is not None:
        print(f"nerveseg predict: error: {stopped}; stopped, {len(files) - done - len(failed)} image(s) not done",
              file=sys.stderr)
    print(summary, file=sys.stderr if (failed or stopped) else sys.stdout)
    return 1 if (failed or stopped is not None) else 0
