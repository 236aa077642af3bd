"""Pre-label refinement on the CV blocks (issue 26 item 2): nerve Dice and HD95 with and without refinement.

    python benchmarks/annotation/refine_prelabel.py [--folds 0 1 2 3 4] [--out benchmarks/annotation/refine_prelabel.json]

For each fold whose two held-out models exist — the semantic model trained on the other four blocks
(runs/adapt/base/fold<i>/effnet2-unet.safetensors, its card.json giving the sha256) and the LiteMedSAM tuned on
the same four blocks (runs/litemedsam/fold<i>/tuned.safetensors, benchmarks/release/tune_litemedsam.py) — every frame of
the held-out block is pre-labelled by the semantic model, then refined region by region exactly as `nerveseg
annotate prelabel --refine` does (NerveSegLogic.annotate.prelabel.refine_labelmap: box grown 10 %, the promptable
mask replaces the region when its predicted IoU reaches the threshold). Every threshold in --thresholds is scored
from the same predictions (a threshold above 1 means "never replace": the semantic pre-label). The released
LiteMedSAM (box alone) is scored as a refiner too, at threshold 0 (it has no tuned IoU head).

Per frame and class: Dice and HD95 (pixels, NerveSegLogic.train.metrics.hausdorff95; both empty: left out, one
empty: the frame diagonal) against the reference mask. Speed: on --timing-frames frames, the wall and CPU seconds of
the whole refined pre-label on 2 threads (semantic model on torch as `prelabel` runs it, the promptable model on
ONNX Runtime: embedding computed, not read from a cache, then one prompt per region), with the load average.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]

from NerveSegLogic.imaging import overlap  # noqa: E402
from NerveSegLogic.train.promptable_eval import read_pair, semantic_model  # noqa: E402

TUNED = Path("runs/litemedsam")
CLASSES = {1: "nerve", 2: "blood_vessel"}


def promptable_models(fold: int):
    """(tuned fold model, released model) as PromptableSegmenters on torch, or None without the fold's weights."""
    from NerveSegLogic.inference.promptable import PromptableSegmenter
    from NerveSegLogic.models import registry
    from NerveSegLogic.train.promptable_eval import fold_segmenter, released_module

    weights = TUNED / f"fold{fold}" / "tuned.safetensors"
    if not weights.is_file():
        return None
    card = registry.card("litemedsam")
    tuned = fold_segmenter(weights, card)
    released = PromptableSegmenter.from_module(card, released_module(), "1" * 64, click_mode="box")
    return tuned, released


def scores(prediction: np.ndarray, reference: np.ndarray) -> dict:
    from NerveSegLogic.train.metrics import hausdorff95

    out = {}
    for label, key in CLASSES.items():
        p, r = prediction == label, reference == label
        if not p.any() and not r.any():
            continue
        out[key] = {"dice": round(overlap.dice(p, r), 4), "hd95": round(hausdorff95(p, r), 2)}
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data" / "usgra-seg")
    parser.add_argument("--folds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    parser.add_argument("--thresholds", type=float, nargs="+", default=[0.0, 0.5, 0.7, 0.8, 0.85, 0.9, 2.0])
    parser.add_argument("--grows", type=float, nargs="+", default=[0.1], help="box growth(s) to score")
    parser.add_argument("--merges", type=int, nargs="+", default=[0], help="merge distance(s) in px to score")
    parser.add_argument("--timing-frames", type=int, default=8)
    parser.add_argument("--threads", type=int, default=1, help="threads for the scoring pass")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "annotation" / "refine_prelabel.json")
    parser.add_argument("--runs", type=Path, default=TUNED, help="tune_litemedsam.py's --out (fold runs, embeddings)")
    parser.add_argument("--limit", type=int, default=0, help="only the first N frames of each block (smoke test)")
    args = parser.parse_args(argv)
    globals()["TUNED"] = args.runs

    import torch

    torch.set_num_threads(args.threads)
    from NerveSegLogic.annotate.prelabel import refine_labelmap
    from NerveSegLogic.models import registry
    from NerveSegLogic.train.promptable_eval import embedding_file, folds_of, frame_names

    names = frame_names(args.data)
    blocks = folds_of(names, 5)
    sha = registry.card("litemedsam").weights["sha256"]
    rows, missing, timing = [], [], []
    for fold in args.folds:
        semantic = semantic_model(fold, args.threads)
        prompted = promptable_models(fold)
        if semantic is None or prompted is None:
            missing.append({"fold": fold, "semantic": semantic is not None, "promptable": prompted is not None})
            print(f"fold {fold}: skipped (semantic model {'found' if semantic else 'missing'}, tuned promptable "
                  f"{'found' if prompted else 'missing'})", flush=True)
            continue
        tuned, released = prompted
        for index in sorted(blocks[fold])[:args.limit or None]:
            name = names[index]
            image, reference = read_pair(args.data / "images", args.data / "masks", name)
            embedding = np.load(embedding_file(TUNED, name, sha)).astype(np.float32)
            labelmap = semantic.segment(image).labelmap
            cache = {}

            def predict(box, model=tuned):
                key = (id(model), tuple(round(float(v), 3) for v in box))
                if key not in cache:
                    cache[key] = model.predict(embedding, image.shape, box=box)
                return cache[key]

            row = {"fold": fold, "frame": name, "semantic": scores(labelmap, reference), "refined": {}}
            for grow in args.grows:
                for merge in args.merges:
                    for threshold in args.thresholds:
                        refined, decisions = refine_labelmap(labelmap, CLASSES, predict, CLASSES.values(),
                                                             min_iou=threshold, grow=grow, merge_px=merge)
                        row["refined"][config(grow, merge, threshold, args)] = {
                            "scores": scores(refined, reference), "replaced": sum(d.replaced for d in decisions),
                            "regions": len(decisions)}
            refined, decisions = refine_labelmap(labelmap, CLASSES, lambda box: predict(box, released),
                                                 CLASSES.values(), min_iou=0.0)
            row["released_refiner"] = scores(refined, reference)
            rows.append(row)
        done = [r for r in rows if r["fold"] == fold]
        first = config(args.grows[0], args.merges[0], 0.8, args)
        print(f"fold {fold}: {len(done)} frames; nerve Dice semantic "
              f"{np.mean([r['semantic'].get('nerve', {}).get('dice', 0) for r in done]):.3f}, refined ({first}) "
              f"{np.mean([r['refined'][first]['scores'].get('nerve', {}).get('dice', 0) for r in done]):.3f}",
              flush=True)

    if args.timing_frames and rows:
        timing = time_refined_prelabel(args, [r["frame"] for r in rows[:args.timing_frames]],
                                       rows[0]["fold"])
    result = {"date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
              "command": "python benchmarks/annotation/refine_prelabel.py " + " ".join(argv if argv is not None else sys.argv[1:]),
              "missing": missing, "summary": summarise(rows, [config(g, m, t, args) for g in args.grows
                                                               for m in args.merges for t in args.thresholds]),
              "timing": timing, "frames": rows}
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps(result["summary"], indent=1))
    print(json.dumps(timing, indent=1))
    return 0


