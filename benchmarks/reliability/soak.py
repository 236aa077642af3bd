"""Soak test of the headless live path: replay at twice the model's rate -> serve -> client, for --minutes.

What runs:
- the model's own rate is measured first (median of 20 ``segment`` calls on a bundled 580x420 sample frame, one
  torch thread), and ``nerveseg replay --loop`` (a subprocess) sends the bundled sample at twice that rate, so the
  server must drop frames the whole time (newest frame wins);
- ``SegmentationServer`` (what ``nerveseg serve`` runs) in THIS process, under test;
- a client process (``ImageReceiver`` on the server's port, device NerveSegLabel) that records, per labelmap, the
  latency from the replay's IGTL timestamp (taken when the frame was sent) to its arrival (one machine, one clock).

What it reports:
- memory slope of the server process: least-squares slope of its RSS (MiB per minute) over the samples after the
  first 20 % of the run (warm-up: allocator pools, caches);
- latency drift: median client latency in the last third of the run minus the first third (ms);
- threads and sockets of the server process after stop, compared with before start (a leak shows as a difference);
- frames sent, results received, dropped.

Run:  .venv/bin/python benchmarks/reliability/soak.py --minutes 10 [--report benchmarks/reliability/soak.json]
(the machine's other load shows up in latency; the report says the load average.)
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import platform
import socket
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rss_mib() -> float:
    with open("/proc/self/statm") as handle:
        return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2 ** 20


def open_sockets() -> int:
    count = 0
    for fd in os.listdir("/proc/self/fd"):
        try:
            if os.readlink(f"/proc/self/fd/{fd}").startswith("socket:"):
                count += 1
        except OSError:
            pass
    return count


def slope_per_minute(samples):
    """Least-squares slope of (seconds, MiB) samples, in MiB per minute."""
    if len(samples) < 3:
        return float("nan")
    xs = [t for t, _ in samples]
    ys = [v for _, v in samples]
    mx, my = statistics.fmean(xs), statistics.fmean(ys)
    var = sum((x - mx) ** 2 for x in xs)
    return 60.0 * sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / var if var else float("nan")


def client(port: int, stop, results) -> None:
    """Client process: receive labelmaps, keep (arrival time, latency ms) pairs, send them when told to stop."""
    import logging

    logging.basicConfig(level=logging.ERROR)
    from NerveSegLogic.stream import ImageReceiver

    records = []

    def on_frame(frame):
        records.append((time.time(), 1000.0 * (frame.received_wall - frame.igtl_timestamp)))

    receiver = ImageReceiver(port=port, device_name="NerveSegLabel", on_frame=on_frame)
    receiver.start()
    stop.wait()
    receiver.stop()
    results.send(records)


def model_rate(segmenter) -> float:
    import cv2

    from NerveSegLogic.resources import sample_dir

    image = cv2.imread(str(sorted((sample_dir() / "images").glob("*.png"))[0]), cv2.IMREAD_GRAYSCALE)
    segmenter.segment(image)
    times = []
    for _ in range(20):
        started = time.perf_counter()
        segmenter.segment(image)
        times.append(time.perf_counter() - started)
    return 1.0 / statistics.median(times)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--minutes", type=float, default=10.0, help="how long to run (default %(default)s)")
    parser.add_argument("--model", default=None, help="registered model (default: the registry's default)")
    parser.add_argument("--sample-every", type=float, default=5.0, help="seconds between RSS samples")
    parser.add_argument("--report", default=None, help="also write the results as JSON to this file")
    args = parser.parse_args(argv)

    import logging

    import torch

    logging.basicConfig(level=logging.WARNING)
    torch.set_num_threads(1)  # the machine is shared; one thread keeps the measurement about this process
    from NerveSegLogic.inference.segmenter import Segmenter
    from NerveSegLogic.live.serve import ServeOptions, SegmentationServer
    from NerveSegLogic.models import registry

    name = args.model or registry.default_name()
    segmenter = Segmenter.from_name(name, backend="torch", device="cpu")
    rate = model_rate(segmenter)
    fps = min(60.0, 2.0 * rate)
    print(f"model {name}: {rate:.1f} frames/s alone; replaying at {fps:.1f} fps for {args.minutes:g} min", flush=True)

    threads_before, sockets_before = threading.active_count(), open_sockets()
    replay_port, serve_port = free_port(), free_port()
    replay = subprocess.Popen([sys.executable, "-m", "NerveSegLogic.cli", "replay", "--loop", "--fps", f"{fps:.2f}",
                               "--port", str(replay_port)], cwd=str(HERE.parents[1]), stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL)
    server = SegmentationServer(ServeOptions(input_host="127.0.0.1", input_port=replay_port, port=serve_port),
                                segmenter=segmenter)
    context = mp.get_context("spawn")
    stop_client = context.Event()
    receive_end, send_end = context.Pipe(duplex=False)
    client_process = context.Process(target=client, args=(serve_port, stop_client, send_end))
    samples = []
    started = time.monotonic()

    def sample() -> None:
        while not done.wait(args.sample_every):
            samples.append((time.monotonic() - started, rss_mib()))

    done = threading.Event()
    sampler = threading.Thread(target=sample, daemon=True)
    try:
        server.start()
        client_process.start()
        sampler.start()
        timer = threading.Timer(args.minutes * 60.0, server.stop)
        timer.start()
        server.serve_forever()
        timer.cancel()
    finally:
        done.set()
        stop_client.set()
        records = receive_end.recv() if client_process.is_alive() or receive_end.poll(10) else []
        client_process.join(10)
        counters = server.pipeline.counters()
        server.close()
        replay.terminate()
        replay.wait(10)
    elapsed = time.monotonic() - started
    time.sleep(0.5)  # let closed sockets' threads finish
    threads_after, sockets_after = threading.active_count(), open_sockets()
    steady = [s for s in samples if s[0] >= 0.2 * elapsed]
    third = elapsed / 3.0
    t0 = records[0][0] if records else 0.0
    first = [lat for t, lat in records if t - t0 < third]
    last = [lat for t, lat in records if t - t0 >= 2 * third]
    report = {
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "machine": platform.platform(),
        "cpus": os.cpu_count(), "load_average_1min_at_end": round(os.getloadavg()[0], 2),
        "command": "benchmarks/reliability/soak.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "model": name, "model_fps_alone": round(rate, 2), "replay_fps": round(fps, 2),
        "minutes": round(elapsed / 60.0, 2),
        "frames_received_by_server": counters.get("frames_received"), "frames_dropped_by_server":
            counters.get("frames_dropped"), "results_sent": server.results_sent, "results_received": len(records),
        "rss_mib_first": round(samples[0][1], 1) if samples else None,
        "rss_mib_last": round(samples[-1][1], 1) if samples else None,
        "memory_slope_mib_per_min": round(slope_per_minute(steady), 3),
        "latency_ms_median_first_third": round(statistics.median(first), 1) if first else None,
        "latency_ms_median_last_third": round(statistics.median(last), 1) if last else None,
        "latency_drift_ms": round(statistics.median(last) - statistics.median(first), 1) if first and last else None,
        "threads_before_start": threads_before, "threads_after_stop": threads_after,
        "sockets_before_start": sockets_before, "sockets_after_stop": sockets_after,
    }
    print(json.dumps(report, indent=1))
    if args.report:
        Path(args.report).write_text(json.dumps(report, indent=1) + "\n", encoding="utf-8")
    leaked = threads_after > threads_before or sockets_after > sockets_before
    return 1 if leaked else 0


if __name__ == "__main__":
    sys.exit(main())
