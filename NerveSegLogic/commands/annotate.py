"""``nerveseg annotate``: the annotation store from the command line (import, pre-label, review, correct)."""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

DESCRIPTION = """\
Annotation correction on an annotation store: one SQLite file per project (created if missing), or for a team the
same store on a PostgreSQL server (--store postgresql://USER@HOST[:PORT]/DB). The store is append-only: every save
is a new version with author, UTC time, origin (model, manual, corrected), model name and card sha256, parent
version and status (draft, accepted, rejected, needs-review); nothing is overwritten.

  import SOURCE      frames from an image folder, a video, a Slicer .seq.nrrd or a NerveSeg recording folder
                     (its recorded masks come in as model versions); each frame once (pixel sha256)
  prelabel           a model's mask for every frame without one (progress bar), with its uncertainty;
                     --refine: each region's box prompts the promptable model, whose mask replaces the region
                     where it is confident (predicted IoU)
  queue              frames to review (draft, needs-review, unlabelled), most uncertain first
  status             frames per status and per annotator (--json keys: frames, by_status, by_annotator)
  accept / reject    decide frames (a new status version each)
  history FRAME      every version of a frame: who, when, what
  correct FRAME OP   a correction operation, saved as a new "corrected" version; OP prompt: a box and/or clicks
                     through the promptable model (LiteMedSAM), saved as a "prompt" version with its prompts
  embed              cache the promptable model's embedding of every frame, so a prompt costs the decoder only
  propagate          carry an accepted frame's mask through the next frames of its recording (draft
                     "propagated" versions), stopping where the promptable model is unsure or the structure leaves
  consensus          merge the latest accepted masks of different authors per frame (STAPLE or majority) into an
                     accepted "consensus" version; each annotator's sensitivity/specificity against it
  agreement          Dice per class between annotators on frames labelled twice
  restore FRAME V    a new version copying version V
  migrate            copy a store into a new one (--from project.nsdb --to postgresql://...), checked

FRAME is the frame id that queue/status/import print. The author defaults to $NERVESEG_AUTHOR, else the login
name. A save based on a version that is no longer current is refused (exit code 3) naming who saved the newer one.
"""

EPILOG = """\
examples:
  nerveseg annotate import recordings/subject07 --store project.nsdb --subject S07
  nerveseg annotate prelabel --store project.nsdb --model smistad-unet
  nerveseg annotate prelabel --store project.nsdb --model effnet2-unet --refine
  nerveseg annotate propagate --store project.nsdb --from 12 --count 20
  nerveseg annotate consensus --store project.nsdb --method staple
  nerveseg annotate queue --store project.nsdb --order uncertainty
  nerveseg annotate correct --store project.nsdb 12 paint --center 240 180 --radius 6 --label 1
  nerveseg annotate correct --store project.nsdb 12 prompt --class nerve --box 120,80,210,150 --point 160,120,+
  nerveseg annotate accept --store project.nsdb 12 13 14 --author alice
  nerveseg annotate history --store project.nsdb 12
  nerveseg annotate status --store project.nsdb --json
  nerveseg annotate migrate --from project.nsdb --to postgresql://alice@db.example.org:5432/nerveseg
  nerveseg annotate queue --store postgresql://alice@db.example.org/nerveseg
"""

EXIT_CONFLICT = 3


def _store_arg(parser) -> None:
    parser.add_argument("--store", required=True, metavar="DB",
                        help="annotation store: a file (created if missing) or postgresql://USER@HOST[:PORT]/DB "
                             "(password from ~/.pgpass or $PGPASSWORD)")


def _author_arg(parser) -> None:
    parser.add_argument("--author", default=None, help="who makes this change (default: $NERVESEG_AUTHOR, else "
                                                       "the login name)")


