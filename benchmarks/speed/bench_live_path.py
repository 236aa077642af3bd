"""Live-path speed: 580x420 uint8 frames sent at 30 fps over OpenIGTLink, segmented and applied to an MRML scene.

Measures, for the default model (or --model) on torch and ONNX Runtime, the received-to-applied latency (p50, p95, p99), the sustained fps,
dropped frames, and the share of the latency taken by inference. It drives exactly the code of ``nerveseg demo``
(replay server -> receiver -> background engine -> main thread -> slicer-core scene with sequence recording).

    .venv/bin/python benchmarks/speed/bench_live_path.py                  # writes benchmarks/speed/live_path.md
    .venv/bin/python benchmarks/speed/bench_live_path.py --model sa-unet --backends onnx --seconds 10
    # the steady overlay's cost: with and without, interleaved (on off off on ...), on a moving probe
    .venv/bin/python benchmarks/speed/bench_live_path.py --backends auto --steady both --repeats 6 --frames probe \
        --report /tmp/steady_live_path.md

``--steady on|off|both`` runs the live path with the steady overlay (its default), without it (``--no-steady``),
or both, alternating in ABBA order ``--repeats`` times so that a machine whose load drifts weighs on both alike;
the report then compares the pooled p50 / p99 of every frame's total latency. ``--frames probe`` replays one sample
frame slid and zoomed over time with speckle noise (benchmarks/accuracy/steady_overlay.py's moving probe), where the filter
averages every frame; on the bundled sample (``--frames sample``, the default) every frame is another view and
the filter starts again at each.

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

from NerveSegLogic.testing.sample_feed import sample_frames as make_frames  # noqa: E402  (the sample at 580x420)


def make_probe_frames(folder: Path, count: int = 100, width: int = 580, height: int = 420) -> int:
    """A moving probe: the first sample frame (resized to width x height) slid and zoomed over ``count`` frames
    with speckle noise and gain changes, as benchmarks/accuracy/steady_overlay.py makes them (fast motion)."""
    import cv2
    import numpy as np

    from NerveSegLogic.testing.moving_sequence import moving_sequence
    from NerveSegLogic.resources import sample_dir

    first = sorted((sample_dir() / "images").glob("*.png"))[0]
    image = cv2.resize(cv2.imread(str(first), cv2.IMREAD_GRAYSCALE), (width, height), interpolation=cv2.INTER_AREA)
    for t, (frame, _, _) in enumerate(moving_sequence(image, np.zeros_like(image), count, seed=3, fast=True)):
        cv2.imwrite(str(folder / f"{t:04d}.png"), frame)
    return count


def measure(model: str, backend: str, args, steady: bool = True) -> dict:
    """One run of the live path; returns what the report needs (``latencies``: every frame's total, in ms)."""
    from NerveSegLogic.live.demo import DemoOptions, run_demo

    frames = int(round(args.fps * args.seconds))
    load_before = os.getloadavg()[0]
    with tempfile.TemporaryDirectory(prefix="nerveseg-bench-") as tmp:
        source = Path(tmp) / "frames"
        source.mkdir()
        if getattr(args, "frames", "sample") == "probe":
            make_probe_frames(source)
        else:
            make_frames(source)
        summary = run_demo(DemoOptions(out=str(Path(tmp) / "out"), frames=frames, fps=args.fps, model=model,
                                       backend=backend, source=str(source), video=False, quiet=True, steady=steady))
    lat = summary["latency_ms"]
    share = lat["inference"]["mean"] / lat["total"]["mean"] if lat["total"]["mean"] > 0 else float("nan")
    return {
        "steady": steady, "model": model, "backend": summary["backend"], "frame": "580x420 uint8 grey", "sent_fps": args.fps,
        "frames_sent": summary["frames_sent"], "frames_received": summary["frames_received"],
        "frames_applied": summary["frames_applied"], "frames_dropped": summary["frames_dropped"],
        "sustained_fps": summary["fps"], "latency_ms": lat, "inference_share_of_total": round(share, 3),
        # other processes on the two cores show up as latency: the 1-minute load says how busy the machine was
        "load_average_1min_before": round(load_before, 2), "load_average_1min_after": round(os.getloadavg()[0], 2),
    }


def segment_cost(model: str, backend: str, args) -> dict:
    """What the steady overlay adds to the segmenter's time per frame, which is all it adds to the live path (it runs
    inside ``Segmenter.segment`` on the inference thread, after the model): the moving-probe frames (``--frames
    probe``) or the sample (``sample``), each run through the model once; then the segmenter runs on them in order
    ``--repeats`` times with the model's stored answer for each frame in place of the model (the model's own time,
    the same with and without the filter, is what makes a shared machine's timings noisy), each frame by three
    calls in rotating order: with the default filter, with ``SteadyOptions.off()`` (``--no-steady``: presence and
    states only) and with none (the plain per-frame answer, as before the filter). Per frame the least time of the
    repeats; p50 / p99 over the frames of the time and of the time added over none."""
    import time

    import cv2
    import numpy as np

    from NerveSegLogic.frame import Frame
    from NerveSegLogic.imaging import placement as pp
    from NerveSegLogic.inference.segmenter import load_segmenter
    from NerveSegLogic.inference.segmenter import Segmenter
    from NerveSegLogic.inference.steady import SteadyOptions, SteadyOverlay

    segmenter = load_segmenter(model, backend=backend, threads=args.threads)
    segmenter.warm_up()
    with tempfile.TemporaryDirectory(prefix="nerveseg-bench-") as tmp:
        folder = Path(tmp)
        (make_probe_frames if args.frames == "probe" else make_frames)(folder)
        images = [cv2.imread(str(p), cv2.IMREAD_GRAYSCALE) for p in sorted(folder.glob("*.png"))]
    answers = [segmenter.backend.run(pp.preprocess(image, segmenter.spec)[0][np.newaxis]) for image in images]

    class Stored:
        """The model's stored answer for the frame being segmented."""

        task = segmenter.backend.task
        index = 0

        def run(self, batch):
            return answers[self.index]

    stored = Stored()
    replayed = Segmenter(segmenter.card, stored, min_component_area=segmenter.min_component_area,
                         contours=segmenter.contours)
    settings = ("on", "off", "none")
    best = {name: np.full(len(images), np.inf) for name in settings}
    for repeat in range(args.repeats):
        filters = {"on": SteadyOverlay.for_segmenter(replayed, SteadyOptions()),
                   "off": SteadyOverlay.for_segmenter(replayed, SteadyOptions.off()), "none": None}
        for k, image in enumerate(images):
            stored.index = k
            shift = (k + repeat) % 3
            for name in settings[shift:] + settings[:shift]:
                frame = Frame(image=image, frame_id=k)
                start = time.perf_counter()
                replayed.segment(image, frame, steady=filters[name])
                best[name][k] = min(best[name][k], (time.perf_counter() - start) * 1000.0)
    out = {"model": model, "backend": segmenter.describe(), "frames": len(images), "repeats": args.repeats,
           "source": args.frames, "resets_on": int(filters["on"].resets),
           "note": "segmenter time without the model (its stored answer replayed): preprocessing, postprocessing "
                   "and the filter; ms, least of the repeats per frame"}
    for name in settings:
        out[name] = {"p50": round(float(np.percentile(best[name], 50)), 3),
                     "p99": round(float(np.percentile(best[name], 99)), 3)}
    for name in ("on", "off"):
        added = best[name] - best["none"]
        out[f"added_{name}"] = {"p50": round(float(np.percentile(added, 50)), 3),
                                "p99": round(float(np.percentile(added, 99)), 3)}
    return out


def measure_worker(model: str, backend: str, args, steady: bool = True) -> dict:
    """One run of the panel's default path (``--path worker``): the LiveController's worker process receives the
    replayed frames and segments them (with the steady overlay on or off), the results are applied to a
    slicer-core scene in this process; every applied result's stage latencies are kept."""
    import numpy as np

    from NerveSegLogic.live.controller import LiveController
    from NerveSegLogic.live.selftest import run_sample_replay

    frames = int(round(args.fps * args.seconds))
    load_before = os.getloadavg()[0]
    kept = []
    with tempfile.TemporaryDirectory(prefix="nerveseg-bench-") as tmp:
        source = Path(tmp) / "frames"
        source.mkdir()
        (make_probe_frames if args.frames == "probe" else make_frames)(source)
        controller = LiveController()
        controller.backend = backend
        controller.threads = 0  # the panel's default: one thread less than the cores
        controller.set_steady(steady)
        controller.result_applied.connect(lambda result: kept.append(result.stage_latencies_ms()))
        report = run_sample_replay(controller, frames=frames, fps=args.fps, source=str(source), model=model,
                                   mode="child-process", timeout_s=600)
        controller.scene.clear()
    lat = {}
    for key in ("total", "receive", "wait", "preprocess", "inference", "postprocess", "apply"):
        values = np.asarray([k[key] for k in kept if key in k])
        if values.size:
            lat[key] = {"p50": float(np.percentile(values, 50)), "p95": float(np.percentile(values, 95)),
                        "p99": float(np.percentile(values, 99)), "mean": float(values.mean()), "n": int(values.size)}
    share = lat["inference"]["mean"] / lat["total"]["mean"] if lat.get("total", {}).get("mean") else float("nan")
    return {"steady": steady, "model": model, "backend": f"{backend} (worker process)", "frame": "580x420 uint8 grey",
            "sent_fps": args.fps, "frames_sent": report.frames_sent, "frames_received": report.frames_received,
            "frames_applied": report.applied, "frames_dropped": report.dropped, "sustained_fps": float("nan"),
            "latency_ms": lat, "inference_share_of_total": round(share, 3),
            "load_average_1min_before": round(load_before, 2), "load_average_1min_after": round(os.getloadavg()[0], 2)}


def steady_runs(model: str, backend: str, args) -> list:
    """``--steady both``: the live path with and without the steady overlay, ABBA-interleaved ``--repeats`` times."""
    runs = []
    for repeat in range(args.repeats):
        for steady in ((True, False) if repeat % 2 == 0 else (False, True)):
            runs.append((measure_worker if args.path == "worker" else measure)(model, backend, args, steady=steady))
            print(f"steady {'on' if steady else 'off'}: total p50 {runs[-1]['latency_ms']['total']['p50']:.2f} ms, "
                  f"p99 {runs[-1]['latency_ms']['total']['p99']:.2f} ms, applied {runs[-1]['frames_applied']} of "
                  f"{runs[-1]['frames_sent']}", flush=True)
    return runs


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=None, help="default: the live path's default model")
    parser.add_argument("--backends", default="torch,onnx", help="comma-separated: torch, onnx, auto (default: "
                                                                  "torch,onnx)")
    parser.add_argument("--fps", type=float, default=30.0)
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--report", default=str(HERE / "live_path.md"))
    parser.add_argument("--threads", type=int, default=2, help="torch/ORT threads (default: 2, the CI machine's cores)")
    parser.add_argument("--steady", choices=("on", "off", "both"), default="on",
                        help="the steady overlay: on (the live default), off, or both, interleaved (default: on)")
    parser.add_argument("--repeats", type=int, default=1, help="with --steady both or --segment-cost: repeats")
    parser.add_argument("--frames", choices=("sample", "probe"), default="sample",
                        help="sample: the bundled sample's 24 views; probe: one of them as a moving probe")
    parser.add_argument("--path", choices=("demo", "worker"), default="demo",
                        help="demo: the code of 'nerveseg demo' (in-process threads); worker: the panel's worker "
                             "process, results applied here (default: demo)")
    parser.add_argument("--segment-cost", action="store_true",
                        help="measure only what the steady overlay adds per frame inside the segmenter")
    args = parser.parse_args(argv)

    import torch

    torch.set_num_threads(args.threads)
    from NerveSegLogic.models import registry

    model = args.model or registry.default_name()
    backends = [backend.strip() for backend in args.backends.split(",") if backend.strip()]
    if args.segment_cost:
        costs = [segment_cost(model, backend, args) for backend in backends]
        print(json.dumps(costs, indent=2))
        Path(args.report).with_suffix(".json").write_text(json.dumps(costs, indent=2) + "\n")
        return 0
    if args.steady == "both":
        runs = [run for backend in backends for run in steady_runs(model, backend, args)]
    else:
        runs = [(measure_worker if args.path == "worker" else measure)(model, backend, args,
                                                                       steady=args.steady == "on")
                for backend in backends]
    header = {
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": f"{platform.machine()}, {os.cpu_count()} logical CPUs, {platform.system()}; torch "
                   f"{torch.__version__}, {args.threads} threads, OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY')}",
        "command": "python benchmarks/speed/bench_live_path.py " + " ".join(argv if argv is not None else sys.argv[1:]),
    }
    print(json.dumps({**header, "runs": runs}, indent=2))
    write_report(Path(args.report), header, runs, args)
    Path(args.report).with_suffix(".json").write_text(json.dumps({**header, "runs": runs}, indent=2) + "\n")
    print(f"wrote {args.report}")
    return 0


