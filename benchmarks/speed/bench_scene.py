"""Scene speed: how long LiveScene.apply takes per frame on the main thread, what recording costs, and saving.

For 580x420 uint8 frames with 2 classes (nerve, blood vessel) it measures, on the real MRML library (slicer-core):
the milliseconds per ``apply`` with recording on and off (p50, p95, p99, max), the parts of it (volume update,
labelmap write, the two sequence appends), the memory a recorded frame takes, and the time and disk size of
``save``. Frames are the bundled sample images resized to 580x420; labelmaps are two circles moving by a few
pixels per frame (apply's cost does not depend on what the labelmap shows).

    .venv/bin/python benchmarks/speed/bench_scene.py                # writes benchmarks/speed/scene.md
    .venv/bin/python benchmarks/speed/bench_scene.py --frames 1000 --report /tmp/scene.md

Run it on an otherwise idle machine: other processes on the cores show up in the tails.
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent

WIDTH, HEIGHT = 580, 420


def sample_images(count: int):
    """Grey uint8 (HEIGHT, WIDTH) frames from the bundled sample, cycled to ``count``."""
    import cv2

    from NerveSegLogic.resources import sample_dir

    files = sorted((sample_dir() / "images").glob("*.png"))
    images = [cv2.resize(cv2.imread(str(p), cv2.IMREAD_GRAYSCALE), (WIDTH, HEIGHT), interpolation=cv2.INTER_AREA)
              for p in files]
    return [images[k % len(images)] for k in range(count)]


def labelmaps(count: int):
    jj, ii = np.mgrid[:HEIGHT, :WIDTH]
    out = []
    for k in range(count):
        lm = np.zeros((HEIGHT, WIDTH), np.uint8)
        lm[(ii - 200 - (k % 40)) ** 2 + (jj - 220) ** 2 <= 45 ** 2] = 1
        lm[(ii - 400) ** 2 + (jj - 150 - (k % 20)) ** 2 <= 35 ** 2] = 2
        out.append(lm)
    return out


def results(images, maps, classes, geometry):
    from NerveSegLogic.frame import Frame, SegmentationResult

    start = time.perf_counter()
    out = []
    for k, (image, lm) in enumerate(zip(images, maps)):
        frame = Frame(image=image, geometry=geometry, frame_id=k)
        frame.stamp("received", start + k / 25.0)
        out.append(SegmentationResult(frame=frame, labelmap=lm, model_name="bench", classes=classes))
    return out


def rss_mb() -> float:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024.0
    return float("nan")


def stats(ms):
    a = np.asarray(ms)
    return {"n": len(a), "mean": a.mean(), "p50": np.percentile(a, 50), "p95": np.percentile(a, 95),
            "p99": np.percentile(a, 99), "max": a.max()}


def timed_apply(scene, items, warmup: int):
    for r in items[:warmup]:
        scene.apply(r)
    ms = []
    for r in items[warmup:]:
        t = time.perf_counter()
        scene.apply(r)
        ms.append((time.perf_counter() - t) * 1000.0)
    return ms


def load_average() -> str:
    try:
        one, five, fifteen = os.getloadavg()
        return f"{one:.1f} / {five:.1f} / {fifteen:.1f}"
    except OSError:
        return "n/a"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--frames", type=int, default=300, help="frames applied per measurement (default 300)")
    parser.add_argument("--warmup", type=int, default=10, help="frames applied before timing (default 10)")
    parser.add_argument("--report", default=str(HERE / "scene.md"))
    args = parser.parse_args(argv)

    from NerveSegLogic.classes import USGRA_SEG_MAPPING, classes_from_mapping
    from NerveSegLogic.frame import ImageGeometry
    from NerveSegLogic.scene import LiveScene, mrml
    from NerveSegLogic.scene.nodes import ClassSegments, update_volume

    load_before = load_average()
    classes = classes_from_mapping(USGRA_SEG_MAPPING)
    geometry = ImageGeometry(spacing=(0.1, 0.1, 1.0), origin=(-29.0, 0.0, 0.0))
    n = args.frames + args.warmup
    items = results(sample_images(n), labelmaps(n), classes, geometry)

    t = time.perf_counter()
    slicer = mrml.slicer_module()
    import_s = time.perf_counter() - t

    rows = {}
    # apply without recording
    scene = LiveScene(classes, record=False)
    rows["apply, recording off"] = stats(timed_apply(scene, items, args.warmup))
    scene.clear()

    # apply with recording; memory per recorded frame from the resident set growth
    scene = LiveScene(classes, record=True)
    for r in items[: args.warmup]:
        scene.apply(r)
    rss0 = rss_mb()
    ms = []
    for r in items[args.warmup:]:
        t = time.perf_counter()
        scene.apply(r)
        ms.append((time.perf_counter() - t) * 1000.0)
    rows["apply, recording on"] = stats(ms)
    mb_per_frame = (rss_mb() - rss0) / args.frames

    # the parts of apply
    parts = {}
    volume = scene.scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "bench volume")
    segmentation = scene.scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "bench segmentation")
    segments = ClassSegments(segmentation, classes)
    volume_ms, labelmap_ms, append_ms = [], [], []
    image_sequence = scene.scene.AddNewNodeByClass("vtkMRMLSequenceNode", "bench image sequence")
    segmentation_sequence = scene.scene.AddNewNodeByClass("vtkMRMLSequenceNode", "bench seg sequence")
    for k, r in enumerate(items):
        t0 = time.perf_counter()
        update_volume(volume, r.frame.image, geometry)
        t1 = time.perf_counter()
        segments.write(r.labelmap, geometry)
        t2 = time.perf_counter()
        image_sequence.SetDataNodeAtValue(volume, f"{k * 0.04:.3f}")
        segmentation_sequence.SetDataNodeAtValue(segmentation, f"{k * 0.04:.3f}")
        t3 = time.perf_counter()
        if k >= args.warmup:
            volume_ms.append((t1 - t0) * 1000)
            labelmap_ms.append((t2 - t1) * 1000)
            append_ms.append((t3 - t2) * 1000)
    parts["volume node update (copy 243,600 px into the existing buffer)"] = stats(volume_ms)
    parts["segmentation write (one shared labelmap, lookup-table copy)"] = stats(labelmap_ms)
    parts["recording: append one item to each of the two sequences (deep copies)"] = stats(append_ms)
    for node in (volume, segmentation, image_sequence, segmentation_sequence):
        scene.scene.RemoveNode(node)

    # save
    with tempfile.TemporaryDirectory(prefix="nerveseg-bench-scene-") as folder:
        t = time.perf_counter()
        mrml_path = scene.save(folder)
        save_s = time.perf_counter() - t
        files = sorted(Path(folder).iterdir())
        sizes = {p.name: p.stat().st_size for p in files}
        save_note = mrml_path.name
    recorded = scene.recorded_count
    scene.clear()
    load_after = load_average()

    import vtkmodules

    lines = [
        "# LiveScene: applying results to MRML, recording, saving",
        "",
        f"- Date: {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC",
        f"- Machine: {platform.system()} {platform.release()}, {platform.processor() or platform.machine()}, "
        f"{os.cpu_count()} logical CPUs, Python {platform.python_version()}, numpy {np.__version__}, "
        f"VTK {getattr(vtkmodules, '__version__', '?')}, MRML from {getattr(slicer, '__file__', '?').split(os.sep)[-2]}",
        f"- Load average (1 / 5 / 15 min): {load_before} at the start, {load_after} at the end "
        "(the cores are shared with other work, so tails are noisy)",
        f"- Command: `python benchmarks/speed/bench_scene.py --frames {args.frames} --warmup {args.warmup}`",
        f"- Frames: {WIDTH}x{HEIGHT} uint8 (bundled sample images, resized), 2 classes, {args.frames} timed "
        f"after {args.warmup} warm-up frames; first `import slicer` + converter set-up: {import_s:.2f} s (once)",
        "",
        "## Milliseconds per `LiveScene.apply` (main thread)",
        "",
        "| case | n | mean | p50 | p95 | p99 | max |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for name, s in rows.items():
        lines.append(f"| {name} | {s['n']} | {s['mean']:.2f} | {s['p50']:.2f} | {s['p95']:.2f} | {s['p99']:.2f} "
                     f"| {s['max']:.2f} |")
    lines += ["", "## Its parts (ms)", "", "| part | mean | p50 | p99 |", "|---|---:|---:|---:|"]
    for name, s in parts.items():
        lines.append(f"| {name} | {s['mean']:.2f} | {s['p50']:.2f} | {s['p99']:.2f} |")
    frame_bytes = WIDTH * HEIGHT * 2
    lines += [
        "",
        "## Recording memory",
        "",
        f"- Resident memory grew by {mb_per_frame:.3f} MB per recorded frame (the pixels alone are "
        f"{frame_bytes / 1e6:.3f} MB: one image and one labelmap copy). At 25 fps that is "
        f"{mb_per_frame * 25 * 60 / 1024:.2f} GB per minute of recording, held in memory until saved: "
        "long sessions should record only the stretches wanted (`LiveScene(record=False)`, then "
        "`start_recording()` / `stop_recording()`).",
        "",
        "## Saving",
        "",
        f"- `save()` of {recorded} recorded frames: {save_s:.2f} s, {save_note} plus:",
        "",
        "| file | bytes |",
        "|---|---:|",
    ]
    for name, size in sizes.items():
        lines.append(f"| {name} | {size} |")
    text = "\n".join(lines) + "\n"
    print(text)
    Path(args.report).write_text(text)
    print(f"report written to {args.report}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
