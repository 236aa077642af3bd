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
  nerveseg predict Resources/Sample/images --model effnet-unet --tta flip   # mean with the mirrored frame
  nerveseg predict grabbed/ --region 120,80,640,480   # only the image inside the scanner's screen
  nerveseg predict grabbed/ --region auto   # the region found from the folder's frames taken as a clip"""

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
    # The package's own imports inside functions here are lazy on purpose: registering a subcommand stays cheap: what
    # it runs loads only when it runs.
    from ..imaging.region import region_argument

    parser.add_argument("--region", type=region_argument, default=None, metavar="X,Y,W,H|auto",
                        help="the part of each image the model sees (frame-grabber video: the scanner's text, scales "
                             "and logos stay out): X,Y,W,H in image pixels (left, top, width, height), or auto: found "
                             "from the images of each input folder taken as a clip (the part that changes between "
                             "them, else the largest bright area, else the whole image; printed). Masks keep the "
                             "image's size, zero outside (default: the whole image)")
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

    from ..imaging.files import ImageFileError, read_image_file, write_image_file
    from ..inference.backends import apply_tta, check_tta, tta_of
    from ..inference.segmenter import Segmenter
    from ..models import registry
    from ..imaging.overlay import render_overlay

    files = []
    series = {}  # file -> the input it came from (a folder's frames are one clip for --region auto)
    for index, item in enumerate(args.inputs):
        path = Path(item)
        if path.is_dir():
            found = sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
            files += found
            series.update((p, index) for p in found)
        elif path.is_file():
            files.append(path)
            series[path] = -1  # single files given one by one are one series together
        else:
            raise SystemExit(f"nerveseg predict: {path} is neither an image file nor a folder")
    if not files:
        raise SystemExit("nerveseg predict: no image files found in " + ", ".join(args.inputs))
    name = args.model or registry.default_name()
    try:
        card = registry.card(name)
        check_tta(args.tta, card.task, name)  # an instance model with --tta flip: before any loading
    except ValueError as error:
        raise SystemExit(f"nerveseg predict: {error}") from None
    segmenter = apply_tta(Segmenter.from_card(card, backend=args.backend, device=args.device), args.tta)
    region = getattr(args, "region", None)
    auto = AutoRegions(files, series) if region == "auto" else None
    if region is not None and auto is None:
        segmenter.region = region
    out = Path(args.out)
    (out / "masks").mkdir(parents=True, exist_ok=True)
    (out / "overlays").mkdir(parents=True, exist_ok=True)
    done, failed, stopped = 0, [], None
    for path in tqdm(files, desc=f"predict ({segmenter.card.name})", unit="image"):
        try:
            image = read_image_file(path)
            if image.ndim == 3:
                image = cv2.cvtColor(image, cv2.COLOR_BGRA2RGB if image.shape[2] == 4 else cv2.COLOR_BGR2RGB)
            if auto is not None:
                segmenter.region = auto.region_for(path, image)
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


class AutoRegions:
    """``--region auto`` for files: the frames of each input (a folder, or the single files together) taken as a
    clip, one region per frame size, found from at most :data:`~..inference.region.AUTO_MAX_FRAMES` frames spread
    over the clip when the clip's first file is segmented, and printed with the reason."""

    def __init__(self, files, series):
        self.files = list(files)
        self.series = dict(series)
        self.found = {}

    def region_for(self, path, image):
        from ..imaging.region import AUTO_MAX_FRAMES, find_region

        shape = tuple(int(v) for v in image.shape[:2])
        key = (self.series.get(path, -1), shape)
        if key not in self.found:
            clip = [p for p in self.files if self.series.get(p, -1) == key[0]]
            picks = sorted({clip[int(i)] for i in _spread(len(clip), AUTO_MAX_FRAMES)} | {path})
            frames = [_read_quietly(p) for p in picks]  # all read alike (colour order included)
            frames = [f for f in frames if f is not None and tuple(f.shape[:2]) == shape] or [image]
            region, why = find_region(frames)
            where = path.parent if key[0] >= 0 else "the files given"
            print(f"nerveseg predict: image region {region.text()} (X,Y,W,H) of the {shape[1]} x {shape[0]} frames "
                  f"in {where}: {why}")
            self.found[key] = region
        return self.found[key]


def _spread(count: int, most: int):
    import numpy as np

    return np.unique(np.linspace(0, count - 1, min(count, most)).astype(int)) if count else []


def _read_quietly(path):
    """The image, or None when it cannot be read (its own turn reports that)."""
    from ..imaging.files import ImageFileError, read_image_file

    try:
        return read_image_file(path)
    except ImageFileError:
        return None
