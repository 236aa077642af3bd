"""The annotation store and its tools on real frames: import, save, read, queue, corrections, pre-labelling.

What it measures, on this machine, in a store in a temporary folder (local disk):

1. Import of an image folder (default: the bundled usgra-seg sample; ``--images`` for the full 204-frame set):
   frames per second and stored bytes per frame (PNG, lossless).
2. Saving a mask (the dataset's own masks, 534x512): ms per ``save_mask`` with the store's setting
   (WAL, synchronous=FULL: one fsync per save) and, for comparison only, synchronous=NORMAL; ms per ``set_status``,
   ``current`` and ``history`` of a 20-version frame.
3. ``review_queue`` over every imported frame with a model version each.
4. Each correction operation on a real mask.
5. With ``--prelabel``: ``prelabel`` with the default model (random weights when the card ships none: the speed, not the
   masks, is what is measured) on 2 torch threads, ms per frame including the store write.

Run:  .venv/bin/python benchmarks/annotation/bench_annotate.py [--images DIR] [--saves 200] [--prelabel]
          [--report benchmarks/annotation/annotate.md]
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]

from NerveSegLogic.annotate import corrections  # noqa: E402
from NerveSegLogic.annotate.importers import import_source  # noqa: E402
from NerveSegLogic.annotate.queue import review_queue  # noqa: E402
from NerveSegLogic.store.database import AnnotationStore  # noqa: E402
from NerveSegLogic.resources import sample_dir  # noqa: E402

CLASSES = {1: "nerve", 2: "blood_vessel"}


def _stats(samples_ms):
    a = np.asarray(samples_ms, dtype=float)
    return float(np.median(a)), float(np.percentile(a, 95))


def _timed(fn, repeats):
    out = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        out.append((time.perf_counter() - start) * 1000.0)
    return out


def _mask_for(store, frame_id: int, images_dir: Path) -> np.ndarray:
    """The data set's class-index mask of a frame (palette PNG of the same name in ``masks/`` beside ``images/``);
    an empty mask when there is none of the frame's size."""
    from PIL import Image

    record = store.frame(frame_id)
    path = images_dir.parent / "masks" / record.metadata.get("file", "")
    if path.is_file():
        mask = np.asarray(Image.open(path))
        if mask.shape == (record.height, record.width) and mask.max() <= 2:
            return mask.astype(np.uint8)
    return np.zeros((record.height, record.width), np.uint8)


def run(images_dir: Path, saves: int, do_prelabel: bool) -> list:
    lines = []
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "bench.nsdb"
        with AnnotationStore(path) as store:
            start = time.perf_counter()
            report = import_source(store, images_dir, subject="bench")
            seconds = time.perf_counter() - start
            n = len(report.frame_ids)
            size = path.stat().st_size + sum(p.stat().st_size for p in Path(tmp).glob("bench.nsdb-*"))
            first = store.frame(report.frame_ids[0])
            lines.append(f"| import {n} files ({first.width}x{first.height}) | {n / seconds:.1f} frames/s | "
                         f"{report.added} stored ({report.duplicates} had the pixels of a file before them), "
                         f"{size / report.added / 1024:.0f} KiB per stored frame |")

            frame_ids = list(dict.fromkeys(report.frame_ids))
            n = len(frame_ids)
            masks = {i: _mask_for(store, i, images_dir) for i in frame_ids}
            with_mask = sum(1 for m in masks.values() if m.any())
            sizes = sorted({f"{m.shape[1]}x{m.shape[0]}" for m in masks.values()})
            lines[-1] = lines[-1].replace(f"({first.width}x{first.height})", f"({', '.join(sizes)})")

            # Each frame gets a model version first (for the queue), with a made-up uncertainty.
            rng = np.random.default_rng(0)
            for frame_id in frame_ids:
                store.save_mask(frame_id, masks[frame_id], CLASSES, "bench", "model", None,
                                model_name="bench-model", uncertainty=float(rng.uniform(0, 1)))

            for mode in ("FULL", "NORMAL"):
                store._conn.execute(f"PRAGMA synchronous={mode}")
                samples = []
                for k in range(saves):
                    frame_id = frame_ids[k % n]
                    head = store.current(frame_id).id
                    mask = masks[frame_id].copy()
                    mask[k % mask.shape[0], :] = 1  # a different mask each time: a new mask row is written too
                    start = time.perf_counter()
                    store.save_mask(frame_id, mask, CLASSES, "alice", "corrected", head)
                    samples.append((time.perf_counter() - start) * 1000.0)
                med, p95 = _stats(samples)
                note = "the store's setting" if mode == "FULL" else "comparison only"
                lines.append(f"| save_mask, synchronous={mode} ({note}), {saves} saves of data set masks "
                             f"({with_mask} of {n} frames have one) | {med:.2f} ms median | {p95:.2f} ms p95 |")
            store._conn.execute("PRAGMA synchronous=FULL")

            target = frame_ids[0]
            status_ms = []
            for k in range(20):
                head = store.current(target).id
                start = time.perf_counter()
                store.set_status(target, "needs-review" if k % 2 else "draft", "bob", head)
                status_ms.append((time.perf_counter() - start) * 1000.0)
            med, p95 = _stats(status_ms)
            lines.append(f"| set_status | {med:.2f} ms median | {p95:.2f} ms p95 |")
            versions = len(store.summaries(frame_id=target))
            med, p95 = _stats(_timed(lambda: store.current(target), 50))
            lines.append(f"| current (decode one mask) | {med:.2f} ms median | {p95:.2f} ms p95 |")
            med, p95 = _stats(_timed(lambda: store.history(target), 20))
            lines.append(f"| history of a {versions}-version frame (decodes every mask) | {med:.2f} ms median | "
                         f"{p95:.2f} ms p95 |")
            med, p95 = _stats(_timed(lambda: review_queue(store), 5))
            lines.append(f"| review_queue over {n} frames | {med:.1f} ms median | {p95:.1f} ms p95 |")

            mask = next((m for m in masks.values() if (m == 1).any()), masks[frame_ids[0]])
            shape = mask.shape
            ops = {
                "paint r=10": lambda: corrections.paint(mask, (200, 200), 10, 1),
                "erase r=10": lambda: corrections.erase(mask, (200, 200), 10),
                "polygon (6 points)": lambda: corrections.fill_polygon(
                    mask, [(100, 100), (180, 90), (220, 150), (200, 220), (130, 230), (90, 170)], 2),
                "fill-holes (all classes)": lambda: corrections.fill_holes(mask),
                "largest (all classes)": lambda: corrections.keep_largest_component(mask),
                "smooth r=2 (all classes)": lambda: corrections.smooth_outline(mask, 2),
                "ellipse (nerve)": lambda: corrections.fit_ellipse(mask, 1),
                "relabel": lambda: corrections.relabel(mask, 2, 1),
            }
            for name, fn in ops.items():
                med, p95 = _stats(_timed(fn, 30))
                lines.append(f"| correction {name}, {shape[1]}x{shape[0]} | {med:.2f} ms median | "
                             f"{p95:.2f} ms p95 |")

        if do_prelabel:
            lines.extend(_prelabel(images_dir, Path(tmp) / "prelabel.nsdb"))
    return lines


