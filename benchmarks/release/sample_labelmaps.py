"""The labelmaps the shipped models give for the bundled sample, to check that a change leaves them bit for bit.

Segments every frame of Resources/Sample with each model and backend through ``load_segmenter`` (what the live path
loads: ``auto`` may pick INT8), exporting and quantising ONNX graphs afresh into ``--cache`` so that a change in export
or quantisation shows, and writes them into one ``.npz``. Run it in each checkout, then compare:

    PYTHONPATH=/path/to/old python benchmarks/release/sample_labelmaps.py --out /tmp/old.npz --cache /tmp/old-onnx
    python benchmarks/release/sample_labelmaps.py --out /tmp/new.npz --cache /tmp/new-onnx --compare /tmp/old.npz

(run from the old checkout's folder with its own copy of this script if it has one; the loader's import is looked
up in both places it has lived). Issue 27's refactor: 192 of 192 labelmaps identical.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np


def labelmaps(models, backends, cache: Path) -> dict:
    cache.mkdir(parents=True, exist_ok=True)
    tempfile.tempdir = str(cache)  # the ONNX graph cache lives in the temp folder: a fresh one per run
    try:
        from NerveSegLogic.inference.segmenter import load_segmenter
    except ImportError:  # before the house moves (issue 27)
        from NerveSegLogic.inference.backends import load_segmenter
    from NerveSegLogic.datasets.readers import open_dataset
    from NerveSegLogic.resources import sample_dir

    dataset = open_dataset(sample_dir())
    out = {}
    for model in models:
        for backend in backends:
            segmenter = load_segmenter(model, backend=backend, device="cpu", threads=1)
            for index in range(len(dataset)):
                out[f"{model}/{backend}/{index}"] = segmenter.segment(dataset[index].image).labelmap
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True, help=".npz of the labelmaps")
    parser.add_argument("--cache", type=Path, required=True, help="an empty folder for the exported graphs")
    parser.add_argument("--models", default="effnet2-unet,smistad-unet")
    parser.add_argument("--backends", default="auto,torch,onnx,onnx-int8")
    parser.add_argument("--compare", type=Path, help="an earlier --out to compare with, labelmap by labelmap")
    args = parser.parse_args(argv)
    maps = labelmaps(args.models.split(","), args.backends.split(","), args.cache)
    np.savez_compressed(args.out, **maps)
    print(f"{len(maps)} labelmaps -> {args.out}")
    if args.compare:
        before = np.load(args.compare)
        if sorted(before.files) != sorted(maps):
            print("the two files hold different models, backends or frames")
            return 1
        differ = [key for key in before.files if not np.array_equal(before[key], maps[key])]
        print(f"{len(maps) - len(differ)} of {len(maps)} identical" + (f"; differ: {', '.join(differ)}" if differ else ""))
        return 1 if differ else 0
    return 0


if __name__ == "__main__":
    sys.exit(main())
