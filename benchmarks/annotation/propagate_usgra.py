"""Propagation through recordings (issue 26 item 3): how far an accepted mask carries, and the corrections a
40-frame recording then needs.

    python benchmarks/annotation/propagate_usgra.py [--folds 0 1 2 3 4] [--speeds 2 5] [--length 40] [--min-ious 0.8 0.7 0.6 0]

Models: each fold's LiteMedSAM tuned on the other four blocks (runs/litemedsam/fold<i>/tuned.safetensors), so
no frame below was seen in training; prompts as `nerveseg annotate propagate` makes them (previous structure's box
grown 10 % and an include click at its most interior point; stop below predicted IoU --min-ious or when a structure
leaves the view). Every threshold of --min-ious is measured (default: the command's, propagate.MIN_IOU, then 0.7,
0.6 and 0: no IoU stop). A frame counts as carried when every class of the reference (nerve, vessel) has
Dice >= 0.8 against it (and, separately, the nerve alone).

1. usgra-seg as it is: the frames of each held-out block in name order are taken as one recording. From every
   frame as the accepted start, propagate (NerveSegLogic.annotate.propagate.carry, the command's step) with no IoU
   stop until a frame fails both tests, the structure leaves the view, the frame size changes (another recording:
   the command cannot prompt a frame of another size) or --max-steps; each step's lowest predicted IoU is kept, so
   every threshold is read off the same run (a threshold only stops earlier). The number of frames carried before
   the first failure (or stop). usgra-seg's neighbouring file numbers are mostly different moments or scans, not
   consecutive video frames: this is the hard case.
2. Sequences made by moving frames: a held-out frame (the middle one of its block) is moved frame by frame as a
   probe drifts (a smooth random walk of --speeds px per frame, up to 0.3 deg rotation and 0.3 % zoom per frame,
   fresh speckle noise on every frame), with its reference mask moved alike, for --length frames. Each frame is
   embedded once; for each threshold the sequence is imported into a fresh annotation store (the embeddings put in
   its cache) and `propagate` runs on it (the product code, end to end): frames carried before the first failure;
   then the corrections a recording needs: at the first frame that fails (or where propagation stopped) the
   annotator corrects it (its reference mask saved and accepted: one correction) and propagates from there, until
   the last frame. The accepted first frame is not counted as a correction.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]

from NerveSegLogic.imaging import overlap  # noqa: E402
from NerveSegLogic.train.promptable_eval import read_pair  # noqa: E402

TUNED = Path("runs/litemedsam")
CLASSES = {1: "nerve", 2: "blood_vessel"}
GOOD = 0.8


def frame_dice(prediction: np.ndarray, reference: np.ndarray) -> dict:
    out = {}
    for label, key in CLASSES.items():
        p, r = prediction == label, reference == label
        if r.any():
            out[key] = overlap.dice(p, r)
    return out


def ok(dice: dict, nerve_only: bool) -> bool:
    if nerve_only:
        return dice.get("nerve", 0.0) >= GOOD
    return bool(dice) and all(v >= GOOD for v in dice.values())


def fold_model(fold: int):
    from NerveSegLogic.train.promptable_eval import fold_segmenter

    weights = TUNED / f"fold{fold}" / "tuned.safetensors"
    if not weights.is_file():
        return None
    model = fold_segmenter(weights)
    model.model_sha256 = f"f{fold}" + "0" * 62  # the key of its embeddings in the sequences' stores
    return model


# ------------------------------------------------------------------------------------------- 1. usgra-seg order
def leading(steps, threshold: float, key: str) -> int:
    """Frames carried before the first failure when propagation stops below predicted IoU ``threshold``: the
    leading steps whose lowest predicted IoU reaches it and whose Dice passes (``key``: "all" or "nerve")."""
    count = 0
    for step in steps:
        if (step["min_iou"] is not None and step["min_iou"] < threshold) or not step[key]:
            break
        count += 1
    return count


def run_blocks(args, names, blocks, sha) -> list:
    """From every frame of each held-out block: carry with no IoU stop (only 'leaves the view' stops it) until both
    the all-classes and the nerve-only test have failed; each step's lowest predicted IoU is kept, so that every
    threshold of --min-ious is read off the same run (a higher threshold only stops earlier)."""
    from NerveSegLogic.annotate.propagate import carry, structures_of
    from NerveSegLogic.train.promptable_eval import embedding_file

    rows = []
    for fold in args.folds:
        model = fold_model(fold)
        if model is None:
            print(f"fold {fold}: no tuned model yet, skipped", flush=True)
            continue
        order = sorted(blocks[fold])[:args.limit or None]
        pairs = [read_pair(args.data / "images", args.data / "masks", names[i]) for i in order]
        embeddings = [np.load(embedding_file(TUNED, names[i], sha)).astype(np.float32) for i in order]
        for start in range(len(order) - 1):
            previous = structures_of(pairs[start][1], CLASSES)
            steps, reason = [], "end of the block"
            for j in range(start + 1, len(order)):
                image, reference = pairs[j]
                if image.shape != pairs[j - 1][0].shape:  # another recording: `propagate`'s prompts would fall
                    reason = "frame size changes"       # outside the frame (PromptError), so it ends here
                    break

                def predict(box, clicks, j=j, image=image):
                    return model.predict(embeddings[j], image.shape, box=box, points=clicks)

                carried, why = carry(previous, predict, min_iou=0.0)
                if not carried:
                    reason = why
                    break
                mask = np.zeros(image.shape, np.uint8)
                for label, region, _ in carried:
                    mask[region & (mask == 0)] = label
                dice = frame_dice(mask, reference)
                ious = [record["predicted_iou"] for _, _, record in carried if record["predicted_iou"] is not None]
                steps.append({"min_iou": min(ious) if ious else None, "all": ok(dice, False),
                              "nerve": ok(dice, True), "dice": {k: round(v, 3) for k, v in dice.items()}})
                if not steps[-1]["all"] and not steps[-1]["nerve"] or len(steps) >= args.max_steps:
                    reason = "Dice < 0.8" if len(steps) < args.max_steps else "max steps"
                    break
                previous = [(label, region) for label, region, _ in carried]
            adjacent = int(Path(names[order[start + 1]]).stem) - int(Path(names[order[start]]).stem) == 1
            same_size = pairs[start][1].shape == pairs[start + 1][1].shape
            copied = frame_dice(pairs[start][1], pairs[start + 1][1]) if same_size else None  # no model: copy it
            rows.append({"fold": fold, "start": names[order[start]], "steps": steps, "stop_without_iou": reason,
                         "next_is_adjacent_number": adjacent,
                         "copy_dice": None if copied is None else {k: round(v, 3) for k, v in copied.items()},
                         **{f"carried_all@{t:g}": leading(steps, t, "all") for t in args.min_ious},
                         **{f"carried_nerve@{t:g}": leading(steps, t, "nerve") for t in args.min_ious}})
        mine = [r for r in rows if r["fold"] == fold]
        print(f"fold {fold}: usgra-seg order, mean frames carried (all classes / nerve) at predicted IoU >= "
              + ", ".join(f"{t:g}: {np.mean([r[f'carried_all@{t:g}'] for r in mine]):.2f} / "
                          f"{np.mean([r[f'carried_nerve@{t:g}'] for r in mine]):.2f}" for t in args.min_ious),
              flush=True)
    return rows


# --------------------------------------------------------------------------------------- 2. moving sequences
def moving_sequence(image: np.ndarray, mask: np.ndarray, length: int, speed: float, seed: int):
    """``length`` (image, mask) pairs: the frame moved by a smooth random walk (see the module docstring)."""
    import cv2

    rng = np.random.default_rng(seed)
    h, w = image.shape
    position, velocity = np.zeros(2), np.zeros(2)
    angle = zoom = 0.0
    out = []
    for t in range(length):
        if t:
            velocity = 0.7 * velocity + 0.3 * rng.normal(0, speed, 2)
            norm = np.linalg.norm(velocity)
            if norm > 0:
                velocity *= speed / norm * min(1.5, max(0.5, norm / speed))
            position += velocity
            angle += rng.uniform(-0.3, 0.3)
            zoom += rng.uniform(-0.003, 0.003)
        matrix = cv2.getRotationMatrix2D((w / 2, h / 2), angle, 1.0 + zoom)
        matrix[:, 2] += position
        moved = cv2.warpAffine(image, matrix, (w, h), flags=cv2.INTER_LINEAR, borderValue=0)
        moved_mask = cv2.warpAffine(mask, matrix, (w, h), flags=cv2.INTER_NEAREST, borderValue=0)
        speckle = rng.gamma(8.0, 1 / 8.0, moved.shape)  # multiplicative speckle, mean 1
        moved = np.clip(moved.astype(np.float32) * speckle, 0, 255).astype(np.uint8)
        out.append((moved, moved_mask))
    return out


def corrections_run(sequence, embeddings, name, model, min_iou: float, nerve_only: bool) -> dict:
    """Import one moving sequence into a fresh store (its embeddings pre-filled), accept frame 0, run `propagate`
    (the product code) and correct where it fails or stops, to the end (see the module docstring)."""
    from NerveSegLogic.annotate.propagate import propagate
    from NerveSegLogic.store.database import AnnotationStore

    with tempfile.TemporaryDirectory() as folder, AnnotationStore(Path(folder) / "seq.nsdb") as store:
        ids = [store.add_frame(frame, f"{name}-moving", i).id for i, (frame, _) in enumerate(sequence)]
        for frame_id, embedding in zip(ids, embeddings):
            store.save_embedding(frame_id, model.model_sha256, embedding)
        truth = {frame_id: m for frame_id, (_, m) in zip(ids, sequence)}

        def accept_truth(frame_id):
            head = store.current(frame_id)
            classes = {k: v for k, v in CLASSES.items() if (truth[frame_id] == k).any()} or {1: "nerve"}
            v = store.save_mask(frame_id, truth[frame_id], classes, "annotator", "manual",
                                None if head is None else head.id)
            store.set_status(frame_id, "accepted", "annotator", v.id)

        accept_truth(ids[0])
        start, corrections, first_run, drafts_ok, drafts = 0, 0, None, 0, 0
        while True:
            report = propagate(store, model, ids[start], "propagate", min_iou=min_iou)
            carried, failure = 0, None
            for f in report.frames:
                dice = frame_dice(store.version(f.version_id).mask, truth[f.frame_id])
                if ok(dice, nerve_only):
                    carried += 1
                else:
                    failure = ids.index(f.frame_id)
                    break
            drafts += carried
            if first_run is None:
                nerve_carried = 0
                for f in report.frames:
                    if ok(frame_dice(store.version(f.version_id).mask, truth[f.frame_id]), True):
                        nerve_carried += 1
                    else:
                        break
                first_run = {"carried_all": carried, "carried_nerve": nerve_carried,
                             "propagated": len(report.frames), "stop": report.stop_reason}
            if failure is None:
                reached = start + len(report.frames)
                if reached >= len(ids) - 1:
                    break
                failure = reached + 1  # where it stopped: the annotator labels that frame
            corrections += 1
            accept_truth(ids[failure])
            start = failure
        return {**first_run, "corrections": corrections, "good_drafts": drafts}


def run_sequences(args, names, blocks) -> list:
    rows = []
    for fold in args.folds:
        model = fold_model(fold)
        if model is None:
            continue
        order = sorted(blocks[fold])
        name = names[order[len(order) // 2]]
        image, reference = read_pair(args.data / "images", args.data / "masks", name)
        for speed in args.speeds:
            sequence = moving_sequence(image, reference, args.length, speed, seed=fold * 100 + int(speed * 10))
            cpu0 = time.process_time()
            embeddings = [model.embed(frame).astype(np.float16) for frame, _ in sequence]  # as the store keeps them
            embed_cpu = time.process_time() - cpu0
            for min_iou in args.min_ious:
                cpu1 = time.process_time()
                result = corrections_run(sequence, embeddings, name, model, min_iou, args.nerve_only_corrections)
                rows.append({"fold": fold, "frame": name, "speed_px_per_frame": speed, "length": args.length,
                             "min_iou": min_iou, **result, "embed_cpu_s": round(embed_cpu, 1),
                             "propagate_cpu_s": round(time.process_time() - cpu1, 1)})
                print(f"fold {fold} {name} speed {speed} min IoU {min_iou:g}: carried {result['carried_all']} "
                      f"(nerve {result['carried_nerve']}) before the first failure; {result['corrections']} "
                      f"corrections for {args.length} frames", flush=True)
    return rows


def summarise(block_rows, sequence_rows, min_ious, speeds, length) -> dict:
    summary = {}
    if block_rows:
        adjacent = [r for r in block_rows if r["next_is_adjacent_number"]]
        order = {"starts": len(block_rows), "adjacent_number_starts": len(adjacent)}
        for t in min_ious:
            order[f"min_iou_{t:g}"] = {
                "carried_all_mean": round(float(np.mean([r[f"carried_all@{t:g}"] for r in block_rows])), 2),
                "carried_nerve_mean": round(float(np.mean([r[f"carried_nerve@{t:g}"] for r in block_rows])), 2),
                "carried_all_at_least_1": round(float(np.mean([r[f"carried_all@{t:g}"] >= 1
                                                                for r in block_rows])), 3),
                "carried_nerve_at_least_1": round(float(np.mean([r[f"carried_nerve@{t:g}"] >= 1
                                                                  for r in block_rows])), 3),
                "adjacent_carried_all_at_least_1": round(float(np.mean([r[f"carried_all@{t:g}"] >= 1
                                                                         for r in adjacent])), 3) if adjacent else None}
        copies = [r["copy_dice"] for r in block_rows if r["copy_dice"] is not None]
        order["copy_previous_reference"] = {  # the previous frame's reference mask as this frame's, no model
            "pairs": len(copies),
            "nerve_dice_mean": round(float(np.mean([c.get("nerve", 0.0) for c in copies])), 3) if copies else None,
            "nerve_dice_max": round(float(np.max([c.get("nerve", 0.0) for c in copies])), 3) if copies else None,
            "all_ok_share": round(float(np.mean([ok(c, False) for c in copies])), 3) if copies else None}
        firsts = [r["steps"][0] for r in block_rows if r["steps"]]
        order["first_step_nerve_dice_mean"] = round(float(np.mean([s["dice"].get("nerve", 0.0) for s in firsts])),
                                                    3) if firsts else None
        order["stops_without_iou"] = {why: sum(r["stop_without_iou"].startswith(why) for r in block_rows)
                                      for why in ("Dice < 0.8", "frame size changes", "the structure leaves",
                                                  "end of the block", "max steps")}
        order["first_step_all_ok_share"] = round(float(np.mean([s["all"] for s in firsts])), 3) if firsts else None
        order["first_step_nerve_ok_share"] = round(float(np.mean([s["nerve"] for s in firsts])), 3) if firsts else None
        summary["usgra_order"] = order
    for speed in speeds:
        for t in min_ious:
            mine = [r for r in sequence_rows if r["speed_px_per_frame"] == speed and r["min_iou"] == t]
            if mine:
                summary[f"moving_{speed:g}px_min_iou_{t:g}"] = {
                    "sequences": len(mine), "length": length,
                    "carried_all_mean": round(float(np.mean([r["carried_all"] for r in mine])), 1),
                    "carried_nerve_mean": round(float(np.mean([r["carried_nerve"] for r in mine])), 1),
                    "corrections_mean": round(float(np.mean([r["corrections"] for r in mine])), 1),
                    "corrections": [r["corrections"] for r in mine],
                    "good_drafts_mean": round(float(np.mean([r["good_drafts"] for r in mine])), 1),
                    "propagate_cpu_s_mean": round(float(np.mean([r["propagate_cpu_s"] for r in mine])), 1),
                    "carried_all": [r["carried_all"] for r in mine]}
    return summary


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data" / "usgra-seg")
    parser.add_argument("--folds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    parser.add_argument("--speeds", type=float, nargs="+", default=[2.0, 5.0])
    parser.add_argument("--length", type=int, default=40)
    parser.add_argument("--min-ious", type=float, nargs="+", default=None,
                        help="predicted-IoU stops to compare (default: 0.8 0.7 0.6 0 and propagate.MIN_IOU)")
    parser.add_argument("--max-steps", type=int, default=40, help="usgra-seg order: at most this many steps")
    parser.add_argument("--nerve-only-corrections", action="store_true",
                        help="count a frame as needing correction only when its nerve fails")
    parser.add_argument("--skip", choices=("blocks", "sequences"), nargs="*", default=[])
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "annotation" / "propagate.json")
    parser.add_argument("--runs", type=Path, default=TUNED, help="tune_litemedsam.py's --out (fold runs, embeddings)")
    parser.add_argument("--limit", type=int, default=0, help="only the first N frames of each block (smoke test)")
    parser.add_argument("--merge", type=Path, nargs="+", default=None,
                        help="no runs: join these outputs (e.g. one per fold, run side by side) into --out")
    args = parser.parse_args(argv)
    if args.merge:
        parts = [json.loads(path.read_text()) for path in args.merge]
        block_rows = [r for part in parts for r in part["usgra_order"]]
        sequence_rows = sorted((r for part in parts for r in part["moving"]),
                               key=lambda r: (r["fold"], r["speed_px_per_frame"], -r["min_iou"]))
        min_ious = parts[0]["min_ious"]
        speeds = sorted({r["speed_px_per_frame"] for r in sequence_rows})
        result = {"date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
                  "command": "python benchmarks/annotation/propagate_usgra.py " + " ".join(
                      argv if argv is not None else sys.argv[1:]),
                  "parts": [part["command"] for part in parts], "min_ious": min_ious,
                  "summary": summarise(block_rows, sequence_rows, min_ious, speeds,
                                       sequence_rows[0]["length"] if sequence_rows else args.length),
                  "usgra_order": block_rows, "moving": sequence_rows}
        args.out.write_text(json.dumps(result, indent=1) + "\n")
        print(json.dumps(result["summary"], indent=1))
        return 0
    globals()["TUNED"] = args.runs

    import torch

    torch.set_num_threads(1)
    from NerveSegLogic.annotate.propagate import MIN_IOU
    from NerveSegLogic.models import registry
    from NerveSegLogic.train.promptable_eval import folds_of, frame_names

    if args.min_ious is None:
        args.min_ious = sorted({MIN_IOU, 0.8, 0.7, 0.6, 0.0}, reverse=True)
    names = frame_names(args.data)
    blocks = folds_of(names, 5)
    sha = registry.card("litemedsam").weights["sha256"]
    block_rows = [] if "blocks" in args.skip else run_blocks(args, names, blocks, sha)
    sequence_rows = [] if "sequences" in args.skip else run_sequences(args, names, blocks)
    summary = summarise(block_rows, sequence_rows, args.min_ious, args.speeds, args.length)
    result = {"date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
              "command": "python benchmarks/annotation/propagate_usgra.py " + " ".join(argv if argv is not None else sys.argv[1:]),
              "min_ious": args.min_ious, "summary": summary, "usgra_order": block_rows, "moving": sequence_rows}
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps(summary, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