def steady_comparison(runs) -> list:
    """The report's lines comparing runs with and without the steady overlay: per setting the median of the runs'
    p50 and p99 total latency, and the median of the paired differences (each ABBA pair's on minus off)."""
    import statistics

    on = [r for r in runs if r["steady"]]
    off = [r for r in runs if not r["steady"]]
    lines = ["", "## With and without the steady overlay (interleaved runs)", "",
             "| | runs | median of run p50 (ms) | median of run p99 (ms) | applied / sent |", "|---|---|---|---|---|"]
    for name, group in (("on", on), ("off", off)):
        if group:
            lines.append(f"| steady {name} | {len(group)} | "
                         f"{statistics.median(r['latency_ms']['total']['p50'] for r in group):.2f} | "
                         f"{statistics.median(r['latency_ms']['total']['p99'] for r in group):.2f} | "
                         f"{sum(r['frames_applied'] for r in group)} / {sum(r['frames_sent'] for r in group)} |")
    pairs = list(zip(on, off))
    if pairs:
        for stat in ("p50", "p99"):
            diffs = [a["latency_ms"]["total"][stat] - b["latency_ms"]["total"][stat] for a, b in pairs]
            lines.append(f"\n{stat} growth with the overlay, median of {len(pairs)} paired runs: "
                         f"{statistics.median(diffs):+.2f} ms (each pair: "
                         + ", ".join(f"{d:+.2f}" for d in diffs) + ")")
    return lines


