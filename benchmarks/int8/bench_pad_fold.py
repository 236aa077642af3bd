#!/usr/bin/env python3
"""What folding the EfficientNet encoders' pads into their convolutions (models/onnx_graph.py) changes: the answer
(it must not) and the model's time, float32 and INT8.

For each model: its shipped weights exported twice, as torch writes the graph (``simplify=False``) and as the live
path now exports it (pads folded); each graph quantized to INT8 as the live path does it (the card's recipe,
calibrated on the 24 bundled sample frames). Every frame of ``--data`` is segmented through the live path's
Segmenter with each of the four graphs; the report counts labelmap pixels that differ between the two exports and
the largest difference of any probability. Speed: the model alone (``backend.run``), ``--rounds`` interleaved rounds
of ``--runs`` calls per graph (before, after, after, before, ...), on ``--threads`` threads, load average noted.

    .venv/bin/python benchmarks/int8/bench_pad_fold.py --data ../shared/data/usgra-seg   # writes benchmarks/int8/pad_fold.md
"""

from __future__ import annotations

import argparse
import os
import shlex
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

REPO = Path(__file__).resolve().parents[2]

import numpy as np  # noqa: E402

from NerveSegLogic.testing.machine import cpu_name  # noqa: E402
from NerveSegLogic.train.crossval import images_by_name as frames  # noqa: E402  (the data set's frames, sorted by name)


def graphs(model: str, folder: Path):
    """{(export, precision): path} for export in (torch, folded), precision in (float32, int8)."""
    import onnx

    from NerveSegLogic.inference import quantize
    from NerveSegLogic.models import registry

    card = registry.card(model)
    module = registry.load_from_card(card)
    out, nodes = {}, {}
    for export, simplify in (("torch", False), ("folded", True)):
        fp32 = registry.export_onnx(module, folder / f"{model}-{export}.onnx", card=card, simplify=simplify)
        int8 = quantize.quantize_int8(fp32, folder / f"{model}-{export}.int8.onnx", card)
        out[export, "float32"], out[export, "int8"] = fp32, int8
        for precision, path in (("float32", fp32), ("int8", int8)):
            graph = onnx.load(str(path)).graph
            nodes[export, precision] = (len(graph.node), sum(n.op_type == "Pad" for n in graph.node),
                                        sum(n.op_type in ("QuantizeLinear", "DequantizeLinear") for n in graph.node))
    return card, out, nodes


def compare(card, paths, images, threads):
    """Per precision: labelmap pixels differing between the exports (of all pixels, of foreground), max |prob|."""
    from NerveSegLogic.inference import backends
    from NerveSegLogic.inference.segmenter import Segmenter

    result = {}
    for precision in ("float32", "int8"):
        pair = [Segmenter(card, backends.OnnxBackend(paths[export, precision], threads=threads))
                for export in ("torch", "folded")]
        differ = foreground = pixels = 0
        worst = 0.0
        for image in images:
            a, b = (s.segment(image) for s in pair)
            differ += int((a.labelmap != b.labelmap).sum())
            foreground += int(((a.labelmap > 0) | (b.labelmap > 0)).sum())
            pixels += a.labelmap.size
            worst = max(worst, float(np.abs(a.probabilities - b.probabilities).max()))
        result[precision] = {"differ": differ, "foreground": foreground, "pixels": pixels, "max_prob": worst}
    return result


def timing(card, paths, image, threads, rounds, runs):
    from NerveSegLogic.inference import backends
    from NerveSegLogic.imaging import placement as pp

    x = pp.preprocess(image, card.input)[0][np.newaxis]
    result = {}
    for precision in ("float32", "int8"):
        sessions = {export: backends.OnnxBackend(paths[export, precision], threads=threads)
                    for export in ("torch", "folded")}
        times = {export: [] for export in sessions}
        for backend in sessions.values():
            for _ in range(5):
                backend.run(x)
        for round_index in range(rounds):
            order = ("torch", "folded") if round_index % 2 == 0 else ("folded", "torch")
            for export in order:
                for _ in range(runs):
                    start = time.perf_counter()
                    sessions[export].run(x)
                    times[export].append(1000 * (time.perf_counter() - start))
        result[precision] = {export: (float(np.percentile(t, 50)), float(np.percentile(t, 90)))
                             for export, t in times.items()}
    return result


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, required=True, help="labelled frames (usgra-seg folder)")
    parser.add_argument("--models", default="effnet2-unet,effnet-unet")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--runs", type=int, default=30)
    parser.add_argument("--limit-images", type=int, default=None)
    parser.add_argument("--report", type=Path, default=REPO / "benchmarks" / "int8" / "pad_fold.md")
    args = parser.parse_args(argv)

    images = frames(args.data, args.limit_images)
    started = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    load_before = os.getloadavg()
    lines = []
    with tempfile.TemporaryDirectory(prefix="nerveseg-padfold-") as work:
        for model in args.models.split(","):
            card, paths, nodes = graphs(model, Path(work))
            same = compare(card, paths, images, args.threads)
            speed = timing(card, paths, images[0], args.threads, args.rounds, args.runs)
            lines += [f"## {model} ({card.input.height}x{card.input.width})", "",
                      "| graph | nodes | Pad nodes | Q/DQ nodes | model p50 ms | p90 ms | labelmap pixels differing "
                      "from torch's export | largest probability difference |",
                      "|---|---|---|---|---|---|---|---|"]
            for precision in ("float32", "int8"):
                for export in ("torch", "folded"):
                    count, pads, qdq = nodes[export, precision]
                    p50, p90 = speed[precision][export]
                    if export == "torch":
                        change = "(reference)"
                        largest = ""
                    else:
                        s = same[precision]
                        change = (f"{s['differ']} of {s['pixels']:,} ({s['differ'] / max(1, s['foreground']):.2%} "
                                  f"of foreground)")
                        largest = f"{s['max_prob']:.2g}"
                    lines.append(f"| {precision}, {'as torch exports it' if export == 'torch' else 'pads folded'} "
                                 f"| {count} | {pads} | {qdq} | {p50:.2f} | {p90:.2f} | {change} | {largest} |")
            lines.append("")
    load_after = os.getloadavg()
    command = "python benchmarks/int8/bench_pad_fold.py " + " ".join(
        shlex.quote(a) for a in (argv if argv is not None else sys.argv[1:]))
    header = ["# Pads folded into the convolutions: same answer, less time", "",
              f"- date: {started}; machine: {cpu_name()}, {os.cpu_count()} cores; {args.threads} thread(s); "
              f"load average (1, 5, 15 min) before {' '.join(f'{v:.2f}' for v in load_before)}, after "
              f"{' '.join(f'{v:.2f}' for v in load_after)}",
              f"- command: `{command}`",
              f"- frames compared: {len(images)} of {args.data.name} (first by name), segmented through the live "
              "path's Segmenter (smooth contours, small-region removal)",
              f"- speed: the model alone (`backend.run`, one preprocessed frame), {args.rounds} interleaved rounds "
              f"x {args.runs} calls per graph", ""]
    args.report.write_text("\n".join(header + lines), encoding="utf-8")
    print("\n".join(header + lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
