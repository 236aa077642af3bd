#!/usr/bin/env python3
"""Would running the model on fewer zero-padded rows give the same answer? (issue 13, a cut that was not kept)

A 580x420 frame under ``fit_width_pad_crop_bottom`` fills 139 of the 192 input rows of a 192x192 model; the other
53 are zeros. Cutting the input to the next multiple of the network's stride (160 rows) would save ~1/6 of the
model's work. This measures whether the answer stays the same: usgra-seg frames cut to the 580x420 aspect (the top
371 of 512 rows), each segmented in torch at the full 192x192 input and at 192x160, compared on the frame's own rows
at the model's resolution (argmax; foreground = either run marks a class).

    .venv/bin/python benchmarks/bench_pad_rows.py --data ../shared/data/usgra-seg --model effnet2-unet

A benchmark, not a test; it prints its figures.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))


def dice(a: np.ndarray, b: np.ndarray):
    total = int(a.sum() + b.sum())
    return None if total == 0 else 2.0 * int((a & b).sum()) / total


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--model", default="effnet2-unet")
    parser.add_argument("--rows", type=int, default=160, help="input rows of the cut run (a multiple of 32)")
    parser.add_argument("--every", type=int, default=2, help="use every N-th frame")
    args = parser.parse_args(argv)

    import cv2
    import torch

    from NerveSegLogic.datasets.readers import open_dataset
    from NerveSegLogic.models import registry
    from NerveSegLogic.train.data import FrameStore

    torch.set_num_threads(1)
    card = registry.card(args.model)
    size = card.input.width
    if card.input.height != size or card.input.resize != "fit_width_pad_crop_bottom":
        raise SystemExit(f"{args.model}: expects a square input under fit_width_pad_crop_bottom, got {card.input}")
    model = registry.load_from_card(card).eval()
    dataset = open_dataset(args.data)
    store = FrameStore(dataset, None, list(range(len(dataset.names()))))
    differing = foreground = 0
    worst = 0.0
    nerve = {"full": [], "cut": []}
    seconds = {"full": 0.0, "cut": 0.0}
    count = 0
    for index in range(0, len(store), args.every):
        frame = store[index]
        image = frame.image[..., 0] if frame.image.ndim == 3 else frame.image
        keep = round(image.shape[1] * 420 / 580)  # rows of a 580x420-shaped frame
        image, mask = image[:keep], frame.mask[:keep]
        rows = round(keep * size / image.shape[1])
        scaled = cv2.resize(image.astype(np.float32) / 255.0, (size, rows), interpolation=cv2.INTER_LINEAR)
        full = np.zeros((1, 1, size, size), np.float32)
        full[0, 0, :rows] = scaled
        answers = {}
        with torch.no_grad():
            for name, batch in (("full", full), ("cut", np.ascontiguousarray(full[:, :, :args.rows]))):
                start = time.perf_counter()
                answers[name] = model(torch.from_numpy(batch))[0, :, :rows].argmax(0).numpy()
                seconds[name] += time.perf_counter() - start
        either = (answers["full"] > 0) | (answers["cut"] > 0)
        wrong = int(((answers["full"] != answers["cut"]) & either).sum())
        differing, foreground = differing + wrong, foreground + int(either.sum())
        worst = max(worst, wrong / max(int(either.sum()), 1))
        truth = cv2.resize(mask, (size, rows), interpolation=cv2.INTER_NEAREST) == 1
        for name in answers:
            value = dice(answers[name] == 1, truth)
            if value is not None:
                nerve[name].append(value)
        count += 1
    print(f"{args.model}: {count} frames cut to the 580x420 aspect; {size}x{size} input vs {size}x{args.rows}")
    print(f"foreground pixels labelled differently: {differing / max(foreground, 1):.4f} (worst frame {worst:.4f})")
    print(f"nerve Dice against the masks (these are the shipped model's training frames, so only a comparison): "
          f"full {np.mean(nerve['full']):.4f}, cut {np.mean(nerve['cut']):.4f}")
    print(f"torch, 1 thread: full {seconds['full'] / count * 1e3:.1f} ms, cut {seconds['cut'] / count * 1e3:.1f} ms "
          "per frame")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
