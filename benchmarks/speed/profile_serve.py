#!/usr/bin/env python3
"""Where the time around the model goes in ``nerveseg serve``, per stage, and what inside each stage costs.

Part 1, stages: the serve run itself (SegmentationServer, in this process) fed by our replay server at --fps, with an
IGTL client taking its labelmaps, as bench_vs_fast.py does. For every frame that came back, from the frame's own
stamps (perf counter; wall clock where it crosses a process boundary):

    in        replay server stamps the frame (IGTL timestamp) -> receiver has the whole message (encode, TCP,
              header/CRC check, decode)
    wait      received -> the inference worker takes it (NewestSlot hand-off)
    pre       preprocess (grey, place into the model's input, normalise)
    model     backend.run
    post      argmax, restore to the frame's size, small-region removal
    handoff   result ready -> the send starts (serve sends on the inference thread itself since 2026-12-01;
              before, the result went through the results slot to the main thread's poll loop)
    send      encode the labelmap as an IGTL IMAGE and queue it for the clients
    out       queued -> the client has the whole labelmap (writer thread, TCP, client decode and CRC check)
    total     IGTL timestamp -> client has the labelmap
    around    total - model, frame by frame: the time around the model (its p50 is not total p50 - model p50,
              which mixes the model's spread from frame to frame into the overhead)

Part 2, functions: cProfile of ``Segmenter.segment`` and of the labelmap's encoding on one 580x420 frame, single
threaded, the top entries by own time.

    .venv/bin/python benchmarks/speed/profile_serve.py --frames 300            # prints a Markdown section
    .venv/bin/python benchmarks/speed/profile_serve.py --model effnet2-unet --backend auto --threads 1 --frames 300 \
        --skip-functions --model-alone 300    # + the model alone at the frame period, and a clock-loop control
"""

from __future__ import annotations

import argparse
import cProfile
import io
import json
import os
import pstats
import sys
import tempfile
import time
from pathlib import Path
from typing import Dict, List

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]

import numpy as np  # noqa: E402

STAGES = ("in", "wait", "pre", "model", "post", "handoff", "send", "out", "total", "around")


def load_average() -> List[float]:
    return [round(v, 2) for v in os.getloadavg()]


def cpu_ticks() -> Dict[str, int]:
    """All CPUs' tick counters since boot from /proc/stat (Linux; empty elsewhere): ``steal`` is time a virtual
    machine's CPUs were ready but the host ran something else."""
    try:
        fields = Path("/proc/stat").read_text().splitlines()[0].split()[1:]
    except OSError:
        return {}
    names = ("user", "nice", "system", "idle", "iowait", "irq", "softirq", "steal")
    return {name: int(value) for name, value in zip(names, fields)}


def steal_percent(before: Dict[str, int], after: Dict[str, int]):
    """Share of all CPU time stolen by the host between two cpu_ticks() readings, in %; None where unknown."""
    if not before or not after:
        return None
    total = sum(after.values()) - sum(before.values())
    return round(100.0 * (after["steal"] - before["steal"]) / total, 2) if total > 0 else None


