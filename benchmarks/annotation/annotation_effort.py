"""What an annotator spends (issue 26 item 5): interactions and CPU seconds until Dice >= 0.9, per path.

    python benchmarks/annotation/annotation_effort.py [--folds 0 1 2 3 4] [--out benchmarks/annotation/annotation_effort.json]

A simulated annotator labels every structure (connected region >= 50 px of the nerve or the vessel class of the
reference mask) of every frame of the CV blocks, with each fold's held-out models (the LiteMedSAM tuned on the other
four blocks, runs/litemedsam/fold<i>; the semantic effnet2-unet trained on them, runs/adapt/base/fold<i>),
until the structure's Dice against the reference reaches 0.9. Interactions:

- **paint**: brush strokes from an empty mask, each a disc at the most interior point of the largest error region,
  exactly as large as fits in it (the optimistic brush of benchmarks/annotation/prompted.md), until Dice >= 0.9 (at most
  MAX_STROKES: a structure not reached by then is a failure, counted at the cap).
- **box + clicks**: a box around the structure (each side off by a random 0-10 % of its size, seeded) is one
  interaction; then clicks (each one interaction) at the largest error region's most interior point, given to the
  tuned model as point tokens, up to 5; at any point the annotator may switch to paint strokes, on the model's mask
  or (one more interaction: clear it) from an empty mask. The cheapest of these choices is counted: an annotator who
  knows when clicking stops paying.
- **refined pre-label + clicks**: the semantic model's pre-label refined by the tuned model (`prelabel --refine`,
  default threshold); the pre-label's region with the largest overlap with the structure is taken as it is (0
  interactions) when its Dice >= 0.9; else the cheapest of: paint strokes on it, its box (grown 10 %, free: the
  model drew it) plus clicks and paint as above, or ignoring it (a box of one's own, clicks, paint). A structure the
  pre-label missed costs a box and clicks. Each pre-label region (>= 50 px) on no reference structure of its class
  costs one more interaction (deleting the island), charged to the frame.
- **propagation**: the previous frame of the block (name order) is taken as accepted, its reference structures are
  carried to this frame (`propagate`'s step: box grown 10 % + an interior click, each structure on its own), dropped
  where the predicted IoU is below PROPAGATE_STOP (0.8, the command's default when measured; now 0.6); the carried region overlapping the
  structure most is then handled like a pre-label region, false carried regions likewise. A block's first frame, a
  frame whose previous frame has another size (another recording; the command cannot prompt across sizes), or a
  structure nothing was carried to, costs a box and clicks. **propagation_any_iou**: the same without the IoU stop.
  usgra-seg's neighbouring files are mostly not consecutive video frames, so this is propagation's hard case
  (benchmarks/annotation/propagate.md measures moving sequences too).

Accepting a frame (one key) is common to every path and not counted. CPU seconds per frame: one thread, the model
work the path runs for the frame (semantic model, image embedding, every decoder call, including the clicks of the
options not taken), measured with process time; the embedding (cached on disk for speed) is charged at its median
measured here on --embed-samples frames.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

#: The propagation path's predicted-IoU stop: propagate.MIN_IOU when annotation_effort.md was measured (0.8); the
#: command's default is 0.6 since (benchmarks/annotation/propagate.md). The 'no IoU stop' row shows the other end.
PROPAGATE_STOP = 0.8

ROOT = Path(__file__).resolve().parents[2]

from NerveSegLogic.train.promptable_eval import dice, jittered_box, next_click, read_pair, structures  # noqa: E402

GOAL = 0.9
MAX_CLICKS = 5
MAX_STROKES = 40
CLASSES = {1: "nerve", 2: "blood_vessel"}
PATHS = ("paint", "box_clicks", "refined_prelabel_clicks", "propagation", "propagation_any_iou")


def paint_until(mask: np.ndarray, reference: np.ndarray, goal: float = GOAL, cap: int = MAX_STROKES):
    """Perfect-brush strokes (see the module docstring) from ``mask`` until Dice >= goal; returns (strokes,
    reached): ``cap`` strokes and False when the goal was not reached within the cap."""
    import cv2

    ys, xs = np.nonzero(mask | reference)
    if len(ys):  # work in the box of both, 2 px margin: the same strokes, faster (nothing happens outside it)
        y0, x0 = max(0, ys.min() - 2), max(0, xs.min() - 2)
        y1, x1 = min(mask.shape[0], ys.max() + 3), min(mask.shape[1], xs.max() + 3)
        mask, reference = mask[y0:y1, x0:x1], reference[y0:y1, x0:x1]
    mask = mask.copy()
    yy, xx = np.ogrid[:reference.shape[0], :reference.shape[1]]
    for strokes in range(cap + 1):
        if dice(mask, reference) >= goal:
            return strokes, True
        if strokes == cap:
            break
        click = next_click(mask, reference)
        if click is None:
            break
        x, y, include = click
        errors = (reference & ~mask) if include else (mask & ~reference)
        distance = cv2.distanceTransform(np.pad(errors, 1).astype(np.uint8), cv2.DIST_L2, 5)[1:-1, 1:-1]
        radius = max(1.0, float(distance[int(y), int(x)]))
        disc = (yy - y) ** 2 + (xx - x) ** 2 <= radius ** 2
        mask = (mask | disc) if include else (mask & ~disc)
    return cap, False


def cheaper(a, b):
    """The cheaper of two (interactions, reached) costs: reaching the goal first, then fewer interactions."""
    return min(a, b, key=lambda c: (not c[1], c[0]))


def plus(cost, n: int):
    return cost[0] + n, cost[1]


class Clock:
    """Process time spent in model calls."""

    def __init__(self):
        self.seconds = 0.0

    def run(self, function, *args, **kwargs):
        start = time.process_time()
        try:
            return function(*args, **kwargs)
        finally:
            self.seconds += time.process_time() - start


def clicks_then_paint(model, embedding, shape, region, box, clock: Clock, empty_paint, points=()):
    """(interactions, reached) after the prompt ``box`` (+ ``points``): clicks, up to MAX_CLICKS, while they can
    still pay; at any point the annotator may switch to the brush, on the model's mask or (one more interaction: clear
    it) from an empty one. The cheapest of these choices (an annotator who knows when clicking stops helping)."""
    points = list(points)
    prediction = clock.run(model.mask, embedding, shape, box=box, points=points)
    used, best = 0, None
    while True:
        if dice(prediction, region) >= GOAL:
            option = (used, True)
        else:
            option = plus(cheaper(paint_until(prediction, region), plus(empty_paint, 1)), used)
        best = option if best is None else cheaper(best, option)
        if option[1] and option[0] == used:  # reached by the clicks themselves
            break
        if used >= MAX_CLICKS or (best[1] and best[0] <= used + 1):  # another click cannot be cheaper
            break
        click = next_click(prediction, region)
        if click is None:
            break
        points.append(click)
        used += 1
        prediction = clock.run(model.mask, embedding, shape, box=box, points=points)
    return best


def best_region(labelmap: np.ndarray, label: int, region: np.ndarray):
    """The connected region of ``label`` in ``labelmap`` overlapping ``region`` most (None when none does)."""
    import cv2

    count, components, _, _ = cv2.connectedComponentsWithStats((labelmap == label).astype(np.uint8), connectivity=8)
    if count <= 1:
        return None
    overlaps = np.bincount(components[region], minlength=count)
    overlaps[0] = 0
    if overlaps.max() == 0:
        return None
    return components == int(np.argmax(overlaps))


def from_candidate(model, embedding, shape, candidate, region, clock, empty_paint, box_route):
    """(interactions, reached) starting from a model's region (pre-label or propagated): 0 when its Dice >= 0.9;
    else the cheapest of painting on it, its box grown 10 % (free: the model drew it) and clicks then paint, or
    ignoring it (``box_route()``: the annotator's own box, clicks and paint). No candidate: ``box_route()``."""
    from NerveSegLogic.annotate.prelabel import grown_box

    if candidate is None:
        return box_route()
    if dice(candidate, region) >= GOAL:
        return 0, True
    best = paint_until(candidate, region)
    best = cheaper(best, clicks_then_paint(model, embedding, shape, region, grown_box(candidate, 0.1), clock,
                                           empty_paint))
    return cheaper(best, box_route())


def false_regions(labelmap, reference, min_area: int = 50) -> int:
    """Regions (>= min_area px, per class) of a model's labelmap that touch no reference pixel of their class: each
    costs the annotator one interaction (delete the island)."""
    import cv2

    out = 0
    for label in CLASSES:
        count, components, stats, _ = cv2.connectedComponentsWithStats((labelmap == label).astype(np.uint8),
                                                                       connectivity=8)
        truth = reference == label
        for index in range(1, count):
            if stats[index, cv2.CC_STAT_AREA] >= min_area and not truth[components == index].any():
                out += 1
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data" / "usgra-seg")
    parser.add_argument("--folds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    parser.add_argument("--embed-samples", type=int, default=5)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "annotation" / "annotation_effort.json")
    parser.add_argument("--runs", type=Path, default=None, help="tune_litemedsam.py's --out (default its default)")
    parser.add_argument("--limit", type=int, default=0, help="only the first N frames of each block (smoke test)")
    args = parser.parse_args(argv)

    import torch

    torch.set_num_threads(1)
    from NerveSegLogic.annotate.prelabel import REFINE_MIN_IOU, refine_labelmap
    from NerveSegLogic.annotate.propagate import carry, structures_of
    from NerveSegLogic.models import registry
    from NerveSegLogic.train.promptable_eval import TUNED_RUNS as DEFAULT_OUT, embedding_file, fold_segmenter, folds_of, frame_names, semantic_model

    runs = args.runs or DEFAULT_OUT
    names = frame_names(args.data)
    blocks = folds_of(names, 5)
    card = registry.card("litemedsam")
    sha = card.weights["sha256"]
    rows, frames_out, missing = [], [], []
    embed_cpu = []
    for fold in args.folds:
        weights = runs / f"fold{fold}" / "tuned.safetensors"
        semantic = semantic_model(fold, 1)
        if not weights.is_file():
            missing.append({"fold": fold, "tuned": False, "semantic": semantic is not None})
            print(f"fold {fold}: no tuned model, skipped", flush=True)
            continue
        if semantic is None:
            missing.append({"fold": fold, "tuned": True, "semantic": False})
        model = fold_segmenter(weights, card)
        rng = np.random.default_rng(fold)
        order = sorted(blocks[fold])[:args.limit or None]
        previous = None
        for position, index in enumerate(order):
            name = names[index]
            image, reference = read_pair(args.data / "images", args.data / "masks", name)
            embedding = np.load(embedding_file(runs, name, sha)).astype(np.float32)
            if len(embed_cpu) < args.embed_samples:
                start = time.process_time()
                model.embed(image)
                embed_cpu.append(time.process_time() - start)
            clocks = {path: Clock() for path in PATHS}
            refined = None
            if semantic is not None:
                labelmap = clocks["refined_prelabel_clicks"].run(lambda: semantic.segment(image).labelmap)
                refined, _ = refine_labelmap(
                    labelmap, CLASSES,
                    lambda box: clocks["refined_prelabel_clicks"].run(model.predict, embedding, image.shape, box=box),
                    CLASSES.values(), min_iou=REFINE_MIN_IOU)
            carried = {"propagation": None, "propagation_any_iou": None}
            # a previous frame of another size is another recording (the command would fail there: prompts
            # outside the frame): nothing to carry, as on a block's first frame
            if previous is not None and previous.shape == image.shape:
                prev_structures = structures_of(previous, CLASSES)

                def predict(box, clicks):
                    return clocks["propagation"].run(model.predict, embedding, image.shape, box=box, points=clicks)

                carried = {path: np.zeros(image.shape, np.uint8) for path in carried}
                for label, region_prev in prev_structures:  # each structure on its own: one lost does not stop all
                    got, _ = carry([(label, region_prev)], predict, min_iou=0.0)
                    for lab, region_new, prompt in got:
                        iou = prompt["predicted_iou"]
                        for path, carried_map in carried.items():
                            if path == "propagation" and iou is not None and iou < PROPAGATE_STOP:
                                continue  # the command stops here: nothing carried
                            carried_map[region_new & (carried_map == 0)] = lab
                clocks["propagation_any_iou"].seconds = clocks["propagation"].seconds
            candidates = {"refined_prelabel_clicks": refined, **carried}
            frame_row = {"fold": fold, "frame": name, "structures": 0, **{p: 0 for p in PATHS},
                         **{f"{p}_failed": 0 for p in PATHS}}
            for label, key in CLASSES.items():
                for region in structures(reference, label, 50):
                    box = jittered_box(region, rng, 0.10, reference.shape)
                    empty_paint = paint_until(np.zeros_like(region), region)
                    costs = {"paint": empty_paint}
                    costs["box_clicks"] = plus(clicks_then_paint(model, embedding, image.shape, region, box,
                                                                 clocks["box_clicks"], empty_paint), 1)
                    for path, labelmap in candidates.items():
                        if labelmap is None:
                            costs[path] = None
                            continue

                        def box_route(path=path):
                            return plus(clicks_then_paint(model, embedding, image.shape, region, box, clocks[path],
                                                          empty_paint), 1)

                        costs[path] = from_candidate(model, embedding, image.shape,
                                                     best_region(labelmap, label, region), region, clocks[path],
                                                     empty_paint, box_route)
                    for path in ("propagation", "propagation_any_iou"):
                        if costs[path] is None:  # a block's first frame: nothing to carry, a box and clicks
                            costs[path] = costs["box_clicks"]
                    row = {"fold": fold, "frame": name, "class": key, "area": int(region.sum())}
                    for path in PATHS:
                        row[path] = None if costs[path] is None else costs[path][0]
                        row[f"{path}_reached"] = None if costs[path] is None else costs[path][1]
                    rows.append(row)
                    frame_row["structures"] += 1
                    for path in PATHS:
                        frame_row[path] += row[path] if row[path] is not None else 0
                        frame_row[f"{path}_failed"] += int(row[f"{path}_reached"] is False)
            for path, labelmap in candidates.items():  # the model's regions on no structure: delete each (1)
                extra = 0 if labelmap is None else false_regions(labelmap, reference)
                frame_row[f"{path}_false_regions"] = extra
                frame_row[path] += extra
            for path in PATHS:
                frame_row[f"{path}_cpu_s"] = round(clocks[path].seconds, 3)
            frame_row["has_semantic"] = refined is not None
            frame_row["carried_from_previous"] = carried["propagation"] is not None
            frames_out.append(frame_row)
            previous = reference
        print(f"fold {fold}: {len([f for f in frames_out if f['fold'] == fold])} frames", flush=True)

    embed_s = float(np.median(embed_cpu)) if embed_cpu else None
    summary = summarise(rows, frames_out, embed_s)
    result = {"date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
              "command": "python benchmarks/annotation/annotation_effort.py " + " ".join(sys.argv[1:] if argv is None else argv),
              "goal_dice": GOAL, "max_clicks": MAX_CLICKS, "embed_cpu_s_median": embed_s, "missing": missing,
              "summary": summary, "structures": rows, "frames": frames_out}
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps(summary, indent=1))
    return 0


def summarise(rows, frames, embed_s) -> dict:
    out = {"structures": len(rows), "frames": len(frames),
           "frames_carried_from_previous": sum(bool(f.get("carried_from_previous")) for f in frames)}
    with_semantic = [f for f in frames if f["has_semantic"]]
    for path in PATHS:
        mine = [r for r in rows if r[path] is not None]
        values = [r[path] for r in mine]
        reached = [r[f"{path}_reached"] for r in mine]
        frames_of = with_semantic if path == "refined_prelabel_clicks" else frames
        per_frame = [f[path] for f in frames_of]
        cpu = [f[f"{path}_cpu_s"] for f in frames_of]
        model_path = path != "paint"
        out[path] = {
            "interactions_per_structure": round(float(np.mean(values)), 2) if values else None,
            "zero_interactions_share": round(float(np.mean([v == 0 for v in values])), 3) if values else None,
            "reached_0.9_share": round(float(np.mean(reached)), 3) if reached else None,
            "interactions_per_frame": round(float(np.mean(per_frame)), 2) if per_frame else None,
            "frames_all_reached_share": round(float(np.mean([f[f"{path}_failed"] == 0 for f in frames_of])), 3)
            if frames_of else None,
            "false_regions_per_frame": round(float(np.mean([f.get(f"{path}_false_regions", 0) for f in frames_of])),
                                             2) if frames_of else None,
            "cpu_s_per_frame": (round(float(np.mean(cpu)) + (embed_s if model_path and embed_s else 0.0), 2)
                                if cpu else None),
            "frames": len(per_frame)}
    for key in CLASSES.values():
        mine = [r for r in rows if r["class"] == key]
        out[key] = {"structures": len(mine)}
        for path in PATHS:
            got = [r for r in mine if r[path] is not None]
            if got:
                out[key][path] = {"interactions": round(float(np.mean([r[path] for r in got])), 2),
                                  "reached_0.9_share": round(float(np.mean([r[f"{path}_reached"] for r in got])), 3),
                                  "zero_share": round(float(np.mean([r[path] == 0 for r in got])), 3)}
    return out


if __name__ == "__main__":
    sys.exit(main())
