"""Live-path speed: 580x420 uint8 frames sent at 30 fps over OpenIGTLink, segmented and applied to an MRML scene.

Measures, for the default model (or --model), the received-to-applied latency (p50, p95, p99), the sustained fps,
dropped frames, and the share of the latency taken by inference. It drives exactly the code of ``nerveseg demo``
(replay server -> receiver -> background engine -> main thread -> slicer-core scene with sequence recording).

    .venv/bin/python benchmarks/bench_live_path.py                  # writes benchmarks/live_path.md
    .venv/bin/python benchmarks/bench_live_path.py --model sa-unet --backend onnx --seconds 20

Run it on an otherwise idle machine: other processes on the two cores show up as latency.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))


def make_frames(folder: Path, width: int = 580, height: int = 420) -> int:
    """The bundled sample frames as grey uint8 PNGs of width x height (resized, aspect not kept)."""
    import cv2

    from NerveSegLogic.resources import sample_dir

    files = sorted((sample_dir() / "images").glob("*.png"))
    for path in files:
        image = cv2.imread(str(path), cv2.IMREAD_GRAYSCALE)
        cv2.imwrite(str(folder / path.name), cv2.resize(image, (width, height), interpolation=cv2.INTER_AREA))
    return len(files)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=None)
    parser.add_argument("--backend", default="torch", choices=("torch", "onnx"))
    parser.add_argument("--fps", type=float, default=30.0)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--report", default=str(HERE / "live_path.md"))
    parser.add_argument("--threads", type=int, default=2, help="torch/ORT threads (default: 2, the CI machine's cores)")
    args = parser.parse_args(argv)

    import torch

    torch.set_num_threads(args.threads)
    from NerveSegLogic.live_demo import DemoOptions, run_demo
    from NerveSegLogic.models import registry

    model = args.model or registry.default_name()
    frames = int(round(args.fps * args.seconds))
    with tempfile.TemporaryDirectory(prefix="nerveseg-bench-") as tmp:
        source = Path(tmp) / "frames"
        source.mkdir()
        make_frames(source)
        summary = run_demo(DemoOptions(out=str(Path(tmp) / "out"), frames=frames, fps=args.fps, model=model,
                                       backend=args.backend, source=str(source), video=False, quiet=True))

    lat = summary["latency_ms"]
    total, inference = lat["total"], lat["inference"]
    share = inference["mean"] / total["mean"] if total["mean"] > 0 else float("nan")
    row = {
        "date": datetime.date.today().isoformat(),
        "machine": f"{platform.machine()}, {os.cpu_count()} logical CPUs, torch threads {args.threads}",
        "command": "python benchmarks/bench_live_path.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "model": model, "backend": summary["backend"], "frame": "580x420 uint8 grey",
        "sent_fps": args.fps, "frames_sent": summary["frames_sent"], "frames_received": summary["frames_received"],
        "frames_applied": summary["frames_applied"], "frames_dropped": summary["frames_dropped"],
        "sustained_fps": summary["fps"], "latency_ms": lat, "inference_share_of_total": round(share, 3),
    }
    print(json.dumps(row, indent=2))
    report = Path(args.report)
    lines = [
        "# Live path: received-to-applied latency",
        "",
        f"- date: {row['date']}; machine: {row['machine']}",
        f"- command: `{row['command']}`",
        f"- model: {model} on {row['backend']}; frames {row['frame']} sent at {args.fps:g} fps for {args.seconds:g} s "
        "over loopback OpenIGTLink; applied to a slicer-core MRML scene with sequence recording",
        "",
        f"| frames sent | received | applied | dropped | sustained fps | inference share of latency |",
        "|---|---|---|---|---|---|",
        f"| {row['frames_sent']} | {row['frames_received']} | {row['frames_applied']} | {row['frames_dropped']} | "
        f"{row['sustained_fps']:.1f} | {share:.0%} |",
        "",
        "| stage (ms) | p50 | p95 | p99 | mean |",
        "|---|---|---|---|---|",
    ]
    for key in ("total", "receive", "wait", "preprocess", "inference", "postprocess", "apply"):
        if key in lat:
            v = lat[key]
            lines.append(f"| {key} | {v['p50']:.1f} | {v['p95']:.1f} | {v['p99']:.1f} | {v['mean']:.1f} |")
    lines += ["", "total = received to applied; receive = sender's IGTL timestamp to fully received (same clock); "
              "wait = time in the newest-frame slot before the worker took the frame; apply = hand-over to the "
              "main thread plus the MRML update and sequence recording.", ""]
    report.write_text("\n".join(lines))
    print(f"wrote {report}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