def stages(args) -> Dict:
    from NerveSegLogic.testing.sample_feed import SentLog, free_port, sample_frames as make_frames

    from NerveSegLogic.live.serve import SegmentationServer, ServeOptions
    from NerveSegLogic.stream.receiver import ImageReceiver
    from NerveSegLogic.stream.replay import ReplayServer

    records: Dict[float, Dict] = {}
    arrivals: Dict[float, float] = {}
    input_port, output_port = free_port(), free_port()
    server = SegmentationServer(ServeOptions(input_host="127.0.0.1", input_port=input_port, port=output_port,
                                             host="127.0.0.1", model=args.model, backend=args.backend,
                                             threads=args.threads))
    send = server._send

    def timed_send(result):  # wraps the server's own sink: the stamps around the labelmap's encode and queue
        start = time.perf_counter()
        send(result)
        frame = result.frame
        records[frame.igtl_timestamp] = {"stamps": dict(frame.timestamps), "received_wall": frame.received_wall,
                                         "send_start": start, "send_end": time.perf_counter()}

    server.pipeline.engine.on_result = timed_send  # serve sends from the inference thread
    load_before = load_average()
    ticks_before = cpu_ticks()
    if args.peers == "process":
        frames_sent = peers_in_child(args, server, input_port, output_port, arrivals)
    else:
        client = ImageReceiver("127.0.0.1", output_port, device_name="NerveSegLabel", idle_timeout_s=None,
                               on_frame=lambda f: arrivals.__setitem__(f.igtl_timestamp, f.received_wall))
        with tempfile.TemporaryDirectory() as tmp:
            make_frames(Path(tmp))
            replay = ReplayServer(Path(tmp), host="127.0.0.1", port=input_port, fps=args.fps, loop=True,
                                  max_frames=args.frames, wait_for_client=True)
            server.start()
            client.start()
            client.connected.wait(10)
            with SentLog():
                replay.start()
                deadline = time.perf_counter() + args.frames / args.fps + 30
                while not replay.done.is_set() and time.perf_counter() < deadline:
                    server.pipeline.poll(timeout=0.05)
                end = time.perf_counter() + 2.0
                while time.perf_counter() < end:
                    server.pipeline.poll(timeout=0.05)
                replay.stop()
        client.stop()
        frames_sent = replay.frames_sent
    server.close()
    per_stage = {k: [] for k in STAGES}
    for stamp, record in records.items():
        if stamp not in arrivals:
            continue
        s = record["stamps"]
        offset = record["received_wall"] - s["received"]  # wall = perf + offset, in this process
        ms = lambda a, b: (b - a) * 1000.0  # noqa: E731
        per_stage["in"].append(ms(stamp, record["received_wall"]))
        per_stage["wait"].append(ms(s["received"], s["started"]))
        per_stage["pre"].append(ms(s["started"], s["preprocessed"]))
        per_stage["model"].append(ms(s["preprocessed"], s["inferred"]))
        per_stage["post"].append(ms(s["inferred"], s["postprocessed"]))
        per_stage["handoff"].append(ms(s["postprocessed"], record["send_start"]))
        per_stage["send"].append(ms(record["send_start"], record["send_end"]))
        per_stage["out"].append(ms(record["send_end"] + offset, arrivals[stamp]))
        per_stage["total"].append(ms(stamp, arrivals[stamp]))
        per_stage["around"].append(per_stage["total"][-1] - per_stage["model"][-1])
    summary = {k: {"p50": round(float(np.percentile(v, 50)), 2), "p99": round(float(np.percentile(v, 99)), 2),
                   "mean": round(float(np.mean(v)), 2)} for k, v in per_stage.items() if v}
    return {"frames_sent": frames_sent, "peers": args.peers, "steal_percent": steal_percent(ticks_before, cpu_ticks()),
            "frames_back": len(per_stage["total"]), "stages_ms": summary,
            "load_average_before": load_before, "load_average_after": load_average()}


def peers_in_child(args, server, input_port: int, output_port: int, arrivals: Dict[float, float]) -> int:
    """Run the replay server and the labelmap client in a child process (as PLUS and Slicer are separate
    processes), so that their encoding, decoding and CRCs do not compete with serve for this process's GIL. The
    child writes each labelmap's arrival (wall clock, which both processes share) to a JSON file; returns the
    number of frames it sent."""
    import subprocess

    server.start()
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "arrivals.json"
        command = [sys.executable, str(Path(__file__).resolve()), "--peer-child", str(out),
                   "--frames", str(args.frames),
                   "--fps", str(args.fps), "--input-port", str(input_port), "--output-port", str(output_port)]
        child = subprocess.Popen(command)
        deadline = time.perf_counter() + args.frames / args.fps + 90
        while child.poll() is None and time.perf_counter() < deadline:
            server.pipeline.poll(timeout=0.05)
        if child.poll() is None:
            child.kill()
            raise RuntimeError("the peer process did not finish in time")
        if child.returncode != 0:
            raise RuntimeError(f"the peer process failed (exit status {child.returncode})")
        result = json.loads(out.read_text())
    arrivals.update({float(k): v for k, v in result["arrivals"].items()})
    return int(result["frames_sent"])


def peer_child(args) -> int:
    """The child of :func:`peers_in_child`: replay server on --input-port, labelmap client on --output-port."""
    from NerveSegLogic.testing.sample_feed import SentLog, sample_frames as make_frames

    from NerveSegLogic.stream.receiver import ImageReceiver
    from NerveSegLogic.stream.replay import ReplayServer

    arrivals: Dict[str, float] = {}
    client = ImageReceiver("127.0.0.1", args.output_port, device_name="NerveSegLabel", idle_timeout_s=None,
                           on_frame=lambda f: arrivals.__setitem__(repr(f.igtl_timestamp), f.received_wall))
    with tempfile.TemporaryDirectory() as tmp:
        make_frames(Path(tmp))
        replay = ReplayServer(Path(tmp), host="127.0.0.1", port=args.input_port, fps=args.fps, loop=True,
                              max_frames=args.frames, wait_for_client=True)
        client.start()
        if not client.connected.wait(30):
            raise RuntimeError("the peer client could not connect to serve's output port")
        with SentLog():
            replay.start()
            replay.wait_done(args.frames / args.fps + 60)
            time.sleep(2.0)  # the last labelmaps
            replay.stop()
        client.stop()
    Path(args.peer_child).write_text(json.dumps({"frames_sent": replay.frames_sent, "arrivals": arrivals}))
    return 0


