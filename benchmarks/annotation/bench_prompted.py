"""Promptable segmentation on usgra-seg: Dice from a box, then after simulated clicks; embedding and prompt speed.

    python benchmarks/annotation/bench_prompted.py [--data /path/to/usgra-seg] [--threads 2] [--limit N]

For every frame and every structure (a connected region of the nerve or the vessel class in the reference mask,
regions under --min-area pixels skipped), the model gets a box around the structure whose four sides are each
moved outward or inward by a random 0-10 % of the structure's width (left, right) or height (top, bottom), seeded,
and its mask is scored by Dice against that structure. Then clicks are simulated the standard way: the largest
connected error region (missed pixels or false pixels) gets a click at its most interior point (the maximum of
its distance transform), include for a miss and exclude for a false region, and the box plus all clicks so far
are prompted again; Dice is recorded after 1, 2, 3 and 5 clicks. Times: the image embedding per frame and each
prompt -> mask (prompt encoder, decoder, resize to the frame), in ms, with the load average of the machine.

Writes benchmarks/annotation/prompted.json (every number) and prints a Markdown summary for benchmarks/annotation/prompted.md.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]

from NerveSegLogic.train.promptable_eval import dice, jittered_box, next_click, read_pair, structures  # noqa: E402  (the simulated annotator)

CLASSES = {1: "nerve", 2: "blood_vessel"}
CLICKS = (1, 2, 3, 5)


def painted(reference: np.ndarray, operations: int) -> list:
    """Dice after 1..``operations`` simulated paint/erase strokes with today's tools, from an empty mask: each
    stroke is a disc at the most interior point of the largest error region, as large as fits inside it (an
    annotator with a perfectly sized brush: an optimistic baseline)."""
    mask = np.zeros_like(reference, dtype=bool)
    out = []
    yy, xx = np.ogrid[:reference.shape[0], :reference.shape[1]]
    for _ in range(operations):
        click = next_click(mask, reference)
        if click is None:
            out.append(1.0)
            continue
        import cv2

        x, y, include = click
        errors = (reference & ~mask) if include else (mask & ~reference)
        distance = cv2.distanceTransform(np.pad(errors, 1).astype(np.uint8), cv2.DIST_L2, 5)[1:-1, 1:-1]
        radius = max(1.0, float(distance[int(y), int(x)]))
        disc = (yy - y) ** 2 + (xx - x) ** 2 <= radius ** 2
        mask = (mask | disc) if include else (mask & ~disc)
        out.append(dice(mask, reference))
    return out


def single_thread_cost(args, images: Path, masks: Path, names) -> dict:
    """CPU time (process time, one thread) of an embedding and of a prompt: the work itself, which a loaded,
    shared machine does not inflate the way it inflates wall time. On an idle machine wall time is about this
    (one thread) or less (several)."""
    from NerveSegLogic.inference.promptable import PromptableSegmenter

    model = PromptableSegmenter.from_name(args.model, backend=args.backend, threads=1)
    embed_cpu, prompt_cpu = [], []
    for name in names:
        image, reference = read_pair(images, masks, name)
        start = time.process_time()
        embedding = model.embed(image)
        embed_cpu.append((time.process_time() - start) * 1000)
        ys, xs = np.nonzero(reference > 0)
        box = (xs.min(), ys.min(), xs.max(), ys.max())
        for _ in range(5):
            start = time.process_time()
            model.mask(embedding, image.shape, box=box, points=[(float(xs.mean()), float(ys.mean()), True)])
            prompt_cpu.append((time.process_time() - start) * 1000)
    return {"threads": 1, "embed_cpu_ms_median": round(statistics.median(embed_cpu), 1),
            "prompt_cpu_ms_median": round(statistics.median(prompt_cpu), 1), "frames": len(names)}


def update_card(card, result: dict) -> None:
    """Record the figures in the model card (metrics per click mode; speed), through the validating writer."""
    from NerveSegLogic.models.card import write_card

    data = card.to_json()
    prompted = data.setdefault("metrics", {}).setdefault("usgra_seg_prompted", {})
    prompted[f"clicks_{result['click_mode']}"] = {
        "dice": {key: {k: (v["mean"] if v else None) for k, v in per.items()} for key, per in result["dice"].items()},
        "structures": {key: per["0"]["n"] if per["0"] else 0 for key, per in result["dice"].items()},
        "frames": result["frames"], "box_jitter": result["jitter"], "date": result["date"],
        "command": result["command"]}
    speed = data.setdefault("speed", {})
    if result["embed_ms"]:
        speed["embed_ms_median"] = result["embed_ms"]["median"]
    speed.update(prompt_ms_median=result["prompt_ms"]["median"], threads=result["machine"]["threads"],
                 embed_cpu_ms_one_thread=result["single_thread_cpu"]["embed_cpu_ms_median"],
                 prompt_cpu_ms_one_thread=result["single_thread_cpu"]["prompt_cpu_ms_median"],
                 load_average=result["machine"]["load_average_before"], measured_utc=result["date"],
                 backend=result["backend"], command="benchmarks/annotation/bench_prompted.py")
    write_card(data, card.path)
    print(f"updated {card.path}")


def summarise(values):
    return {"mean": round(float(np.mean(values)), 4), "median": round(float(np.median(values)), 4),
            "n": len(values)} if values else None


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data" / "usgra-seg",
                        help="usgra-seg folder with images/ and masks/")
    parser.add_argument("--model", default="litemedsam")
    parser.add_argument("--backend", choices=("onnx", "torch"), default="onnx")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--click-mode", choices=("model", "box"), default="model",
                        help="clicks as the model's point tokens, or as edits of the box (see CLICK_MODES)")
    parser.add_argument("--limit", type=int, default=0, help="only the first N frames (0: all)")
    parser.add_argument("--min-area", type=int, default=50, help="skip structures smaller than this (pixels)")
    parser.add_argument("--jitter", type=float, default=0.10, help="largest box side shift, fraction of the size")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "annotation" / "prompted.json")
    parser.add_argument("--update-card", action="store_true", help="write the figures into the model card")
    parser.add_argument("--embeddings", type=Path, default=None,
                        help="folder to keep each frame's embedding in (float16 .npy), reused by later runs "
                             "(their embedding time is then not measured)")
    args = parser.parse_args(argv)

    import torch

    torch.set_num_threads(args.threads)
    from NerveSegLogic.inference.promptable import PromptableSegmenter

    images, masks = args.data / "images", args.data / "masks"
    if not images.is_dir() or not masks.is_dir():
        raise SystemExit(f"{args.data}: expected images/ and masks/ folders (the usgra-seg layout)")
    names = sorted(p.name for p in images.glob("*.png"))
    if args.limit:
        names = names[:args.limit]
    model = PromptableSegmenter.from_name(args.model, backend=args.backend, threads=args.threads)
    model.click_mode = args.click_mode
    rng = np.random.default_rng(args.seed)
    load_before = os.getloadavg()
    # Warm-up (lazy initialisation of ONNX Runtime) on the first frame, not counted.
    first, _ = read_pair(images, masks, names[0])
    warm = model.embed(first)
    model.mask(warm, first.shape, box=(1, 1, 20, 20))

    embed_ms, prompt_ms = [], []
    dice_by = {key: {str(k): [] for k in (0,) + CLICKS} for key in CLASSES.values()}
    paint_by = {key: {str(k): [] for k in CLICKS} for key in CLASSES.values()}
    rows = []
    started = time.perf_counter()
    for number, name in enumerate(names):
        image, reference = read_pair(images, masks, name)
        kept = args.embeddings / f"{Path(name).stem}-{model.model_sha256[:12]}.npy" if args.embeddings else None
        if kept is not None and kept.is_file():
            embedding = np.load(kept)
        else:
            t0 = time.perf_counter()
            embedding = model.embed(image)
            embed_ms.append((time.perf_counter() - t0) * 1000)
            if kept is not None:
                kept.parent.mkdir(parents=True, exist_ok=True)
                np.save(kept, embedding.astype(np.float16))  # as the store caches it
        for label, key in CLASSES.items():
            for region in structures(reference, label, args.min_area):
                box = jittered_box(region, rng, args.jitter, reference.shape)
                points = []
                scores = {}
                for clicks in range(0, max(CLICKS) + 1):
                    t0 = time.perf_counter()
                    prediction = model.mask(embedding, image.shape, box=box, points=points)
                    prompt_ms.append((time.perf_counter() - t0) * 1000)
                    if clicks == 0 or clicks in CLICKS:
                        scores[str(clicks)] = dice(prediction, region)
                    if clicks == max(CLICKS):
                        break
                    click = next_click(prediction, region)
                    if click is None:  # perfect: later click counts keep the same Dice
                        for later in CLICKS:
                            scores.setdefault(str(later), scores.get(str(clicks), 1.0))
                        break
                    points.append(click)
                for k, v in scores.items():
                    dice_by[key][k].append(v)
                strokes = painted(region, max(CLICKS))
                for k in CLICKS:
                    paint_by[key][str(k)].append(strokes[k - 1])
                rows.append({"frame": name, "class": key, "area": int(region.sum()),
                             "box": [round(float(v), 1) for v in box], "dice": {k: round(v, 4) for k, v in scores.items()}})
        if (number + 1) % 20 == 0:
            print(f"{number + 1}/{len(names)} frames, {time.perf_counter() - started:.0f} s, "
                  f"nerve box Dice so far {np.mean(dice_by['nerve']['0']):.3f}", flush=True)
    load_after = os.getloadavg()
    cpu_cost = single_thread_cost(args, images, masks, names[:5])

    result = {
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "command": "python benchmarks/annotation/bench_prompted.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "machine": {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(),
                    "threads": args.threads, "load_average_before": [round(v, 2) for v in load_before],
                    "load_average_after": [round(v, 2) for v in load_after]},
        "model": args.model, "model_sha256": model.model_sha256, "backend": model.backend,
        "click_mode": model.click_mode,
        "frames": len(names), "jitter": args.jitter, "min_area_px": args.min_area, "seed": args.seed,
        "dice": {key: {k: summarise(v) for k, v in per.items()} for key, per in dice_by.items()},
        "paint_dice": {key: {k: summarise(v) for k, v in per.items()} for key, per in paint_by.items()},
        "embed_ms": {"median": round(statistics.median(embed_ms), 1),
                     "p90": round(float(np.percentile(embed_ms, 90)), 1), "n": len(embed_ms)} if embed_ms else None,
        "prompt_ms": {"median": round(statistics.median(prompt_ms), 1),
                      "p90": round(float(np.percentile(prompt_ms, 90)), 1), "n": len(prompt_ms)},
        "single_thread_cpu": cpu_cost,
        "structures": rows,
    }
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    print(f"wrote {args.out}")
    if args.update_card:
        update_card(model.card, result)
    print("| class | structures | box | +1 click | +2 | +3 | +5 |")
    print("|---|---|---|---|---|---|---|")
    for key, per in result["dice"].items():
        cells = [f"{per[k]['mean']:.3f}" if per[k] else "-" for k in ("0", "1", "2", "3", "5")]
        print(f"| {key} | {per['0']['n'] if per['0'] else 0} | " + " | ".join(cells) + " |")
    print("paint strokes from an empty mask (1, 2, 3, 5): " + "; ".join(
        f"{key} " + " ".join(f"{per[k]['mean']:.3f}" if per[k] else "-" for k in ("1", "2", "3", "5"))
        for key, per in result["paint_dice"].items()))
    embed_text = f"median {result['embed_ms']['median']} ms/frame" if embed_ms else "all from --embeddings"
    print(f"embedding: {embed_text}; prompt -> mask: median "
          f"{result['prompt_ms']['median']} ms (p90 {result['prompt_ms']['p90']}); load average "
          f"{load_before[0]:.2f} before, {load_after[0]:.2f} after")
    print(f"CPU time on one thread: embedding {cpu_cost['embed_cpu_ms_median']} ms, prompt -> mask "
          f"{cpu_cost['prompt_cpu_ms_median']} ms (median)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
