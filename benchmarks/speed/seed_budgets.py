#!/usr/bin/env python3
"""What the four seed models' papers' training recipes cost on this CPU: steps per second at each paper's input
size with 1 and 2 threads, and from them the wall time of each full recipe (issue 29, "measure first").

For each seed (smistad-unet, sa-unet, ragcm at 512x512 and at 384x384, bpmsegnet) the trainer itself is built
(:class:`NerveSegLogic.train.loop.Trainer`: the card's loss, optimiser, augmentations and batch size, at the
paper's input size) on the first ``batch`` frames of usgra-seg, and its own ``step`` is timed: forward, the card's
loss, backward, optimiser step, on a batch prepared the way training prepares it (the card's augmentations).
A few warm-up steps, then steps until ``--seconds`` have passed (at least ``--min-steps``, at most
``--max-steps``). The batch preparation (reading, resizing, augmenting; the trainer's ``_batch``) is timed apart,
and one eval-mode forward pass of one frame stands in for a validation frame.

From the faster thread count's seconds per step:
  full recipe, all 204 frames = epochs x ceil(204 / batch) x (step + preparation)
  one CV fold                 = epochs x ceil(train frames / batch) x (step + preparation)
                                + epochs x held-out frames x one forward pass (the per-epoch validation)
and the share of each recipe a few hours (--budgets) would give.

    nice -n 5 .venv/bin/python benchmarks/speed/seed_budgets.py --data ../shared/data/usgra-seg
    # writes benchmarks/speed/seed_budgets.md and benchmarks/speed/seed_budgets.json

The report records the 1-minute load average before and after each measurement: the project's two cores are shared,
and a load above 1 slows the two-thread figures most.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import statistics
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

# Waiting OpenMP workers must sleep, not spin, on a shared machine (benchmarks/accuracy/compare_models.py says why); set
# before torch loads, as NerveSegLogic does on import.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

HERE = Path(__file__).resolve().parent

from NerveSegLogic.testing.machine import cpu_name, load_note

#: Frames in usgra-seg, the data every seed trains on here.
ALL_FRAMES = 204
#: Contiguous CV blocks (benchmarks/accuracy/compare_models.py, ``nerveseg train --folds``).
FOLDS = 5

#: The seeds at their papers' input sizes, with the epochs of the paper's recipe and where each figure comes from.
#: The batch size is the card's recipe's (Resources/Models/<name>.json).
SEEDS = [
    {"model": "smistad-unet", "size": (256, 256), "epochs": 150,
     "source": "Smistad et al.: 256x256, 150 epochs, Dice loss, Adam, six augmentations; batch 16 and lr 1e-3 are "
               "the card's choices (not in what we could consult)"},
    {"model": "sa-unet", "size": (256, 256), "epochs": 100,
     "source": "Kim et al.: Dice loss, Adam lr 5e-4, batch 4, shear +-15 degrees; neither the input size nor the "
               "epochs are in what we could consult: the card's 256x256 and its 100 epochs (with early stopping)"},
    {"model": "ragcm", "size": (512, 512), "epochs": 70,
     "source": "Wu et al.: 512x512, batch 8, 70 epochs, BCE + Dice + L2, Adam lr 1e-4 poly 0.9 per iteration, "
               "horizontal, vertical and diagonal flips, rotation +-15 degrees (the flips and rotation were timed "
               "only later, when the card's recipe gained them: in the 384x384 runs' logs)"},
    {"model": "ragcm", "size": (384, 384), "epochs": 70,
     "source": "issue 29's fallback: the smallest size where RPA's 11x11 bins stay below the 12x12 top feature map "
               "(ResNet-34, stride 32); same recipe"},
    {"model": "bpmsegnet", "size": (640, 640), "epochs": 30,
     "source": "Ding et al.: 640x640, SGD momentum 0.9, wd 1e-4, lr 0.01 /10 every 10 epochs; batch 2 and 30 "
               "epochs (three lr steps) are the card's choices (not in what we could consult)"},
]


def load1() -> float:
    return os.getloadavg()[0]


def fold_sizes(frames: int = ALL_FRAMES, folds: int = FOLDS):
    """(training frames, held-out frames) of the default fold (the last block), as ``nerveseg train`` splits."""
    from NerveSegLogic.train.data import split_indices

    train, held_out = split_indices([f"{i:04d}" for i in range(frames)], folds, None)
    return len(train), len(held_out)


def measure(seed, data: Path, threads: int, warmup: int, min_steps: int, max_steps: int, seconds: float):
    """Seconds per trainer step and per batch preparation, and one eval forward, for ``seed`` at ``threads``."""
    import torch

    from NerveSegLogic.models import registry
    from NerveSegLogic.train.loop import TrainOptions, Trainer

    batch = int(registry.card(seed["model"]).training["recipe"]["batch_size"])
    with tempfile.TemporaryDirectory(prefix="nerveseg-budget-") as tmp:
        options = TrainOptions(model=seed["model"], data=data, out=Path(tmp) / "run", input_size=seed["size"],
                               folds=1, limit_images=batch, threads=threads, progress=False, device="cpu")
        trainer = Trainer(options)
        assert trainer.batch_size == batch, (trainer.batch_size, batch)
        indices = list(range(batch))
        load_before = load1()
        prep, steps = [], []
        warmed = 0
        for index in range(warmup + max_steps):
            start = time.perf_counter()
            x, y = trainer._batch(indices, epoch=index, first_position=0)  # a fresh augmentation each step
            middle = time.perf_counter()
            trainer.step(x, y)
            end = time.perf_counter()
            slow = end - start > seconds / 3.0
            if warmed < warmup and not (slow and warmed >= 1):
                # a slow model (a step over a third of --seconds) warms up with one step: the first carries the
                # one-time costs, and the budget of the run stays near 20 minutes
                warmed += 1
                continue
            prep.append(middle - start)
            steps.append(end - middle)
            if len(steps) >= (min(2, min_steps) if slow else min_steps) and sum(steps) + sum(prep) >= seconds:
                break
        model = trainer.model.eval()
        with torch.inference_mode():
            one = x[:1]
            model(one)  # warm-up (an instance model returns detections in eval mode)
            start = time.perf_counter()
            model(one)
            forward = time.perf_counter() - start
        model.train()
        return {"threads": threads, "batch": batch, "warmup_steps": warmed, "steps_timed": len(steps),
                "step_s": statistics.median(steps), "step_s_mean": statistics.fmean(steps),
                "step_s_min": min(steps), "step_s_max": max(steps),
                "prep_s": statistics.median(prep), "forward_s": forward,
                "steps_per_s": 1.0 / statistics.median(steps),
                "load1_before": load_before, "load1_after": load1(),
                "torch_threads": torch.get_num_threads()}


def budget(seed, runs, budgets_h):
    """The full recipe's wall time from the faster thread count, on all frames and per CV fold."""
    best = min(runs, key=lambda r: r["step_s"] + r["prep_s"])
    batch = best["batch"]
    train_frames, held_out = fold_sizes()
    per_step = best["step_s"] + best["prep_s"]
    all_steps = seed["epochs"] * math.ceil(ALL_FRAMES / batch)
    fold_steps = seed["epochs"] * math.ceil(train_frames / batch)
    all_h = all_steps * per_step / 3600.0
    fold_h = (fold_steps * per_step + seed["epochs"] * held_out * best["forward_s"]) / 3600.0
    return {"threads": best["threads"], "per_step_s": per_step,
            "all_frames": {"frames": ALL_FRAMES, "steps": all_steps, "hours": all_h,
                           "share": {f"{b:g}h": min(1.0, b / all_h) for b in budgets_h},
                           "epochs_in": {f"{b:g}h": min(seed["epochs"], b / (all_h / seed["epochs"]))
                                         for b in budgets_h}},
            "per_fold": {"frames": train_frames, "held_out": held_out, "steps": fold_steps, "hours": fold_h,
                         "share": {f"{b:g}h": min(1.0, b / fold_h) for b in budgets_h},
                         "epochs_in": {f"{b:g}h": min(seed["epochs"], b / (fold_h / seed["epochs"]))
                                       for b in budgets_h}},
            "all_five_folds_hours": FOLDS * fold_h}


