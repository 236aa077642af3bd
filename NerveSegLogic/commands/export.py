"""``nerveseg export``: write a labelled cohort from the annotation store in a format training tools read.

Registering imports nothing heavy; the store, the writers and OpenCV are imported when the command runs.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

FORMATS = ("nnunet", "coco", "labelme", "masks", "slicer")

DESCRIPTION = """\
Export frames of an annotation store (or convert a labelled data set) to:
  nnunet   nnU-Net v2 raw (dataset.json, imagesTr/CASE_0000.png, labelsTr/CASE.png, imagesTs/, labelsTs/)
  coco     COCO instance JSON per split (one instance per connected region, RLE masks) + PNG images
  labelme  one Labelme JSON (polygons) + PNG per frame
  masks    image/mask pairs with palette masks: PNG (usgra-seg layout) or, with --image-format tif, TIFF
           (Kaggle layout CASE.tif + CASE_mask.tif)
  slicer   CASE.nrrd + CASE.seg.nrrd per frame (3D Slicer segmentations with terminology)

Selection: frames whose CURRENT annotation version has one of --status (default accepted). Classes can be kept
(--classes, which also sets their label order) and merged (--map). Splits are by subject (frames without one by
recording), reproducible from --seed and stratified by block region where frames record it; no subject is ever in
two splits. --deidentify pseudonymises subjects and recordings with HMAC-SHA256 and a secret salt kept OUTSIDE the
export (--salt-file, created if missing; default: the store's path + .salt), keeps only allow-listed metadata and
blanks the screen outside the ultrasound sector (found automatically; a check picture is written beside the
export). Everything goes into a temporary folder beside --out that is renamed into place at the end, so an
interrupted export leaves nothing; an existing --out is replaced only with --force. manifest.json lists every
file with its sha256 and where each frame came from; README.md is the data set card.

The last line printed on success names the folder and the frames per split."""

EPILOG = """\
examples:
  nerveseg export --store annotations.db --format nnunet --out Dataset501_Nerve
  nerveseg export --store annotations.db --format coco --out cohort-coco --status draft,accepted --split 80,10,10 --seed 7
  nerveseg export --store annotations.db --format masks --out cohort --classes nerve,vessel --map artery=vessel,vein=vessel
  nerveseg export --store annotations.db --format labelme --out share --deidentify --salt-file ~/.nerveseg/salt --sector crop
  nerveseg export --data Resources/Sample --format slicer --out sample-slicer"""


def register(subparsers) -> None:
    parser = subparsers.add_parser("export", help="export a labelled cohort (nnU-Net, COCO, Labelme, masks, Slicer)",
                                   description=DESCRIPTION, epilog=EPILOG,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--store", metavar="DB", help="annotation store (SQLite file) to export from")
    source.add_argument("--data", metavar="PATH",
                        help="a labelled data set in any readable format, to convert instead (all its frames)")
    parser.add_argument("--format", required=True, choices=FORMATS, help="output format")
    parser.add_argument("--out", required=True, metavar="DIR", help="folder to create (must not exist unless --force)")
    parser.add_argument("--status", default="accepted",
                        help="comma-separated statuses of the current version to export (default accepted)")
    parser.add_argument("--prefer", choices=("current", "consensus"), default="current",
                        help="--store: export each frame's current version (default), or its latest consensus version "
                             "('nerveseg annotate consensus') where it has one")
    parser.add_argument("--split", default="70,15,15", metavar="TRAIN,VAL,TEST",
                        help="target share of subjects per split (default 70,15,15)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the subject shuffle (default 0)")
    parser.add_argument("--classes", default=None, metavar="A,B",
                        help="classes to keep, in output label order (default: every class met)")
    parser.add_argument("--map", default=None, metavar="FROM=TO,...",
                        help="merge classes on the way out, e.g. artery=vessel,vein=vessel")
    parser.add_argument("--deidentify", action="store_true",
                        help="pseudonymise subjects, keep allow-listed metadata only, drop dates, blank outside the "
                             "sector (unless --sector says otherwise)")
    parser.add_argument("--salt-file", default=None, metavar="FILE",
                        help="secret salt for the pseudonyms, kept outside the export; created if missing "
                             "(default with --store: DB.salt)")
    parser.add_argument("--sector", default=None, choices=("crop", "blank", "none"),
                        help="what to do outside the ultrasound sector (default: blank with --deidentify, else none)")
    parser.add_argument("--force", action="store_true", help="replace an existing --out")
    parser.add_argument("--image-format", default="png", choices=("png", "tif"),
                        help="file type for --format masks (default png)")
    parser.add_argument("--title", default="NerveSeg ultrasound cohort", help="data set title for the card")
    parser.add_argument("--license", default=None, metavar="TEXT",
                        help="license of the store's own recordings, for the data set card")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.set_defaults(func=run)


def _parse_map(text):
    mapping = {}
    for item in (text or "").split(","):
        if not item.strip():
            continue
        if "=" not in item:
            raise ValueError(f"--map item {item!r}: expected FROM=TO, e.g. artery=vessel")
        source, target = (part.strip() for part in item.split("=", 1))
        mapping[source] = target
    return mapping


def run(args: argparse.Namespace) -> int:
    """Export; 0 on success, 1 when the request or the data are wrong (nothing is left at --out then)."""
    # The package's own imports inside functions here are lazy on purpose: registering a subcommand stays cheap: what
    # it runs loads only when it runs.
    from ..store.database import StoreError
    from NerveSegLogic.datasets.dataset import DatasetError
    from NerveSegLogic.datasets.export import (ExportError, ExportOptions, export_cohort, frames_from_dataset,
                                               frames_from_store)
    from NerveSegLogic.datasets.splits import parse_fractions

    log = logging.getLogger("nerveseg.export")
    try:
        statuses = tuple(s.strip() for s in args.status.split(",") if s.strip())
        salt_file = args.salt_file
        if args.deidentify and salt_file is None:
            if not args.store:
                raise ExportError("--deidentify with --data needs --salt-file (a secret kept outside the export)")
            salt_file = f"{args.store}.salt"
        options = ExportOptions(
            format=args.format, statuses=statuses, fractions=parse_fractions(args.split), seed=args.seed,
            classes=[c.strip() for c in args.classes.split(",") if c.strip()] if args.classes else None,
            class_map=_parse_map(args.map), deidentify=args.deidentify,
            salt_file=Path(salt_file).expanduser() if salt_file else None,
            sector=args.sector or ("blank" if args.deidentify else "none"), force=args.force,
            image_format=args.image_format, title=args.title, license_text=args.license,
            progress=not args.no_progress)
        if args.store:
            from ..store.database import AnnotationStore

            from ..store.location import is_url

            if not is_url(args.store) and not Path(args.store).is_file():
                raise ExportError(f"{args.store}: no such annotation store")
            with AnnotationStore(args.store) as store:
                frames = frames_from_store(store, statuses, prefer=args.prefer)
                log.info("%d frames selected from %s (status %s)", len(frames), args.store, ", ".join(statuses))
                result = export_cohort(frames, Path(args.out), options)
        else:
            from NerveSegLogic.datasets.readers import open_dataset

            frames = frames_from_dataset(open_dataset(args.data))
            result = export_cohort(frames, Path(args.out), options)
    except (ExportError, DatasetError, StoreError, ValueError, OSError) as error:
        print(f"nerveseg export: {error}", file=sys.stderr)
        return 1
    for picture in result.check_pictures:
        print(f"sector check picture (look at it before sharing the export; it shows the ORIGINAL frames, keep it "
              f"private): {picture}")
    print(f"{result.seconds:.1f} s, {sum(result.counts.values()) / max(result.seconds, 1e-9):.1f} frames/s; "
          f"manifest: {result.manifest}")
    print(result.summary())
    return 0
