#!/usr/bin/env python3
"""Two INT8 recipes of one model's shipped weights, side by side: time of the model alone, interleaved, and how far
their labelmaps are from the float32 graph's on every frame of a data set.

benchmarks/int8/int8_recipes.py scores recipes on the cross-validation folds (the Dice change ``auto`` decides by) but
times them one after the other, so on this VM, whose speed drifts by +-30 % over minutes, it cannot tell a 1-2 ms
difference. This script alternates the graphs call by call.

    .venv/bin/python benchmarks/int8/bench_int8_recipe_speed.py --data ../shared/data/usgra-seg --model effnet2-unet \
        --recipes movavg,movavg-float-softmax

Recipes are int8_recipes.py's (RECIPES there), calibrated as the live path calibrates: on the 24 bundled frames.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

REPO = Path(__file__).resolve().parents[2]

import numpy as np  # noqa: E402

from NerveSegLogic.inference.int8_recipes import RECIPES, quantize  # noqa: E402
from NerveSegLogic.testing.machine import cpu_name  # noqa: E402
from NerveSegLogic.train.crossval import images_by_name as frames  # noqa: E402  (the data set's frames, sorted by name)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--model", default="effnet2-unet")
    parser.add_argument("--recipes", required=True,
                        help=f"two of int8_recipes.py's recipes, comma-separated: {', '.join(RECIPES)}")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--calls", type=int, default=400, help="timed calls per graph, alternating")
    args = parser.parse_args(argv)

    from NerveSegLogic.inference import backends
    from NerveSegLogic.inference.quantize import calibration_frames
    from NerveSegLogic.imaging import placement as pp
    from NerveSegLogic.inference.segmenter import Segmenter
    from NerveSegLogic.models import registry

    card = registry.card(args.model)
    recipes = args.recipes.split(",")
    images = frames(args.data)
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="nerveseg-recipes-") as work:
        fp32 = registry.export_onnx(args.model, Path(work) / f"{args.model}.onnx")
        calibration = calibration_frames()
        graphs = {r: quantize(fp32, Path(work) / f"{r}.onnx", card, calibration, r) for r in recipes}
        reference = Segmenter(card, backends.OnnxBackend(fp32, threads=args.threads))
        segmenters = {r: Segmenter(card, backends.OnnxBackend(p, threads=args.threads)) for r, p in graphs.items()}
        differ = {r: 0 for r in recipes}
        foreground = {r: 0 for r in recipes}
        between = 0
        for image in images:
            ref = reference.segment(image).labelmap
            labels = {r: s.segment(image).labelmap for r, s in segmenters.items()}
            for r, labelmap in labels.items():
                differ[r] += int((labelmap != ref).sum())
                foreground[r] += int(((labelmap > 0) | (ref > 0)).sum())
            between += int((labels[recipes[0]] != labels[recipes[1]]).sum())
        x = pp.preprocess(images[0], card.input)[0][np.newaxis]
        times = {r: [] for r in recipes}
        for s in segmenters.values():
            for _ in range(10):
                s.backend.run(x)
        for call in range(args.calls):
            order = recipes if call % 2 == 0 else recipes[::-1]
            for r in order:
                start = time.perf_counter()
                segmenters[r].backend.run(x)
                times[r].append(1000 * (time.perf_counter() - start))
    load_after = os.getloadavg()
    lines = [f"# INT8 recipes of {args.model}'s shipped weights, interleaved", "",
             f"- {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC; {cpu_name()}, {os.cpu_count()} cores, "
             f"{args.threads} thread(s); load (1, 5, 15 min) before {' '.join(f'{v:.2f}' for v in load_before)}, "
             f"after {' '.join(f'{v:.2f}' for v in load_after)}",
             f"- {len(images)} frames of {args.data.name}; the model alone on one frame, {args.calls} calls per graph "
             "alternating", "",
             "| recipe | model p50 ms | p90 ms | p99 ms | labelmap pixels differing from float32's (of foreground) |",
             "|---|---|---|---|---|"]
    for r in recipes:
        p50, p90, p99 = (np.percentile(times[r], q) for q in (50, 90, 99))
        lines.append(f"| {r} | {p50:.2f} | {p90:.2f} | {p99:.2f} | {differ[r]:,} ({differ[r] / foreground[r]:.2%}) |")
    lines += ["", f"Labelmap pixels differing between the two recipes: {between:,}."]
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