def fmt_h(hours: float) -> str:
    return f"{hours:.1f}" if hours >= 10 else f"{hours:.2f}"


TRAINED_HEADING = "## What each seed was given"


def write_report(result, path: Path) -> None:
    budgets = result["budgets_h"]
    lines = [
        "# Seed models: what their papers' training recipes cost on this CPU",
        "",
        "Issue 29, \"measure first\". Each seed at its paper's input size, timed through the trainer's own step "
        "(`Trainer.step`: forward, the card's loss, backward, optimiser step) at the card's batch size on real "
        "usgra-seg frames prepared with the card's augmentations (`Trainer._batch`, timed apart as *prep*). "
        f"{result['warmup']} warm-up steps, then steps until {result['seconds']:g} s had passed "
        f"(at least {result['min_steps']}, at most {result['max_steps']}); medians. From the faster thread count: "
        f"full recipe = epochs x ceil({ALL_FRAMES} / batch) x (step + prep); one CV fold = epochs x "
        f"ceil({result['fold_frames'][0]} / batch) x (step + prep) + epochs x {result['fold_frames'][1]} held-out "
        "frames x one eval forward pass (the per-epoch validation).",
        "",
        f"- machine: {result['cpu']}, {result['cores']} cores, torch {result['torch']}, OMP_WAIT_POLICY "
        f"{result['omp_wait_policy']}, {result['date']}",
        f"- load: {load_note(result['loads_before'])}; 1-minute load average from "
        f"{min(result['loads_before'] + result['loads_after']):.2f} to "
        f"{max(result['loads_before'] + result['loads_after']):.2f} around the measurements (other engineers' jobs "
        "share the two cores)" + (f", this script at nice {result['nice']}" if result["niced"] else ""),
        f"- command: `{result['command']}`",
        "",
        "| model | input | batch | steps/s 1 thread | steps/s 2 threads | prep s/batch | fwd s/frame | epochs (paper) "
        f"| full recipe, {ALL_FRAMES} frames, h | per CV fold, h | 5 folds, h | "
        + " | ".join(f"share in {b:g} h (fold)" for b in budgets) + " |",
        "|---|---|---|---|---|---|---|---|---|---|---|" + "---|" * len(budgets),
    ]
    for entry in result["seeds"]:
        runs = {r["threads"]: r for r in entry["runs"]}
        b = entry["budget"]

        def sps(t):
            r = runs.get(t)
            return f"{r['steps_per_s']:.3f} ({r['step_s']:.2f} s, n={r['steps_timed']})" if r else "-"

        shares = " | ".join(f"{100 * b['per_fold']['share'][f'{x:g}h']:.0f} % "
                            f"({b['per_fold']['epochs_in'][f'{x:g}h']:.1f} ep)" for x in budgets)
        lines.append(
            f"| {entry['model']} | {entry['size'][0]}x{entry['size'][1]} | {entry['batch']} | {sps(1)} | {sps(2)} | "
            f"{b and runs[b['threads']]['prep_s']:.2f} | {runs[b['threads']]['forward_s']:.2f} | {entry['epochs']} | "
            f"{fmt_h(b['all_frames']['hours'])} | {fmt_h(b['per_fold']['hours'])} | "
            f"{fmt_h(b['all_five_folds_hours'])} | {shares} |")
    lines += [
        "",
        "Hours use the faster of the two thread counts (its step + prep); *share in N h (fold)* is the fraction of "
        "one fold's full recipe (and the epochs) that N hours of training would give. The all-frames figure "
        "(the shipped model, no validation) has no validation passes.",
        "",
        "## Where each recipe comes from",
        "",
    ]
    for entry in result["seeds"]:
        lines.append(f"- **{entry['model']} {entry['size'][0]}x{entry['size'][1]}**: {entry['source']}.")
    lines += [
        "",
        "## Reading it",
        "",
        "- Steps per second are per optimiser step of the card's batch; an epoch on all frames is "
        f"ceil({ALL_FRAMES} / batch) steps.",
        "- Two threads on the project's two cores help only when nothing else runs; with other jobs on the machine "
        "(the load averages above) the two-thread figure can be slower than one thread.",
        "- A paper's recipe that takes more than a few hours per fold cannot be scored on all five folds here; the "
        "cards then state the share of the recipe each got.",
        "- Not included: the checkpoint writes (a few seconds per epoch) and the end-of-run card and curve.",
        "",
    ]
    # The section on what each seed was given is kept from the existing report: it records training runs, which
    # this script does not make.
    kept = ""
    if path.is_file():
        previous = path.read_text(encoding="utf-8")
        if TRAINED_HEADING in previous:
            kept = "\n" + previous[previous.index(TRAINED_HEADING):].rstrip() + "\n"
    path.write_text("\n".join(line for line in lines if line is not None) + "\n" + kept, encoding="utf-8")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default=str(HERE.parents[2] / "shared" / "data" / "usgra-seg"),
                        help="usgra-seg folder (default: %(default)s)")
    parser.add_argument("--models", default=None,
                        help="comma-separated NAME or NAME@HxW to measure (default: every seed of SEEDS)")
    parser.add_argument("--threads", default="1,2", help="thread counts (default: %(default)s)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps first (default: %(default)s)")
    parser.add_argument("--min-steps", type=int, default=3, help="timed steps at least (default: %(default)s)")
    parser.add_argument("--max-steps", type=int, default=20, help="timed steps at most (default: %(default)s)")
    parser.add_argument("--seconds", type=float, default=30.0,
                        help="time steps until this long has passed (default: %(default)s)")
    parser.add_argument("--budgets", default="2,4,8", help="hours for the share column (default: %(default)s)")
    parser.add_argument("--out", default=str(HERE / "seed_budgets"),
                        help="report path without suffix: writes .md and .json (default: %(default)s)")
    args = parser.parse_args(argv)

    import torch

    seeds = SEEDS
    if args.models:
        wanted = [m.strip() for m in args.models.split(",") if m.strip()]
        seeds = [s for s in SEEDS if s["model"] in wanted or f"{s['model']}@{s['size'][0]}x{s['size'][1]}" in wanted]
    threads = [int(t) for t in args.threads.split(",")]
    budgets = [float(b) for b in args.budgets.split(",")]
    out = Path(args.out)
    json_path = out.with_suffix(".json")
    previous = json.loads(json_path.read_text()) if json_path.is_file() else None
    results = []
    for seed in seeds:
        runs = []
        for count in threads:
            run = measure(seed, Path(args.data), count, args.warmup, args.min_steps, args.max_steps, args.seconds)
            print(json.dumps({"model": seed["model"], "size": seed["size"], **run}), flush=True)
            runs.append(run)
        results.append({"model": seed["model"], "size": list(seed["size"]), "epochs": seed["epochs"],
                        "batch": runs[0]["batch"], "source": seed["source"], "runs": runs,
                        "budget": budget(seed, runs, budgets)})
    if previous and args.models:
        # a partial rerun keeps the other seeds' rows from the last full run
        done = {(r["model"], tuple(r["size"])) for r in results}
        results = [r for r in previous["seeds"] if (r["model"], tuple(r["size"])) not in done] + results
        order = [(s["model"], tuple(s["size"])) for s in SEEDS]
        results.sort(key=lambda r: order.index((r["model"], tuple(r["size"]))))
    loads_before = [r["load1_before"] for e in results for r in e["runs"]]
    loads_after = [r["load1_after"] for e in results for r in e["runs"]]
    result = {
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "cpu": cpu_name(), "cores": os.cpu_count(), "torch": torch.__version__, "python": platform.python_version(),
        "niced": os.nice(0) > 0, "nice": os.nice(0), "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"),
        "command": "nice -n 5 .venv/bin/python benchmarks/speed/seed_budgets.py " + " ".join(sys.argv[1:] if argv is None
                                                                                       else argv),
        "warmup": args.warmup, "min_steps": args.min_steps, "max_steps": args.max_steps, "seconds": args.seconds,
        "budgets_h": budgets, "fold_frames": list(fold_sizes()),
        "loads_before": loads_before, "loads_after": loads_after, "seeds": results,
    }
    json_path.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    write_report(result, out.with_suffix(".md"))
    print(f"wrote {out.with_suffix('.md')} and {json_path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