def config(grow: float, merge: int, threshold: float, args) -> str:
    """The key of one refinement setting: the threshold alone when one growth and no merging are scored."""
    if len(args.grows) == 1 and args.merges == [0]:
        return f"{threshold:g}"
    return f"grow{grow:g}_merge{merge}_iou{threshold:g}"


def summarise(rows, keys) -> dict:
    out = {"frames": len(rows), "folds": sorted({r["fold"] for r in rows})}

    def mean(values):
        values = [v for v in values if v is not None]
        return None if not values else round(float(np.mean(values)), 4)

    def median(values):
        values = [v for v in values if v is not None]
        return None if not values else round(float(np.median(values)), 2)

    for key in CLASSES.values():
        get = lambda s, m: s.get(key, {}).get(m)  # noqa: E731
        entry = {"semantic": {"dice": mean([get(r["semantic"], "dice") for r in rows]),
                              "hd95_median": median([get(r["semantic"], "hd95") for r in rows]),
                              "hd95_mean": mean([get(r["semantic"], "hd95") for r in rows])}}
        for k in keys:
            entry[f"refined_{k}"] = {"dice": mean([get(r["refined"][k]["scores"], "dice") for r in rows]),
                                     "hd95_median": median([get(r["refined"][k]["scores"], "hd95") for r in rows]),
                                     "hd95_mean": mean([get(r["refined"][k]["scores"], "hd95") for r in rows])}
        entry["released_refiner_0"] = {"dice": mean([get(r["released_refiner"], "dice") for r in rows]),
                                       "hd95_median": median([get(r["released_refiner"], "hd95") for r in rows])}
        out[key] = entry
    for k in keys:
        out.setdefault("regions", {})[k] = {"replaced": sum(r["refined"][k]["replaced"] for r in rows),
                                            "regions": sum(r["refined"][k]["regions"] for r in rows)}
    return out


def time_refined_prelabel(args, frames, fold) -> dict:
    """Wall and CPU seconds per frame of the refined pre-label as the CLI runs it, on 2 threads: semantic model
    (torch), embedding and prompts (ONNX Runtime, the default promptable backend), embedding computed each time."""
    import tempfile

    import torch

    from NerveSegLogic.annotate.prelabel import refine_labelmap
    from NerveSegLogic.inference.promptable import PromptableSegmenter, export_onnx
    from NerveSegLogic.models import registry
    from NerveSegLogic.train.promptable_eval import tuned_model

    torch.set_num_threads(2)
    semantic = semantic_model(fold, 2)
    card = registry.card("litemedsam")
    folder = Path(tempfile.mkdtemp(prefix="refine-onnx-"))
    encoder, decoder = export_onnx(tuned_model(TUNED / f"fold{fold}" / "tuned.safetensors"), folder, "fold")
    model = PromptableSegmenter.from_onnx(card, encoder, decoder, "0" * 64, threads=2, click_mode="model")
    model.mask_prompt = True
    first, _ = read_pair(args.data / "images", args.data / "masks", frames[0])
    semantic.segment(first)
    model.embed(first)  # warm-up
    walls, cpus, parts = [], [], {"semantic": [], "embed": [], "prompts": []}
    load_before = os.getloadavg()
    for name in frames:
        image, _ = read_pair(args.data / "images", args.data / "masks", name)
        w0, c0 = time.perf_counter(), time.process_time()
        labelmap = semantic.segment(image).labelmap
        w1 = time.perf_counter()
        embedding = model.embed(image)
        w2 = time.perf_counter()
        refine_labelmap(labelmap, CLASSES, lambda box: model.predict(embedding, image.shape, box=box),
                        CLASSES.values(), min_iou=0.8)
        w3 = time.perf_counter()
        walls.append(w3 - w0)
        cpus.append(time.process_time() - c0)
        parts["semantic"].append(w1 - w0)
        parts["embed"].append(w2 - w1)
        parts["prompts"].append(w3 - w2)
    return {"frames": len(frames), "threads": 2, "wall_s_median": round(float(np.median(walls)), 2),
            "cpu_s_median": round(float(np.median(cpus)), 2),
            "wall_s_parts_median": {k: round(float(np.median(v)), 2) for k, v in parts.items()},
            "load_average_before": [round(v, 2) for v in load_before],
            "load_average_after": [round(v, 2) for v in os.getloadavg()]}


if __name__ == "__main__":
    sys.exit(main())
