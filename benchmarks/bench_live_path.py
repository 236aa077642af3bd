"""Live-path speed: 580x420 uint8 frames sent at 30 fps over OpenIGTLink, segmented and applied to an MRML scene.

Measures, for the default model (or --model) on torch and ONNX Runtime, the received-to-applied latency (p50, p95, p99), the sustained fps,
dropped frames, and the share of the latency taken by inference. It drives exactly the code of ``nerveseg demo``
(replay server -> receiver -> background engine -> main thread -> slicer-core scene with sequence recording).

    .venv/bin/python benchmarks/bench_live_path.py                  # writes benchmarks/live_path.md
    .venv/bin/python benchmarks/bench_live_path.py --model sa-unet --backends onnx --seconds 10

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


def measure(model: str, backend: str, args) -> dict:
    """One run of the live path; returns what the report needs."""
    from NerveSegLogic.live_demo import DemoOptions, run_demo

    frames = int(round(args.fps * args.seconds))
    load_before = os.getloadavg()[0]
    with tempfile.TemporaryDirectory(prefix="nerveseg-bench-") as tmp:
        source = Path(tmp) / "frames"
        source.mkdir()
        make_frames(source)
        summary = run_demo(DemoOptions(out=str(Path(tmp) / "out"), frames=frames, fps=args.fps, model=model,
                                       backend=backend, source=str(source), video=False, quiet=True))
    lat = summary["latency_ms"]
    share = lat["inference"]["mean"] / lat["total"]["mean"] if lat["total"]["mean"] > 0 else float("nan")
    return {
        "model": model, "backend": summary["backend"], "frame": "580x420 uint8 grey", "sent_fps": args.fps,
        "frames_sent": summary["frames_sent"], "frames_received": summary["frames_received"],
        "frames_applied": summary["frames_applied"], "frames_dropped": summary["frames_dropped"],
        "sustained_fps": summary["fps"], "latency_ms": lat, "inference_share_of_total": round(share, 3),
        # other processes on the two cores show up as latency: the 1-minute load says how busy the machine was
        "load_average_1min_before": round(load_before, 2), "load_average_1min_after": round(os.getloadavg()[0], 2),
    }


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=None, help="default: the live path's default model")
    parser.add_argument("--backends", default="torch,onnx", help="comma-separated: torch, onnx (default: both)")
    parser.add_argument("--fps", type=float, default=30.0)
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--report", default=str(HERE / "live_path.md"))
    parser.add_argument("--threads", type=int, default=2, help="torch/ORT threads (default: 2, the CI machine's cores)")
    args = parser.parse_args(argv)

    import torch

    torch.set_num_threads(args.threads)
    from NerveSegLogic.models import registry

    model = args.model or registry.default_name()
    runs = [measure(model, backend.strip(), args) for backend in args.backends.split(",") if backend.strip()]
    header = {
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": f"{platform.machine()}, {os.cpu_count()} logical CPUs, {platform.system()}; torch "
                   f"{torch.__version__}, {args.threads} threads, OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY')}",
        "command": "python benchmarks/bench_live_path.py " + " ".join(argv if argv is not None else sys.argv[1:]),
    }
    print(json.dumps({**header, "runs": runs}, indent=2))
    write_report(Path(args.report), header, runs, args)
    Path(args.report).with_suffix(".json").write_text(json.dumps({**header, "runs": runs}, indent=2) + "\n")
    print(f"wrote {args.report}")
    return 0


def write_report(report: Path, header: dict, runs, args) -> None:
    lines = [
        "# Live path: received-to-applied latency",
        "",
        f"- date: {header['date']}; machine: {header['machine']}",
        f"- command: `{header['command']}`",
        f"- frames: 580x420 uint8 grey (the bundled sample, resized) sent at {args.fps:g} fps for {args.seconds:g} s "
        "over loopback OpenIGTLink by the replay server, received, segmented on the background engine, applied "
        "to a slicer-core MRML scene with sequence recording: the code of `nerveseg demo`",
        "",
        "| model | backend | frames sent | received | applied | dropped | sustained fps | total p50 ms | total p99 ms "
        "| inference share of latency | load (1 min) before / after |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row in runs:
        total = row["latency_ms"]["total"]
        lines.append(f"| {row['model']} | {row['backend']} | {row['frames_sent']} | {row['frames_received']} | "
                     f"{row['frames_applied']} | {row['frames_dropped']} | {row['sustained_fps']:.1f} | "
                     f"{total['p50']:.1f} | {total['p99']:.1f} | {row['inference_share_of_total']:.0%} | "
                     f"{row['load_average_1min_before']:.2f} / {row['load_average_1min_after']:.2f} |")
    for row in runs:
        lat = row["latency_ms"]
        lines += ["", f"## {row['model']} on {row['backend']}: per stage", "",
                  "| stage (ms) | p50 | p95 | p99 | mean |", "|---|---|---|---|---|"]
        for key in ("total", "receive", "wait", "preprocess", "inference", "postprocess", "apply"):
            if key in lat:
                v = lat[key]
                lines.append(f"| {key} | {v['p50']:.1f} | {v['p95']:.1f} | {v['p99']:.1f} | {v['mean']:.1f} |")
    lines += ["", "total = received to applied; receive = sender's IGTL timestamp to fully received (same clock); "
              "wait = time in the newest-frame slot before the worker took the frame; apply = hand-over to the "
              "main thread plus the MRML update and sequence recording. Dropped frames are frames a newer one "
              "replaced before the engine took them (newest frame wins: latency never builds a queue). A load "
              "above 2 means other processes competed for the two cores.", ""]
    report.write_text("\n".join(lines))


if __name__ == "__main__":
    sys.exit(main())