def write_report(report: Path, header: dict, runs, args) -> None:
    lines = [
        "# Live path: received-to-applied latency",
        "",
        f"- date: {header['date']}; machine: {header['machine']}",
        f"- command: `{header['command']}`",
        f"- frames: 580x420 uint8 grey ("
        + ("the bundled sample, resized" if args.frames == "sample" else "a moving probe made from the first sample frame")
        + f") sent at {args.fps:g} fps for {args.seconds:g} s "
        "over loopback OpenIGTLink by the replay server, received, segmented on the background engine, applied "
        "to a slicer-core MRML scene with sequence recording: the code of `nerveseg demo`",
        "",
        "| model | backend | steady | frames sent | received | applied | dropped | sustained fps | total p50 ms "
        "| total p99 ms | inference share of latency | load (1 min) before / after |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row in runs:
        total = row["latency_ms"]["total"]
        lines.append(f"| {row['model']} | {row['backend']} | {'on' if row['steady'] else 'off'} | "
                     f"{row['frames_sent']} | {row['frames_received']} | "
                     f"{row['frames_applied']} | {row['frames_dropped']} | {row['sustained_fps']:.1f} | "
                     f"{total['p50']:.1f} | {total['p99']:.1f} | {row['inference_share_of_total']:.0%} | "
                     f"{row['load_average_1min_before']:.2f} / {row['load_average_1min_after']:.2f} |")
    if args.steady == "both":
        lines += steady_comparison(runs)
    for row in runs:
        lat = row["latency_ms"]
        lines += ["", f"## {row['model']} on {row['backend']}, steady overlay {'on' if row['steady'] else 'off'}: "
                      "per stage", "",
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
