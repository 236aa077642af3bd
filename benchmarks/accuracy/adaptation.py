"""The adaptation curve (issue 25): how much a site's first corrected frames buy, block by block of usgra-seg.

For each of usgra-seg's five contiguous blocks (each roughly one body region, frames sorted by name):

1. the base: the default model's recipe trained on the other four blocks (``nerveseg train --model effnet2-unet
   --folds 5 --fold i``), with the weights at the END of training (nothing chosen on the held-out block);
2. fine-tuned from the base (``--init``, the site recipe of NerveSegLogic/train/site.py) with the first k = 5, 10,
   20 frames of the held-out block, as an annotator corrects the start of a scan (k = 0 is the base itself);
3. all scored on the same frames: the block's frames after its first 20, plus one nerve-free window per such frame
   (cut where nothing is labelled) for the false-nerve frame rate.

The partial-label case fine-tunes with the same k frames whose masks keep the nerve only (the vessel left out of the
loss, ``--map 1=nerve``) and shows what happens to vessel Dice.

    python benchmarks/accuracy/adaptation.py --data ../shared/data/usgra-seg --base-runs runs/adapt/base --out runs/adapt/ft
    python benchmarks/accuracy/adaptation.py ... --blocks 0,1 --variants default,lr3,ep30,freeze-enc --k 10,20 --tag dev
    python benchmarks/accuracy/adaptation.py ... --blocks 0,3,4 --ceiling                 # fitted on the scored frames too
    python benchmarks/accuracy/adaptation.py ... --report benchmarks/accuracy/adaptation.md      # table from every result so far

Every run folder is kept (resumable: a finished fine-tune or score is not redone). Base runs missing under
--base-runs are trained first with the same command the fold runs use.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import time
from pathlib import Path
from typing import Dict, List, Optional

import cv2
import numpy as np

ROOT = Path(__file__).resolve().parents[2]

from NerveSegLogic.train.crossval import base_run, block_names  # noqa: E402  (the folds' base runs)

MODEL = "effnet2-unet"
POOL = 20  # the first frames of a held-out block that a site may correct; the rest are scored
#: Site-recipe variants tried (values override NerveSegLogic/train/site.py's SITE_RECIPE).
VARIANTS: Dict[str, Dict] = {
    "default": {},  # SITE_RECIPE as shipped (lr_factor 0.03 since the dev runs below)
    "lr1": {"lr_factor": 0.1},  # SITE_RECIPE's first value
    "lr3": {"lr_factor": 0.3},
    "ep30": {"epochs": 30},
    "freeze-enc": {"freeze_encoder": True},
    "lr3-ep30": {"lr_factor": 0.3, "epochs": 30},
    "no-freeze-norm": {"freeze_norm": False},
    "lr01": {"lr_factor": 0.01},
    "lr03-freeze-enc": {"lr_factor": 0.03, "freeze_encoder": True},
    "ep45": {"epochs": 45},  # three times the site recipe's schedule
}


def subset_folder(data: Path, names: List[str], out: Path, nerve_only: bool) -> Path:
    """A folder data set (images/, masks/) of ``names``; ``nerve_only`` keeps the nerve (label 1) and clears the
    vessel, for a set that labels the nerve only."""
    done = out / "done"
    if done.is_file():
        return out
    from NerveSegLogic.datasets.readers import open_dataset

    shutil.rmtree(out, ignore_errors=True)
    (out / "images").mkdir(parents=True)
    (out / "masks").mkdir()
    dataset = open_dataset(data) if nerve_only else None
    for name in names:
        image = next((data / "images").glob(f"{name}.*"))
        mask = next((data / "masks").glob(f"{name}.*"))
        shutil.copyfile(image, out / "images" / image.name)
        if nerve_only:
            # usgra-seg's masks are colour-coded: read them as class labels (1 nerve, 2 vessel) by the project's
            # reader, keep the nerve, write one label per pixel (read back with --map 1=nerve)
            labels = dataset[dataset.names().index(name)].mask
            if not cv2.imwrite(str(out / "masks" / f"{name}.png"), np.where(labels == 1, 1, 0).astype(np.uint8)):
                raise SystemExit(f"could not write {out / 'masks' / name}.png")
        else:
            shutil.copyfile(mask, out / "masks" / mask.name)
    done.write_text("\n".join(names) + "\n")
    return out


def fine_tune(base: Path, folder: Path, out: Path, variant: Dict, seed: int, threads: int, nerve_only: bool) -> Dict:
    """Fine-tune from ``base`` on ``folder`` (every frame, no validation: the last weights); returns its record."""
    from NerveSegLogic.train.loop import TrainOptions, train
    from NerveSegLogic.train.site import SITE_RECIPE

    record_path = out / "finetune.json"
    if record_path.is_file():
        return json.loads(record_path.read_text())
    site = dict(SITE_RECIPE, **variant)
    options = TrainOptions(model=MODEL, data=folder, out=out, folds=1, seed=seed, threads=threads, progress=False,
                           init=str(base), site=site, mapping={1: "nerve"} if nerve_only else None)
    start = time.perf_counter()
    result = train(options)
    record = {"seconds": time.perf_counter() - start, "epochs": result.epochs_done, "steps": result.global_step,
              "site": site, "threads": threads, "seed": seed, "weights": str(result.weights)}
    record_path.write_text(json.dumps(record, indent=2))
    return record


def score(weights: Optional[Path], run_card: Path, data: Path, names: List[str], out: Path, threads: int) -> Dict:
    """Nerve and vessel Dice and nerve F1 on ``names``; the false-nerve frame rate on one nerve-free window cut
    from each of them. Segmented as the live path does (preprocessing, model, smooth contours, small regions
    dropped), in torch float32."""
    from NerveSegLogic.datasets.readers import open_dataset
    from NerveSegLogic.inference.segmenter import Segmenter
    from NerveSegLogic.models import registry
    from NerveSegLogic.models.card import ModelCard
    from NerveSegLogic.train.data import FrameStore
    from NerveSegLogic.train.evaluate import evaluate
    from NerveSegLogic.train.negatives import negative_frames

    path = out / "score.json"
    if path.is_file():
        return json.loads(path.read_text())
    card = ModelCard.from_dict(json.loads(run_card.read_text()), None)
    module = registry.load_from_card(card, weights_path=weights, sha256=card.weights["sha256"])
    segmenter = Segmenter.from_module(card, module, threads=threads)
    dataset = open_dataset(data)
    all_names = dataset.names()
    frames = FrameStore(dataset, None, [all_names.index(n) for n in names])
    windows = FrameStore(dataset, None, [])
    windows.frames = negative_frames(frames.frames, seed=0, rate=1.0)
    on_frames = evaluate(segmenter, frames, keep_labelmaps=False).summary
    on_windows = evaluate(segmenter, windows, keep_labelmaps=False).summary
    result = {"frames": len(frames), "windows": len(windows),
              "nerve_dice": on_frames["per_class"]["nerve"]["dice"],
              "vessel_dice": on_frames["per_class"]["blood_vessel"]["dice"],
              "nerve_f1": on_frames["detection"]["nerve"]["f1"],
              "vessel_f1": on_frames["detection"]["blood_vessel"]["f1"],
              "missed_nerve_frames": on_frames["presence"]["nerve"]["missed_frames"],
              "false_nerve_frames": on_windows["presence"]["nerve"]["false_frames"],
              "false_nerve_frame_rate": on_windows["presence"]["nerve"]["false_frame_rate"]}
    out.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=2))
    return result


def ceiling(args) -> None:
    """The diagnostic ceiling: the base fine-tuned (default site recipe) on ALL of a block's frames, the scored ones
    included, then scored on the usual frames: how far those frames can be fitted at all with this budget."""
    blocks = block_names(args.data)
    for block in args.blocks:
        base = base_run(args.base_runs, block, args.data, args.threads)
        out = args.out / f"block{block}" / "oracle-all-s0"
        folder = subset_folder(args.data, blocks[block], args.out / "data" / f"block{block}-all", False)
        record = fine_tune(base, folder, out / "run", VARIANTS["default"], 0, args.threads, False)
        result = score(out / "run" / f"{MODEL}.safetensors", out / "run" / "card.json", args.data,
                       blocks[block][POOL:], out, args.threads)
        print(f"block {block} ceiling: {result} ({record['seconds'] / 60:.1f} min)", flush=True)


def run(args) -> None:
    if args.ceiling:
        ceiling(args)
        return
    blocks = block_names(args.data)
    for block in args.blocks:
        base = base_run(args.base_runs, block, args.data, args.threads)
        pool, test = blocks[block][:POOL], blocks[block][POOL:]
        base_score = score(base / f"{MODEL}.safetensors", base / "card.json", args.data, test,
                           args.out / f"block{block}" / "k0", args.threads)
        print(f"block {block} k=0: {base_score}", flush=True)
        for variant in args.variants:
            for partial in ([False, True] if args.partial else [False]):
                for k in [k for k in args.k if k > 0]:
                    if partial and k not in args.partial_k:
                        continue
                    for seed in args.seeds:
                        tag = f"{variant}{'-nerve-only' if partial else ''}-k{k}-s{seed}"
                        out = args.out / f"block{block}" / tag
                        folder = subset_folder(args.data, pool[:k], args.out / "data" / f"block{block}-k{k}"
                                               f"{'-nerve' if partial else ''}", partial)
                        record = fine_tune(base, folder, out / "run", VARIANTS[variant], seed, args.threads, partial)
                        result = score(out / "run" / f"{MODEL}.safetensors", out / "run" / "card.json", args.data,
                                       test, out, args.threads)
                        print(f"block {block} {tag}: {result} ({record['seconds'] / 60:.1f} min)", flush=True)


# ------------------------------------------------------------------------------------------------------- report
def collect(out: Path) -> List[Dict]:
    rows = []
    for score_file in sorted(out.glob("block*/*/score.json")):
        tag = score_file.parent.name
        block = int(score_file.parent.parent.name[len("block"):])
        row = {"block": block, "tag": tag, **json.loads(score_file.read_text())}
        if tag == "k0":
            row.update(variant="base", k=0, seed=None, partial=False, minutes=0.0)
        elif tag.startswith("oracle"):  # fine-tuned on the whole block, scored frames included: a ceiling
            row.update(variant="oracle", k=None, seed=0, partial=False, minutes=float("nan"))
        else:
            head, k, seed = tag.rsplit("-", 2)
            row.update(partial=head.endswith("-nerve-only"), variant=head.replace("-nerve-only", ""),
                       k=int(k[1:]), seed=int(seed[1:]))
            record = json.loads((score_file.parent / "run" / "finetune.json").read_text())
            row["minutes"] = record["seconds"] / 60.0
            row["threads"] = record["threads"]
        rows.append(row)
    return rows


def _mean(values):
    values = [v for v in values if v is not None and not (isinstance(v, float) and np.isnan(v))]
    return float(np.mean(values)) if values else float("nan")


def report(out: Path, path: Path, command: str) -> None:
    rows = collect(out)
    blocks = sorted({r["block"] for r in rows})
    lines = ["# Adaptation: fine-tuning the default model on a site's first corrected frames", "",
             f"- data: usgra-seg (204 frames, 5 contiguous blocks of frames sorted by name; each roughly one body "
             f"region); blocks scored: {blocks}",
             f"- base: {MODEL}'s recipe (44 epochs, ImageNet encoder) trained on the other four blocks; weights at "
             f"the end of training",
             f"- fine-tuned with the first k frames of the held-out block (`nerveseg train --init <base> --data "
             f"<k frames> --folds 1`, the site recipe + variant); scored on the block's frames after its first "
             f"{POOL} and one nerve-free window per such frame (false-nerve frame rate)",
             f"- machine: {platform.machine()}, {os.cpu_count()} CPU cores, no GPU; torch float32 for scoring",
             f"- command: `{command}`", ""]
    variants = sorted({r["variant"] for r in rows if r["variant"] not in ("base", "oracle")})
    lines += ["| variant | labels | k | blocks | seeds | nerve Dice | vessel Dice | nerve F1 | false-nerve frames | "
              "fine-tune min |", "|---|---|---|---|---|---|---|---|---|---|"]
    base = [r for r in rows if r["variant"] == "base"]
    lines.append(_row("base", "all", 0, base, blocks))
    for variant in variants:
        for partial in (False, True):
            for k in sorted({r["k"] for r in rows if r["variant"] == variant and r["partial"] == partial}):
                chosen = [r for r in rows if r["variant"] == variant and r["partial"] == partial and r["k"] == k]
                lines.append(_row(variant, "nerve only" if partial else "all", k, chosen, blocks))
    lines += ["", "Per block (nerve Dice; mean over seeds):", "",
              "| variant | labels | k | " + " | ".join(f"block {b}" for b in blocks) + " |",
              "|---|---|---|" + "---|" * len(blocks)]
    for variant in ["base"] + variants:
        for partial in (False, True):
            for k in sorted({r["k"] for r in rows if r["variant"] == variant and r["partial"] == partial}):
                cells = []
                for b in blocks:
                    chosen = [r["nerve_dice"] for r in rows if r["variant"] == variant and r["partial"] == partial
                              and r["k"] == k and r["block"] == b]
                    cells.append(f"{_mean(chosen):.3f}" if chosen else "-")
                lines.append(f"| {variant} | {'nerve only' if partial else 'all'} | {k} | " + " | ".join(cells) + " |")
    oracle = [r for r in rows if r["variant"] == "oracle"]
    if oracle:
        lines += ["", "Ceiling (a diagnostic, not a result): the base fine-tuned with the site recipe on ALL of a "
                      "block's frames, the scored ones included; it shows how far these scored frames can be fitted "
                      "at all with this budget.", "", "| block | nerve Dice | vessel Dice | nerve F1 |",
                  "|---|---|---|---|"]
        for r in sorted(oracle, key=lambda r: r["block"]):
            lines.append(f"| {r['block']} | {r['nerve_dice']:.3f} | {r['vessel_dice']:.3f} | {r['nerve_f1']:.3f} |")
    # the hand-written reading of the table (from "## Reading" on) survives a regeneration of the table
    reading = ""
    if path.is_file() and "\n## Reading" in path.read_text():
        reading = path.read_text()[path.read_text().index("\n## Reading"):]
    path.write_text("\n".join(lines) + "\n" + reading)
    (path.with_suffix(".json")).write_text(json.dumps(rows, indent=2))
    print("\n".join(lines))


def _row(variant, labels, k, chosen, blocks) -> str:
    """Means over blocks of the per-block means over seeds, so every block weighs the same."""
    per_block = {}
    for r in chosen:
        per_block.setdefault(r["block"], []).append(r)
    def over_blocks(key):
        return _mean([_mean([r[key] for r in items]) for items in per_block.values()])
    seeds = sorted({r["seed"] for r in chosen if r["seed"] is not None})
    return (f"| {variant} | {labels} | {k} | {len(per_block)} | {len(seeds) or '-'} | {over_blocks('nerve_dice'):.3f} | "
            f"{over_blocks('vessel_dice'):.3f} | {over_blocks('nerve_f1'):.3f} | "
            f"{over_blocks('false_nerve_frame_rate'):.3f} | {over_blocks('minutes'):.1f} |")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--base-runs", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--blocks", default="0,1,2,3,4")
    parser.add_argument("--k", default="0,5,10,20")
    parser.add_argument("--seeds", default="0")
    parser.add_argument("--variants", default="default")
    parser.add_argument("--partial", action="store_true", help="also fine-tune with nerve-only masks")
    parser.add_argument("--partial-k", default="10,20")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--report", type=Path, default=None, help="write the table of every result under --out")
    parser.add_argument("--ceiling", action="store_true",
                        help="fine-tune on ALL of each block's frames (scored ones included): a diagnostic ceiling")
    args = parser.parse_args()
    args.blocks = [int(v) for v in args.blocks.split(",")]
    args.k = [int(v) for v in args.k.split(",")]
    args.partial_k = [int(v) for v in args.partial_k.split(",")]
    args.seeds = [int(v) for v in args.seeds.split(",")]
    args.variants = args.variants.split(",")
    unknown = [v for v in args.variants if v not in VARIANTS]
    if unknown:
        parser.error(f"unknown variants {unknown}; known: {', '.join(VARIANTS)}")
    if args.report:
        report(args.out, args.report, "python benchmarks/accuracy/adaptation.py " + " ".join(sys.argv[1:]))
        return 0
    run(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
