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
  nerveseg predict frame1.png frame2.png --model sa-unet --backend onnx"""

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp")


def register(subparsers) -> None:
    parser = subparsers.add_parser("predict", help="segment image files offline", description=DESCRIPTION,
                                   epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("inputs", nargs="+", help="image files or folders of images")
    parser.add_argument("--out", default="predictions", help="output folder (default: %(default)s)")
    parser.add_argument("--model", default=None, help="registered model name (default: the registry's default)")
    parser.add_argument("--backend", choices=("torch", "onnx"), default="torch", help="(default: %(default)s)")
    parser.add_argument("--device", default="cpu", help="torch device (default: %(default)s)")
    parser.set_defaults(func=run)


def run(args) -> int:
    """Segment every input image. A bad image (unreadable, too large) is reported by name and skipped; a file that
    cannot be written stops the run (the disk is the problem, not the image). Exit 1 when anything failed, with a
    summary of what was written."""
    import sys
    from pathlib import Path

    import cv2
    from tqdm import tqdm

    from ..image_files import ImageFileError, read_image_file, write_image_file
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
    segmenter = Segmenter.from_name(args.model or registry.default_name(), backend=args.backend, device=args.device)
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
    if failed:
        summary += f"; {len(failed)} image(s) skipped: " + ", ".join(p.name for p in failed[:10]) + (
            ", ..." if len(failed) > 10 else "")
    if stopped is not None:
        print(f"nerveseg predict: error: {stopped}; stopped, {len(files) - done - len(failed)} image(s) not done",
              file=sys.stderr)
    print(summary, file=sys.stderr if (failed or stopped) else sys.stdout)
    return 1 if (failed or stopped is not None) else 0
