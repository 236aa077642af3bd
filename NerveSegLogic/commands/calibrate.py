"""``nerveseg calibrate``: fit how sure a model says it is (per-frame presence) on a site's own labelled frames."""

from __future__ import annotations

import argparse

DESCRIPTION = """\
Fit a model's per-frame presence calibration and its drawing thresholds on labelled frames it was not trained on
(a site's corrected frames: an annotation store or any data set format 'evaluate' reads).

Each frame is segmented as the live path does it (backend auto); each class's presence score is its highest
probability in the frame. Platt scaling maps the score to a calibrated probability that the frame holds the class;
the live view then draws a class at and above --show, draws it as uncertain (outline only) from --uncertain, and
not at all below. Frames without the class are needed: accepted empty frames in a store, or --negatives RATE
windows cut where nothing is labelled.

Writes into --out: calibration.json (the presence block and the report: ECE before and after, reliability bins,
false-frame rate and recall at the thresholds) and reliability.png (the reliability diagram). --write stores the
block in a site model's card (shipped models are never modified: register a site model with 'nerveseg models
add', or copy the block from calibration.json)."""

EPILOG = """\
examples:
  nerveseg calibrate --model axillary-site --data project.nsdb --write
  nerveseg calibrate --model effnet2-unet --data path/to/labelled --negatives 1 --out calibration/effnet2"""


def register(subparsers) -> None:
    # The package's own imports inside functions here are lazy on purpose: registering a subcommand stays cheap: what
    # it runs loads only when it runs.
    from .train import add_data_arguments

    parser = subparsers.add_parser("calibrate", help="fit presence calibration and thresholds on labelled frames",
                                   description=DESCRIPTION, epilog=EPILOG,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="registered or site model name (see 'nerveseg models list')")
    add_data_arguments(parser)
    parser.add_argument("--out", default=None, help="report folder (default: calibration/<model>)")
    parser.add_argument("--negatives", type=float, default=0.0, metavar="RATE",
                        help="add about RATE windows per frame cut where nothing is labelled (frames without a "
                             "structure) (default: 0)")
    parser.add_argument("--show", type=float, default=None,
                        help="calibrated presence from which a structure is drawn (default: 0.5)")
    parser.add_argument("--uncertain", type=float, default=None,
                        help="calibrated presence from which it is drawn as uncertain (default: 0.2)")
    parser.add_argument("--write", action="store_true", help="store the fitted block in the site model's card")
    parser.add_argument("--backend", default="auto", help="auto, torch, onnx or onnx-int8 (default: auto, as live)")
    parser.add_argument("--threads", type=int, default=None, help="CPU threads (default: all)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.set_defaults(func=run)


def run(args) -> int:
    import json
    import sys
    from datetime import datetime, timezone
    from pathlib import Path

    from ..datasets.readers import open_dataset
    from ..inference import presence as pr
    from ..inference.backends import describe
    from ..inference.segmenter import load_segmenter
    from ..models import registry
    from ..models.card import write_card
    from ..models.user_models import sites_dir
    from ..train import calibrate
    from ..train.data import FrameStore
    from ..train.evaluate import evaluation_classes

    card = registry.card(args.model)
    site = card.path is not None and sites_dir() in Path(card.path).resolve().parents
    if args.write and not site:
        raise ValueError(f"{args.model} is a shipped model, which is never modified; register a site model with "
                         f"'nerveseg models add' and calibrate that, or leave out --write and copy the block from "
                         f"calibration.json")
    previous = card.raw.get("presence") or {}
    show = args.show if args.show is not None else pr.DEFAULT_SHOW
    uncertain = args.uncertain if args.uncertain is not None else pr.DEFAULT_UNCERTAIN
    if not 0.0 <= uncertain <= show <= 1.0:
        raise ValueError(f"thresholds: expected 0 <= --uncertain <= --show <= 1, got {uncertain} and {show}")

    dataset = open_dataset(Path(args.data), format=args.data_format, mapping=args.mapping)
    translation, scored, unlabelled = evaluation_classes(card.classes, dataset.classes, f"model {card.name}",
                                                         f"the data set {args.data}",
                                                         getattr(dataset, "_label_table", None))
    names = dataset.names()
    frames = FrameStore(dataset, translation, sorted(range(len(names)), key=lambda i: names[i]))
    if args.negatives:
        from ..train.negatives import negative_frames

        frames.frames.extend(negative_frames(frames.frames, seed=0, rate=float(args.negatives)))
    segmenter = load_segmenter(card, backend=args.backend, threads=args.threads)
    rows = calibrate.collect(segmenter, frames, scored, progress=not args.no_progress)
    fitted = {"data": str(args.data), "frames": len(rows), "negative_windows": len(frames) - len(names),
              "backend": describe(segmenter.backend), "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
              "command": "nerveseg " + " ".join(sys.argv[1:])}
    block, report = calibrate.fit(rows, show=show, uncertain=uncertain, fitted=fitted, previous=previous)
    if unlabelled:
        report["not_labelled"] = [c.key for c in unlabelled]
    out = Path(args.out or Path("calibration") / card.name)
    out.mkdir(parents=True, exist_ok=True)
    (out / "calibration.json").write_text(json.dumps({"presence": block, "report": report,
                                                      "rows": [vars(r) for r in rows]}, indent=2) + "\n")
    picture = calibrate.reliability_picture(report, out / "reliability.png", title=f"{card.name} on {args.data}")
    for line in calibrate.summary_lines(report):
        print(line)
    if unlabelled:
        print(f"not calibrated (the data does not label them): {', '.join(c.key for c in unlabelled)}")
    print(f"report: {out / 'calibration.json'}; reliability diagram: {picture}")
    if not block["calibration"]:
        print("nothing fitted: every labelled class lacks frames with or without it (add --negatives 1 or accepted "
              "empty frames)", file=sys.stderr)
        return 1
    if args.write:
        data = card.to_json()
        data["presence"] = block
        write_card(data, card.path)
        print(f"wrote the presence block into {card.path}")
    return 0