def register(subparsers) -> None:
    # The package's own imports inside functions here are lazy on purpose: registering a subcommand stays cheap: what
    # it runs loads only when it runs.
    from .predict import add_tta_argument

    parser = subparsers.add_parser("annotate", help="annotation store: import, pre-label, review, correct",
                                   description=DESCRIPTION, epilog=EPILOG,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
    actions = parser.add_subparsers(dest="annotate_action", metavar="ACTION")
    fmt = argparse.RawDescriptionHelpFormatter

    p = actions.add_parser("import", help="import frames", formatter_class=fmt,
                           description="Import frames from an image folder (PNG/JPEG/TIFF/BMP, natural name order), "
                                       "a video, a Slicer .seq.nrrd, one image, or a recording folder saved by "
                                       "'nerveseg demo' (a .mrml with its .seq.nrrd files).",
                           epilog="example:\n  nerveseg annotate import scans/S07.seq.nrrd --store project.nsdb")
    p.add_argument("source", help="folder, video, .seq.nrrd, image or recording folder")
    _store_arg(p)
    p.add_argument("--subject", default=None, help="pseudonymous subject id (default: the source's name)")
    p.add_argument("--spacing", type=float, nargs=2, metavar=("X_MM", "Y_MM"), default=None,
                   help="pixel size in mm for sources without geometry (folders, videos, images)")
    p.add_argument("--labels", default=None, metavar="1=nerve,2=blood_vessel",
                   help="class keys of a recording's mask labels when its files do not name them")
    _author_arg(p)

    p = actions.add_parser("prelabel", help="model masks for unlabelled frames", formatter_class=fmt,
                           description="Segment every frame that has no mask with a registered model and save the "
                                       "result as a 'model' draft version (model name, card sha256, mean entropy).",
                           epilog="example:\n  nerveseg annotate prelabel --store project.nsdb --model smistad-unet")
    _store_arg(p)
    p.add_argument("--model", required=True, help="registered model name (see 'nerveseg models list')")
    p.add_argument("--backend", choices=("torch", "onnx"), default="torch", help="inference backend (default torch)")
    p.add_argument("--device", default="cpu", help="torch device (default cpu)")
    p.add_argument("--weights", default=None, metavar="FILE.safetensors",
                   help="weights other than the card's (their sha256 is written into each version's comment, since "
                        "the card's sha256 then no longer pins them)")
    p.add_argument("--second-opinion", action="store_true",
                   help="also segment frames that so far have only other models' draft masks (for disagreement)")
    add_tta_argument(p)
    _refine_args(p)
    _author_arg(p)

    _propagate_parser(actions, fmt)
    _consensus_parser(actions, fmt)

    p = actions.add_parser("queue", help="frames to review", formatter_class=fmt,
                           description="Frames whose status is draft or needs-review, and unlabelled frames. "
                                       "Score: 1 - Dice of two models' masks when two models labelled the frame, "
                                       "else mean entropy / ln(number of classes); unscored frames last.",
                           epilog="example:\n  nerveseg annotate queue --store project.nsdb --json")
    _store_arg(p)
    p.add_argument("--order", choices=("uncertainty", "index"), default="uncertainty",
                   help="most uncertain first (default) or source order")
    p.add_argument("--limit", type=int, default=None, help="show at most this many")
    p.add_argument("--json", action="store_true", help="print a JSON list")

    p = actions.add_parser("status", help="counts per status and annotator", formatter_class=fmt,
                           description="Frames per current status (and unlabelled), and per annotator the frames "
                                       "they saved a version of (model pre-labels not counted as annotator work).",
                           epilog="example:\n  nerveseg annotate status --store project.nsdb --json")
    _store_arg(p)
    p.add_argument("--json", action="store_true", help="print JSON (keys frames, by_status, by_annotator, ...)")

    for name, help_text in (("accept", "accept frames' current masks"), ("reject", "reject frames' current masks")):
        p = actions.add_parser(name, help=help_text, formatter_class=fmt,
                               description=f"{help_text.capitalize()}: a new status version per frame, based on the "
                                           "version current when the command reads it.",
                               epilog=f"example:\n  nerveseg annotate {name} --store project.nsdb 3 4 5")
        _store_arg(p)
        p.add_argument("frames", nargs="+", type=int, metavar="FRAME", help="frame ids")
        p.add_argument("--comment", default=None, help="comment stored with each version")
        _author_arg(p)

    p = actions.add_parser("history", help="versions of a frame", formatter_class=fmt,
                           description="Every version of a frame, oldest first.",
                           epilog="example:\n  nerveseg annotate history --store project.nsdb 12")
    _store_arg(p)
    p.add_argument("frame", type=int, metavar="FRAME")
    p.add_argument("--json", action="store_true", help="print JSON")

    p = actions.add_parser("restore", help="restore an old version", formatter_class=fmt,
                           description="A new version of FRAME copying version VERSION (mask, classes, status).",
                           epilog="example:\n  nerveseg annotate restore --store project.nsdb 12 40")
    _store_arg(p)
    p.add_argument("frame", type=int, metavar="FRAME")
    p.add_argument("version", type=int, metavar="VERSION")
    _author_arg(p)

    p = actions.add_parser("agreement", help="Dice between annotators", formatter_class=fmt,
                           description="Dice per class per frame between annotators' own labels (manual, corrected "
                                       "or accepted by them), the mean per class, as a table. With --other, between "
                                       "two stores (frames matched by pixel sha256): independent double labelling.",
                           epilog="example:\n  nerveseg annotate agreement --store alice.nsdb --other bob.nsdb")
    _store_arg(p)
    p.add_argument("--other", default=None, metavar="DB", help="second annotator's store")
    p.add_argument("--json", action="store_true", help="print JSON")

    p = actions.add_parser("correct", help="correct a frame's mask", formatter_class=fmt,
                           description="Apply a correction to FRAME's current mask and save it as a new 'corrected' "
                                       "draft. Coordinates are pixels (x = column, y = row).",
                           epilog="examples:\n"
                                  "  nerveseg annotate correct --store p.nsdb 12 paint --center 240 180 --radius 6 "
                                  "--label 1\n"
                                  "  nerveseg annotate correct --store p.nsdb 12 polygon --points 10,10 40,10 40,30 "
                                  "--label 2\n"
                                  "  nerveseg annotate correct --store p.nsdb 12 ellipse --label 1")
    _store_arg(p)
    p.add_argument("frame", type=int, metavar="FRAME")
    _author_arg(p)
    p.add_argument("--class", dest="new_class", default=None, metavar="LABEL=KEY",
                   help="name a label the mask does not have yet, e.g. 3=artery")
    ops = p.add_subparsers(dest="op", metavar="OP", required=True)
    o = ops.add_parser("paint", help="round brush")
    o.add_argument("--center", type=float, nargs=2, required=True, metavar=("X", "Y"))
    o.add_argument("--radius", type=float, required=True, help="px")
    o.add_argument("--label", type=int, required=True)
    o = ops.add_parser("erase", help="round eraser")
    o.add_argument("--center", type=float, nargs=2, required=True, metavar=("X", "Y"))
    o.add_argument("--radius", type=float, required=True, help="px")
    o.add_argument("--label", type=int, default=None, help="erase only this class (default: all)")
    o = ops.add_parser("polygon", help="fill a polygon")
    o.add_argument("--points", nargs="+", required=True, metavar="X,Y", help="at least 3 vertices")
    o.add_argument("--label", type=int, required=True)
    o = ops.add_parser("fill-holes", help="fill holes per class")
    o.add_argument("--label", type=int, default=None, help="only this class (default: every class)")
    o = ops.add_parser("largest", help="keep the largest region per class")
    o.add_argument("--label", type=int, default=None, help="only this class (default: every class)")
    o = ops.add_parser("smooth", help="smooth outlines (opening then closing)")
    o.add_argument("--radius", type=int, default=2, help="structuring element radius, px (default 2)")
    o.add_argument("--label", type=int, default=None, help="only this class (default: every class)")
    o = ops.add_parser("ellipse", help="replace a class by its fitted ellipse")
    o.add_argument("--label", type=int, required=True)
    o = ops.add_parser("relabel", help="one class becomes another")
    o.add_argument("--from", dest="from_label", type=int, required=True)
    o.add_argument("--to", dest="to_label", type=int, required=True, help="0 deletes the class")
    p = actions.add_parser("migrate", help="copy a store into a new one (e.g. onto PostgreSQL)", formatter_class=fmt,
                           description="Copy every frame, mask, version (ids, parents, authors, times kept), prompt "
                                       "and cached embedding of one store into a new, empty one, in one transaction "
                                       "that commits only when the row counts, mask checksums and contents match "
                                       "the source; on any failure nothing is written. Either side may be a file or "
                                       "a PostgreSQL database (create it first, empty: createdb nerveseg).",
                           epilog="examples:\n"
                                  "  nerveseg annotate migrate --from project.nsdb --to "
                                  "postgresql://alice@db.example.org:5432/nerveseg\n"
                                  "  nerveseg annotate migrate --from postgresql://alice@db.example.org/nerveseg "
                                  "--to copy.nsdb")
    p.add_argument("--from", dest="source", required=True, metavar="STORE", help="the store to copy (file or URL)")
    p.add_argument("--to", dest="target", required=True, metavar="STORE",
                   help="a new file, or an empty PostgreSQL database (URL)")
    from NerveSegLogic.commands.annotate_prompt import add_embed_action, add_prompt_op  # issue 15
    add_prompt_op(ops)
    add_embed_action(actions)

    parser.set_defaults(func=run, annotate_parser=parser)


#: The defaults of NerveSegLogic.annotate.prelabel (REFINE_MIN_IOU, REFINE_GROW) and .propagate (MIN_IOU), written
#: here because registering the command must not import those modules (they import OpenCV); a test keeps them equal.
REFINE_MIN_IOU, REFINE_GROW, PROPAGATE_MIN_IOU = 0.80, 0.10, 0.60


def _refine_args(p) -> None:
    p.add_argument("--refine", action="store_true",
                   help="refine each region with the promptable model: the region's box (grown a little) prompts "
                        "it, and its mask replaces the region where its predicted IoU reaches --min-iou")
    p.add_argument("--refine-model", default=None, metavar="NAME",
                   help="promptable model for --refine (default: the default promptable model)")
    p.add_argument("--min-iou", type=float, default=REFINE_MIN_IOU,
                   help=f"--refine: least predicted IoU for the promptable mask to replace a region "
                        f"(default {REFINE_MIN_IOU})")
    p.add_argument("--grow", type=float, default=REFINE_GROW,
                   help=f"--refine: grow each region's box by this share of its size per side (default {REFINE_GROW})")


def _propagate_parser(actions, fmt) -> None:
    from NerveSegLogic.commands.annotate_prompt import _model_args

    MIN_IOU = PROPAGATE_MIN_IOU

    p = actions.add_parser("propagate", help="carry an accepted mask through the next frames", formatter_class=fmt,
                           description="From the accepted frame FRAME, prompt each next frame of its recording (same "
                                       "source, next index) with the previous mask's boxes and a point inside each "
                                       "structure, and save the result as a draft 'propagated' version with its "
                                       "prompts. Stops where the model's predicted IoU falls below --min-iou, a "
                                       "structure leaves the view, a frame is already accepted, or at --to/--count.",
                           epilog="examples:\n  nerveseg annotate propagate --store p.nsdb --from 12 --count 20\n"
                                  "  nerveseg annotate propagate --store p.nsdb --from 12 --to 40 --class nerve")
    _store_arg(p)
    p.add_argument("--from", dest="from_frame", type=int, required=True, metavar="FRAME",
                   help="frame id of the accepted mask to carry")
    end = p.add_mutually_exclusive_group()
    end.add_argument("--to", dest="to_frame", type=int, default=None, metavar="FRAME",
                     help="last frame to reach (same recording)")
    end.add_argument("--count", type=int, default=None, metavar="N", help="at most N frames")
    p.add_argument("--class", dest="carry_classes", action="append", default=None, metavar="KEY",
                   help="carry only this class (repeatable; default: every class the promptable model segments)")
    p.add_argument("--min-iou", type=float, default=MIN_IOU,
                   help=f"stop where the predicted IoU of a structure falls below this (default {MIN_IOU})")
    _model_args(p)
    _author_arg(p)


def _consensus_parser(actions, fmt) -> None:
    p = actions.add_parser("consensus", help="merge several annotators' accepted masks", formatter_class=fmt,
                           description="Per frame, merge the latest accepted masks of different authors class by class "
                                       "(SimpleITK STAPLE, or majority vote) into an accepted 'consensus' version "
                                       "that names its sources; report each annotator's sensitivity and "
                                       "specificity against it. Frames with one author are listed and left alone.",
                           epilog="example:\n  nerveseg annotate consensus --store project.nsdb --method staple")
    _store_arg(p)
    p.add_argument("--method", choices=("staple", "majority"), default="staple",
                   help="STAPLE (default; probability >= 0.5) or majority (more than half of the authors)")
    p.add_argument("--frames", type=int, nargs="+", default=None, metavar="FRAME", help="only these frames")
    p.add_argument("--json", action="store_true", help="print JSON")
    _author_arg(p)


# ------------------------------------------------------------------------------------------------ running

def run(args) -> int:
    from ..store.database import AnnotationStore, ConflictError, StoreError, database_errors

    action = getattr(args, "annotate_action", None)
    if action is None:
        args.annotate_parser.print_help()
        return 2
    from ..store.location import redacted

    where = (f"{redacted(args.source)} -> {redacted(args.target)}" if action == "migrate"
             else redacted(getattr(args, "store", "")))
    try:
        if action == "migrate":
            return _migrate(args)
        with AnnotationStore(args.store) as store:
            return _ACTIONS[action](store, args)
    except ConflictError as error:
        print(f"conflict: {error}", file=sys.stderr)
        return EXIT_CONFLICT
    except KeyError as error:
        print(f"error: {error.args[0] if error.args else error}", file=sys.stderr)
        return 2
    except (StoreError, ValueError, OSError, TypeError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    except database_errors() as error:  # a full or read-only disk, a locked or damaged file, a refusing server: one
        reason = " ".join(str(error).split())  # line, not a traceback
        print(f"error: annotation store {where}: {reason}", file=sys.stderr)
        return 1


def _migrate(args) -> int:
    from ..store.migrate import migrate

    def progress(table, rows):
        print(f"\r{table}: {rows} rows", end="", file=sys.stderr, flush=True)

    report = migrate(args.source, args.target, progress=progress if sys.stderr.isatty() else None)
    if sys.stderr.isatty():
        print(file=sys.stderr)
    print(report.summary())
    return 0


def _author(args) -> str:
    from ..store.database import default_author

    return args.author or default_author()


def _parse_labels(text):
    if not text:
        return None
    out = {}
    for part in text.split(","):
        label, sep, key = part.partition("=")
        if not sep or not label.strip().isdigit() or not key.strip():
            raise ValueError(f"--labels: expected LABEL=KEY pairs like 1=nerve,2=blood_vessel, got {part!r}")
        out[int(label)] = key.strip()
    return out


def _import(store, args) -> int:
    from NerveSegLogic.annotate.importers import import_source

    report = import_source(store, args.source, subject=args.subject, spacing_mm=args.spacing,
                           author=_author(args), classes=_parse_labels(args.labels), progress=True)
    for name, why in report.unreadable:  # the import went on past them: say which, and fail the command
        print(f"error: skipped {name}: {why}", file=sys.stderr)
    print(report.summary(), file=sys.stderr if report.unreadable else sys.stdout)
    if report.frame_ids:
        print(f"frame ids {min(report.frame_ids)}..{max(report.frame_ids)}")
    return 1 if report.unreadable else 0


def _prelabel(store, args) -> int:
    import torch

    from NerveSegLogic.annotate.prelabel import prelabel
    from NerveSegLogic.checksums import sha256_file
    from NerveSegLogic.inference.backends import apply_tta, check_tta
    from NerveSegLogic.inference.segmenter import Segmenter
    from NerveSegLogic.models import registry

    torch.set_num_threads(max(1, min(4, torch.get_num_threads())))
    try:
        card = registry.card(args.model)
        check_tta(args.tta, card.task, args.model)  # before the weights are loaded
        segmenter = apply_tta(Segmenter.from_card(card, backend=args.backend, device=args.device,
                                                  weights_path=args.weights), args.tta)
    except (RuntimeError, ValueError) as error:  # WeightsError (missing/corrupt weights), a device torch cannot use
        # or --tta flip on an instance model
        print(f"error: {error}", file=sys.stderr)
        return 1
    refiner = None
    if args.refine:
        from NerveSegLogic.annotate.prelabel import PrelabelRefiner
        from NerveSegLogic.commands.annotate_prompt import load_model

        try:
            refiner = PrelabelRefiner(store, load_model(args.refine_model, "onnx", 0), grow=args.grow,
                                      min_iou=args.min_iou)
        except (RuntimeError, ValueError, KeyError) as error:  # not promptable, weights missing, bad threshold
            print(f"error: --refine: {error.args[0] if isinstance(error, KeyError) else error}", file=sys.stderr)
            return 1
    comment = None
    if args.weights:
        comment = f"weights {Path(args.weights).name} sha256 {sha256_file(Path(args.weights))}"
    report = prelabel(store, segmenter, _author(args), second_opinion=args.second_opinion, progress=True,
                      comment=comment, refiner=refiner)
    print(f"{len(report.version_ids)} frames pre-labelled by {report.model_name} "
          f"(card sha256 {report.model_sha256 or 'unknown'}"
          + (f"; {segmenter.describe()}" if args.tta != "none" else "") + ")"
          + (f"; {len(report.skipped)} skipped (labelled meanwhile)" if report.skipped else ""))
    if refiner is not None:
        print(f"refined by {report.refined_by}: {report.regions_replaced} region(s) replaced, "
              f"{report.regions_kept} kept (predicted IoU < {refiner.min_iou:g})")
    return 0


def _propagate(store, args) -> int:
    from NerveSegLogic.annotate.propagate import PropagationError, propagate
    from NerveSegLogic.commands.annotate_prompt import load_model

    store.frame(args.from_frame)  # KeyError names an unknown frame before the model loads
    try:
        model = load_model(args.model, args.backend, args.threads)
    except (RuntimeError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    if args.click_mode:
        model.click_mode = args.click_mode

    def progress(done: int, total: int) -> None:
        print(f"\rpropagating {done}/{total}", end="", file=sys.stderr, flush=True)

    try:
        report = propagate(store, model, args.from_frame, _author(args), to_frame=args.to_frame, count=args.count,
                           class_keys=args.carry_classes, min_iou=args.min_iou, progress=progress)
    except PropagationError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    if report.frames:
        print(file=sys.stderr)
    for f in report.frames:
        ious = ", ".join(f"{s['class']} {s['predicted_iou']:.2f}" if s["predicted_iou"] is not None else s["class"]
                         for s in f.structures)
        print(f"frame {f.frame_id} (#{f.index}): version {f.version_id} propagated (predicted IoU {ious})")
    print(report.summary())
    return 0


def _consensus(store, args) -> int:
    from NerveSegLogic.annotate.consensus import consensus

    report = consensus(store, _author(args), method=args.method, frame_ids=args.frames)
    print(json.dumps(report.as_dict(), indent=2) if args.json else report.table())
    return 0


def _queue(store, args) -> int:
    from NerveSegLogic.annotate.queue import review_queue

    entries = review_queue(store, order=args.order)
    if args.limit is not None:
        entries = entries[: args.limit]
    if args.json:
        print(json.dumps([e.as_dict() for e in entries], indent=2))
        return 0
    if not entries:
        print("nothing to review")
        return 0
    print(f"{'frame':>6}  {'status':<12} {'score':>6} {'entropy':>8} {'1-Dice':>7}  source[index]")
    for e in entries:
        print(f"{e.frame_id:>6}  {e.status:<12} {_num(e.score):>6} {_num(e.uncertainty):>8} "
              f"{_num(e.disagreement):>7}  {e.source}[{e.index}]")
    return 0


def _num(value) -> str:
    return "-" if value is None else f"{value:.3f}"


def status_summary(store) -> dict:
    """Counts for ``annotate status``: frames, by_status (current status, "unlabelled" too), by_annotator (per
    author: frames they saved a version of, versions, frames whose current version is theirs and accepted),
    by_subject, models (model name -> frames it pre-labelled). A model's own draft save is not annotator work."""
    from ..store.database import STATUSES, UNLABELLED

    frames = store.frames()
    by_status = {s: 0 for s in STATUSES + (UNLABELLED,)}
    current = {v.frame_id: v for v in store.summaries(current_only=True)}
    by_subject: dict = {}
    for f in frames:
        v = current.get(f.id)
        by_status[v.status if v else UNLABELLED] += 1
        by_subject[f.subject or ""] = by_subject.get(f.subject or "", 0) + 1
    by_annotator: dict = {}
    models: dict = {}
    for v in store.summaries():
        if v.origin == "model" and v.status == "draft":
            models.setdefault(v.model_name, set()).add(v.frame_id)
            continue
        entry = by_annotator.setdefault(v.author, {"frames": set(), "versions": 0, "accepted": 0, "rejected": 0})
        entry["frames"].add(v.frame_id)
        entry["versions"] += 1
    for v in current.values():
        if v.author in by_annotator and v.status in ("accepted", "rejected"):
            by_annotator[v.author][v.status] += 1
    for entry in by_annotator.values():
        entry["frames"] = len(entry["frames"])
    return {"store": str(store.path), "frames": len(frames), "by_status": by_status,
            "by_annotator": dict(sorted(by_annotator.items())), "by_subject": dict(sorted(by_subject.items())),
            "models": {k: len(v) for k, v in sorted(models.items())}}


def _status(store, args) -> int:
    summary = status_summary(store)
    if args.json:
        print(json.dumps(summary, indent=2))
        return 0
    print(f"{summary['frames']} frames in {summary['store']}")
    for status, count in summary["by_status"].items():
        print(f"  {status:<13} {count}")
    if summary["by_annotator"]:
        print("annotators (frames touched, versions, current accepted, current rejected):")
        for author, e in summary["by_annotator"].items():
            print(f"  {author:<20} {e['frames']:>5} {e['versions']:>6} {e['accepted']:>5} {e['rejected']:>5}")
    if summary["models"]:
        print("models (frames pre-labelled): " + ", ".join(f"{k} {v}" for k, v in summary["models"].items()))
    return 0


def _decide(store, args) -> int:
    from ..store.database import ConflictError

    status = "accepted" if args.annotate_action == "accept" else "rejected"
    author, failures = _author(args), 0
    for frame_id in args.frames:
        current = store.current(frame_id)
        if current is None:
            print(f"frame {frame_id}: no mask yet, nothing to {args.annotate_action}", file=sys.stderr)
            failures += 1
            continue
        try:
            version = store.set_status(frame_id, status, author, current.id, comment=args.comment)
        except ConflictError as error:
            print(f"conflict: {error}", file=sys.stderr)
            failures += 1
            continue
        print(f"frame {frame_id}: version {version.id} {status} by {author}")
    return 0 if failures == 0 else 1


def _history(store, args) -> int:
    from NerveSegLogic.annotate.session import describe_history

    versions = store.summaries(frame_id=store.frame(args.frame).id)
    if args.json:
        print(json.dumps([{**v.__dict__, "classes": {str(k): c for k, c in v.classes.items()}} for v in versions],
                         indent=2))
        return 0
    record = store.frame(args.frame)
    print(f"frame {record.id}: {record.source}[{record.index}] subject {record.subject} "
          f"{record.width}x{record.height}")
    if not versions:
        print("  no versions yet")
    for entry, v in zip(describe_history(versions), versions):
        model = f" model {v.model_name} ({(v.model_sha256 or 'no sha')[:12]})" if v.model_name else ""
        unc = f" entropy {v.uncertainty:.3f}" if v.uncertainty is not None else ""
        note = f"  \"{v.comment}\"" if v.comment else ""
        print(f"  v{v.id:<5} {v.created}  {v.author:<16} {v.origin:<9} {v.status:<12} parent "
              f"{v.parent_id if v.parent_id is not None else '-'}{model}{unc}  [{entry.change}]{note}")
    return 0


def _restore(store, args) -> int:
    current = store.current(args.frame)
    if current is None:
        raise ValueError(f"frame {args.frame} has no versions to restore")
    version = store.restore(args.frame, args.version, _author(args), current.id)
    print(f"frame {args.frame}: version {version.id} restores version {args.version}")
    return 0


def _agreement(store, args) -> int:
    from NerveSegLogic.annotate.agreement import agreement, agreement_between_stores
    from ..store.database import AnnotationStore

    if args.other:
        with AnnotationStore(args.other) as other:
            report = agreement_between_stores(store, other)
    else:
        report = agreement(store)
    print(report.to_json() if args.json else report.table())
    return 0


def _correct(store, args) -> int:
    from NerveSegLogic.annotate.corrections import NothingChanged, apply_correction

    if args.op == "prompt":  # a box and/or clicks through the promptable model (commands/annotate_prompt.py)
        from NerveSegLogic.commands.annotate_prompt import run_prompt

        return run_prompt(store, args, _author(args))
    params = {k: getattr(args, k) for k in ("center", "radius", "label", "from_label", "to_label")
              if hasattr(args, k)}
    if args.op == "polygon":
        params["points"] = [_point(p) for p in args.points]
    if "center" in params:
        params["center"] = tuple(params["center"])
    classes = _parse_labels(args.new_class)
    current = store.current(args.frame)
    try:
        version = apply_correction(store, args.frame, args.op, _author(args), current.id if current else None,
                                   classes=classes, **params)
    except NothingChanged as unchanged:  # saving would only turn an accepted frame back into a draft
        print(f"frame {args.frame}: {unchanged}")
        return 0
    changed = int((version.mask != (current.mask if current else 0)).sum())
    print(f"frame {args.frame}: version {version.id} ({args.op}, {changed} pixels changed)")
    return 0


def _point(text: str):
    try:
        x, y = (float(v) for v in text.split(","))
    except ValueError:
        raise ValueError(f"--points: expected X,Y pairs like 10,20, got {text!r}") from None
    if not (math.isfinite(x) and math.isfinite(y)):
        raise ValueError(f"--points: {text!r} is not a pair of finite numbers of pixels")
    return (x, y)


_ACTIONS = {"import": _import, "prelabel": _prelabel, "queue": _queue, "status": _status, "accept": _decide,
            "reject": _decide, "history": _history, "restore": _restore, "agreement": _agreement,
            "correct": _correct, "embed": lambda store, args: _embed(store, args), "propagate": _propagate,
            "consensus": _consensus}


def _embed(store, args) -> int:
    from NerveSegLogic.commands.annotate_prompt import run_embed

    return run_embed(store, args)