def _prelabel(images_dir: Path, path: Path) -> list:
    import torch

    from NerveSegLogic.annotate.prelabel import prelabel
    from NerveSegLogic.inference.segmenter import Segmenter
    from NerveSegLogic.models import registry

    torch.set_num_threads(2)
    name = registry.default_name()  # what an annotator pre-labels with unless they pick another model
    card = registry.card(name)
    if card.has_weights:
        segmenter = Segmenter.from_name(name, backend="auto", threads=2)
        weights = "trained weights"
    else:
        torch.manual_seed(0)
        segmenter = Segmenter.from_module(card, registry.build_from_card(card).eval(), threads=2)
        weights = "random weights (card ships none)"
    from NerveSegLogic.inference.backends import describe

    with AnnotationStore(path) as store:
        report = import_source(store, images_dir, subject="bench")
        segmenter.warm_up()
        start = time.perf_counter()
        result = prelabel(store, segmenter, "bench", progress=False)
        seconds = time.perf_counter() - start
    n = len(result.version_ids)
    return [f"| prelabel {name} ({weights}), {describe(segmenter.backend)} 2 threads, {n} frames | "
            f"{seconds / max(n, 1) * 1000:.0f} ms per frame | includes the store write |"]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=Path, default=sample_dir() / "images",
                        help="image folder to import (masks/ beside it are used as masks); default: the sample")
    parser.add_argument("--saves", type=int, default=200)
    parser.add_argument("--prelabel", action="store_true", help="also time pre-labelling with the default model")
    parser.add_argument("--report", type=Path, default=None, help="write the table as Markdown here")
    args = parser.parse_args()
    lines = run(args.images, args.saves, args.prelabel)
    machine = f"{platform.node()}: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, " \
              f"{platform.system()} {platform.release()}, Python {platform.python_version()}"
    try:
        import sqlite3
        machine += f", SQLite {sqlite3.sqlite_version}"
    except ImportError:
        pass
    images = args.images.resolve()
    shown = images.relative_to(ROOT) if images.is_relative_to(ROOT) else Path("<data>") / images.name
    command = "benchmarks/annotation/bench_annotate.py " + " ".join(
        a if not a.startswith("/") else str(shown) for a in sys.argv[1:])
    text = "\n".join([
        "# Annotation store benchmark", "",
        f"- date: {dt.datetime.now(dt.timezone.utc).strftime('%Y-%m-%d %H:%M UTC')}",
        f"- machine: {machine}",
        f"- command: `.venv/bin/python {command.strip()}`",
        f"- images: `{shown}`; store in a temporary folder on the local disk; 1-minute load average at the end "
        f"{os.getloadavg()[0]:.2f} on {os.cpu_count()} cores (above the core count, other work competed: then take "
        "the medians, not the tails, as the figures)", "",
        "| what | figure | detail |", "|---|---|---|", *lines, ""])
    print(text)
    if args.report:
        args.report.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