def model_alone(args) -> Dict:
    """The model by itself, one call per frame period as serve makes them (a sleep between calls), and a control: a
    loop that only reads the clock for as long as the model's median. When the model alone has serve's tail and the
    control has none, the tail is the machine's memory system (other tenants of the host), not serve's code and
    not the CPU being taken away."""
    from NerveSegLogic.inference.segmenter import load_segmenter

    segmenter = load_segmenter(args.model, backend=args.backend, threads=args.threads)
    spec = segmenter.spec
    tensor = np.random.default_rng(0).random((1, spec.channels, spec.height, spec.width)).astype(np.float32)
    segmenter.backend.run(tensor)
    model, control = [], []
    for _ in range(args.model_alone):
        time.sleep(1.0 / args.fps - 0.012)
        start = time.perf_counter()
        segmenter.backend.run(tensor)
        model.append((time.perf_counter() - start) * 1e3)
    busy_s = float(np.median(model)) / 1e3
    for _ in range(args.model_alone):
        time.sleep(1.0 / args.fps - 0.012)
        start = time.perf_counter()
        while time.perf_counter() - start < busy_s:
            pass
        control.append((time.perf_counter() - start) * 1e3)
    summary = lambda v: {"p50": round(float(np.percentile(v, 50)), 2),  # noqa: E731
                         "p99": round(float(np.percentile(v, 99)), 2), "max": round(max(v), 2)}
    return {"calls": args.model_alone, "model_ms": summary(model), "clock_loop_ms": summary(control)}


def functions(args) -> str:
    from NerveSegLogic.inference.segmenter import load_segmenter
    from NerveSegLogic.stream.codec import encode_image

    from NerveSegLogic.testing.sample_feed import FRAME_SIZE

    import cv2

    from NerveSegLogic.resources import sample_dir

    image = cv2.imread(str(sorted((sample_dir() / "images").glob("*.png"))[0]), cv2.IMREAD_GRAYSCALE)
    image = cv2.resize(image, FRAME_SIZE, interpolation=cv2.INTER_AREA)
    segmenter = load_segmenter(args.model, backend=args.backend, threads=args.threads)
    segmenter.segment(image)
    profiler = cProfile.Profile()
    profiler.enable()
    for _ in range(args.repeats):
        result = segmenter.segment(image)
        encode_image(result.labelmap, None, device_name="NerveSegLabel", timestamp=time.time())
    profiler.disable()
    stream = io.StringIO()
    stats = pstats.Stats(profiler, stream=stream)
    stats.sort_stats("tottime").print_stats(14)
    return stream.getvalue()


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="unet")
    parser.add_argument("--backend", default="onnx")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--frames", type=int, default=300)
    parser.add_argument("--fps", type=float, default=30.0)
    parser.add_argument("--repeats", type=int, default=200, help="segment() calls under cProfile")
    parser.add_argument("--skip-stages", action="store_true")
    parser.add_argument("--skip-functions", action="store_true")
    parser.add_argument("--json", default=None, help="also write the stage figures here")
    parser.add_argument("--peers", choices=("in-process", "process"), default="in-process",
                        help="where the replay server and the labelmap client run: in this process (threads sharing "
                             "serve's GIL) or in a child process (as PLUS and Slicer are)")
    parser.add_argument("--model-alone", type=int, default=0, metavar="CALLS",
                        help="after the stages, time the model alone this many times at the frame period, with a "
                             "clock-reading loop as control (is a tail the machine's or serve's?)")
    parser.add_argument("--peer-child", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--input-port", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--output-port", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--cv-threads", type=int, default=None,
                        help="cv2.setNumThreads for this process (default: OpenCV's own, one per core)")
    args = parser.parse_args(argv)
    if args.cv_threads is not None:
        import cv2

        cv2.setNumThreads(args.cv_threads)
    if args.peer_child:
        return peer_child(args)
    if not args.skip_stages:
        result = stages(args)
        print(f"## Stages, {args.model} on {args.backend}, {args.threads} threads (OpenCV: "
              f"{'default' if args.cv_threads is None else args.cv_threads}), {args.frames} frames at "
              f"{args.fps:g} fps, peers {args.peers} (load {result['load_average_before']} -> "
              f"{result['load_average_after']})\n")
        print(f"frames sent {result['frames_sent']}, labelmaps back {result['frames_back']}, CPU time stolen by the "
              f"host {result['steal_percent']} %\n")
        print("| stage | p50 ms | p99 ms | mean ms |\n|---|---|---|---|")
        for key, value in result["stages_ms"].items():
            print(f"| {key} | {value['p50']} | {value['p99']} | {value['mean']} |")
        if args.model_alone:
            result["model_alone"] = alone = model_alone(args)
            print(f"\nThe model alone, {alone['calls']} calls at the frame period: p50 {alone['model_ms']['p50']} ms, "
                  f"p99 {alone['model_ms']['p99']} ms, max {alone['model_ms']['max']} ms; a loop reading the clock "
                  f"for its median: p99 {alone['clock_loop_ms']['p99']} ms, max {alone['clock_loop_ms']['max']} ms")
        if args.json:
            Path(args.json).write_text(json.dumps(result, indent=1))
    if not args.skip_functions:
        print(f"\n## cProfile: {args.repeats} x segment() + encode of the labelmap, one 580x420 frame\n")
        print("```\n" + functions(args) + "```")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
