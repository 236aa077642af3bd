"""Receiving OpenIGTLink IMAGE frames: NerveSeg's own reader against pyigtl's, parse cost and live loopback latency.

What it measures, for 580x420 uint8 frames (the size issue 2 names), on this machine:

1. Parse throughput with no socket: one encoded IMAGE message parsed again and again by
   - our codec (header, CRC-64 check, IMAGE decode to a frame array), with the CRC by anycrc (when installed) and
     by crcmod (the fallback), and without the CRC check;
   - pyigtl (``MessageBase.parse_header`` + ``ImageMessage.unpack``; pyigtl checks no CRC), and pyigtl plus our CRC
     check, which is what adopting pyigtl's parser would cost with the check the receive path must do.
2. Live loopback: a ReplayServer in a separate process sends 30 fps for ``--seconds`` to one client in this process:
   - ``ImageReceiver`` (ours: CRC by anycrc, by crcmod, and off, to show what the check costs);
   - ``pyigtl.OpenIGTLinkClient`` with a consumer thread calling ``wait_for_message``, as an application uses it.
   Latency is the sender's IGTL timestamp (taken just before encoding) to the moment the frame is in the receiver's
   hands (same machine, same clock). CPU is this process's user+system time (the receiver's threads; the sender runs
   in the other process) divided by the frames received.

Run:  .venv/bin/python benchmarks/speed/bench_receiver.py [--seconds 10] [--fps 30] [--report benchmarks/speed/receiver.md]
"""

from __future__ import annotations

import argparse
import datetime as dt
import multiprocessing as mp
import os
import platform
import resource
import sys
import threading
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]

from NerveSegLogic.frame import ImageGeometry  # noqa: E402
from NerveSegLogic.stream import codec  # noqa: E402
from NerveSegLogic.stream import ImageReceiver, ReplayServer  # noqa: E402
from NerveSegLogic.stream.codec import (HEADER_SIZE, check_crc, decode_image, encode_image, frame_image,  # noqa: E402
                                        parse_header)
from NerveSegLogic.stream.sources import SourceFrame  # noqa: E402

WIDTH, HEIGHT = 580, 420
DEVICE = "Image_Reference"


# ------------------------------------------------------------------------------------------------ frames


def benchmark_frames(count: int = 24):
    """The bundled sample frames, grey, resized to 580x420 (real ultrasound texture, the size to measure)."""
    import cv2

    from NerveSegLogic.resources import sample_dir

    files = sorted((sample_dir() / "images").glob("*.png"))[:count]
    return [cv2.resize(cv2.imread(str(f), cv2.IMREAD_GRAYSCALE), (WIDTH, HEIGHT), interpolation=cv2.INTER_AREA)
            for f in files]


class MemorySource:
    """Frames held in memory, so the sender's disk reads do not enter the measurement."""

    def __init__(self, images, spacing=(0.1, 0.1, 1.0)):
        self.images = images
        self.geometry = ImageGeometry(spacing=spacing)
        self.description = f"{len(images)} frames of {WIDTH}x{HEIGHT} uint8 in memory"
        self.fps = None

    def __len__(self):
        return len(self.images)

    def __iter__(self):
        for index, image in enumerate(self.images):
            yield SourceFrame(image, self.geometry, f"frame{index}")


# ------------------------------------------------------------------------------------------------ parsing


def time_per_call(function, repeat: int, rounds: int = 5) -> float:
    """Seconds per call: the best of ``rounds`` rounds (the least disturbed by other work on a shared machine)."""
    function()  # warm up
    best = float("inf")
    per_round = max(repeat // rounds, 1)
    for _ in range(rounds):
        start = time.perf_counter()
        for _ in range(per_round):
            function()
        best = min(best, (time.perf_counter() - start) / per_round)
    return best


def parse_benchmark(repeat: int):
    import pyigtl

    image = benchmark_frames(1)[0]
    message = encode_image(image, ImageGeometry(spacing=(0.1, 0.1, 1.0)), device_name=DEVICE, timestamp=time.time())
    head, body = message[:HEADER_SIZE], bytearray(message[HEADER_SIZE:])

    crcmod_crc = codec.crcmod_crc64()

    def ours(crc=True, crc_function=None):
        header = parse_header(head)
        if crc and crc_function is None:
            check_crc(header, body)
        elif crc:
            assert crc_function(body) == header.crc
        return frame_image(decode_image(header, body))

    def theirs(crc=False):
        fields = pyigtl.MessageBase.parse_header(head)
        if crc:
            check_crc(parse_header(head), body)
        parsed = pyigtl.ImageMessage()
        parsed.unpack(fields, bytes(body))  # pyigtl's receive loop hands unpack a bytes object
        return parsed.image

    assert np.array_equal(ours(), image) and np.array_equal(theirs()[0], image)
    codec.crc64(b"")  # picks the library
    rows = [
        (f"NerveSeg codec, CRC by {codec.crc64_library}", time_per_call(lambda: ours(True), repeat)),
        ("NerveSeg codec, CRC by crcmod", time_per_call(lambda: ours(True, crcmod_crc), repeat)),
        ("NerveSeg codec, no CRC", time_per_call(lambda: ours(False), repeat)),
        ("pyigtl (checks no CRC)", time_per_call(lambda: theirs(False), repeat)),
        (f"pyigtl + CRC by {codec.crc64_library}", time_per_call(lambda: theirs(True), repeat)),
        (f"CRC-64 of the body alone, {codec.crc64_library}", time_per_call(lambda: codec.crc64(body), repeat)),
        ("CRC-64 of the body alone, crcmod", time_per_call(lambda: crcmod_crc(body), repeat)),
    ]
    return rows, len(message)


# ------------------------------------------------------------------------------------------------ live


def serve(port_queue, result_queue, fps: float, frames: int):
    """Sender process: a ReplayServer that waits for its client, sends ``frames`` at ``fps``, reports and exits."""
    server = ReplayServer(MemorySource(benchmark_frames()), fps=fps, loop=True, max_frames=frames,
                          wait_for_client=True, device_name=DEVICE)
    server.start()
    port_queue.put(server.port)
    server.wait_done(frames / fps + 60)
    stats = server.sender.stats()
    result_queue.put({"frames_sent": server.frames_sent, "sender_dropped": stats.messages_dropped,
                      "elapsed_s": server.elapsed_s()})
    server.stop()


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def run_live(kind: str, fps: float, seconds: float):
    """One live run; returns a dict of results."""
    frames = int(round(fps * seconds))
    ctx = mp.get_context("spawn")
    port_queue, result_queue = ctx.Queue(), ctx.Queue()
    sender = ctx.Process(target=serve, args=(port_queue, result_queue, fps, frames), daemon=True)
    sender.start()
    port = port_queue.get(timeout=60)
    received = []  # (igtl timestamp, wall time in hand)
    cpu_before = cpu_seconds()
    if kind.startswith("ours"):
        saved = codec._crc64_impl
        if kind == "ours-crcmod":
            codec._crc64_impl = codec.crcmod_crc64()  # benchmark only: the fallback library
        receiver = ImageReceiver(port=port, device_name=DEVICE, check_crc=(kind != "ours-no-crc"),
                                 on_frame=lambda f: received.append((f.igtl_timestamp, f.received_wall)))
        receiver.start()
        sender.join(seconds + 60)
        receiver.wait_for_frames(frames, timeout=2.0)
        receiver.stop()
        codec._crc64_impl = saved
        extra = {"crc_errors": receiver.stats().crc_errors}
    else:
        import pyigtl

        client = pyigtl.OpenIGTLinkClient(host="127.0.0.1", port=port)
        done = threading.Event()

        def consume():
            while not done.is_set():
                message = client.wait_for_message(DEVICE, timeout=0.5)
                if message is not None:
                    received.append((message.timestamp, time.time()))

        consumer = threading.Thread(target=consume, daemon=True)
        consumer.start()
        sender.join(seconds + 60)
        deadline = time.monotonic() + 2.0
        while len(received) < frames and time.monotonic() < deadline:
            time.sleep(0.05)  # benchmark only: let the last frames drain
        done.set()
        consumer.join(5)
        client.stop()
        extra = {}
    cpu = cpu_seconds() - cpu_before
    sent = result_queue.get(timeout=10)
    stamps = np.array([r[0] for r in received])
    wall = np.array([r[1] for r in received])
    unique = len(set(stamps.tolist()))
    latency_ms = (wall - stamps) * 1000.0
    duration = wall[-1] - wall[0] if len(wall) > 1 else float("nan")
    return {
        "kind": kind, "frames_sent": sent["frames_sent"], "frames_received": unique,
        "dropped": sent["frames_sent"] - unique, "sender_dropped": sent["sender_dropped"],
        "fps": (unique - 1) / duration if duration > 0 else float("nan"),
        "p50": float(np.percentile(latency_ms, 50)), "p95": float(np.percentile(latency_ms, 95)),
        "p99": float(np.percentile(latency_ms, 99)), "max": float(latency_ms.max()),
        "cpu_ms_per_frame": cpu / max(unique, 1) * 1000.0, **extra,
    }


# ------------------------------------------------------------------------------------------------ report


def machine() -> str:
    from importlib.metadata import version

    cpu = platform.processor() or "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return (f"{platform.system()} {platform.release()}, {cpu}, {os.cpu_count()} logical CPUs, "
            f"Python {platform.python_version()}, numpy {np.__version__}, pyigtl {version('pyigtl')}, "
            f"CRC-64 by {codec.crc64_library}")


def load() -> str:
    try:
        return "load average %.1f / %.1f / %.1f (1 / 5 / 15 min)" % os.getloadavg()
    except OSError:
        return "load average unknown"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=10.0, help="length of each live run (default 10)")
    parser.add_argument("--fps", type=float, default=30.0, help="sender rate (default 30)")
    parser.add_argument("--repeat", type=int, default=1000, help="parse repetitions (default 1000)")
    parser.add_argument("--report", type=Path, default=ROOT / "benchmarks" / "speed" / "receiver.md")
    args = parser.parse_args(argv)

    load_before = load()
    print(f"parse benchmark: {args.repeat} repetitions of one {WIDTH}x{HEIGHT} uint8 IMAGE message")
    parse_rows, message_bytes = parse_benchmark(args.repeat)
    for name, seconds in parse_rows:
        print(f"  {name:32s} {seconds * 1e6:9.1f} us/message  {1 / seconds:8.0f} messages/s")

    live = []
    codec.crc64(b"")  # picks the CRC library
    for kind in ("ours", "ours-crcmod", "ours-no-crc", "pyigtl"):
        print(f"live: {kind}, {args.fps:g} fps for {args.seconds:g} s ...", flush=True)
        result = run_live(kind, args.fps, args.seconds)
        live.append(result)
        print("  " + ", ".join(f"{k}={v:.2f}" if isinstance(v, float) else f"{k}={v}" for k, v in result.items()))

    names = {"ours": f"NerveSeg ImageReceiver, CRC by {codec.crc64_library}",
             "ours-crcmod": "NerveSeg ImageReceiver, CRC by crcmod", "ours-no-crc": "NerveSeg ImageReceiver, CRC off",
             "pyigtl": "pyigtl OpenIGTLinkClient + wait_for_message"}
    by_kind = {r["kind"]: r for r in live}
    parse = dict(parse_rows)
    ours_parse = parse[f"NerveSeg codec, CRC by {codec.crc64_library}"]
    crc_speedup = parse["CRC-64 of the body alone, crcmod"] / parse[f"CRC-64 of the body alone, {codec.crc64_library}"]
    pyigtl_parse = parse[f"pyigtl + CRC by {codec.crc64_library}"]
    command = "python benchmarks/speed/bench_receiver.py" + "".join(
        f" {a}" for a in (argv if argv is not None else sys.argv[1:]))
    lines = [
        "# Receiving OpenIGTLink frames: NerveSeg's reader against pyigtl's",
        "",
        f"- Date: {dt.datetime.now().astimezone().strftime('%Y-%m-%d %H:%M %Z')}",
        f"- Machine: {machine()}",
        f"- Load while measuring: {load_before} at the start, {load()} at the end (the 2 cores are shared with "
        "other work, so tails are noisy)",
        f"- Command: `{command}`",
        f"- Frames: the bundled sample, grey, resized to {WIDTH}x{HEIGHT} uint8 "
        f"({message_bytes} bytes per IMAGE message)",
        "",
        "## Which reader NerveSeg keeps, and why",
        "",
        "NerveSeg keeps its own reader (`NerveSegLogic/stream/codec.py` + `receiver.py`), not pyigtl's:",
        "",
        "- The receive path must check the CRC-64 and refuse an absurd body size before allocating; pyigtl does "
        "neither, so using it would still mean re-parsing its header and re-hashing its body. With the check, our "
        f"parser takes {ours_parse * 1e6:.0f} us per message against {pyigtl_parse * 1e6:.0f} us for pyigtl plus "
        "the same check (table below; pyigtl also copies the body while assembling it).",
        f"- Latency: pyigtl's client polls (10 ms socket timeouts, 10 ms sleeps in `wait_for_message`), so a frame "
        f"waits {by_kind['pyigtl']['p50']:.1f} ms at the median before the application has it, against "
        f"{by_kind['ours']['p50']:.2f} ms for ours, which waits in the OS selector (epoll) and hands over through the "
        "newest-frame slot the moment the last byte arrives.",
        f"- CPU: {by_kind['ours']['cpu_ms_per_frame']:.2f} ms per frame for ours with the CRC check against "
        f"{by_kind['pyigtl']['cpu_ms_per_frame']:.2f} ms for pyigtl without it (its client thread wakes every 10 ms "
        "to poll, frame or no frame).",
        "- Control: ours stops without busy waiting, restarts after stop, reconnects with capped backoff and counts "
        "every refusal; pyigtl's `stop()` sleeps in a loop, its thread cannot be restarted, and its server installs "
        "signal handlers.",
        f"- CRC library: anycrc computes CRC-64/ECMA-182 about {crc_speedup:.0f}x "
        "faster than crcmod here (the last two parse rows); crcmod, which pyigtl installs, is the fallback."
        if codec.crc64_library == "anycrc" else "- CRC library: crcmod (anycrc is not installed here).",
        "",
        "## Parsing one message (no socket)",
        "",
        "Best of 5 rounds.",
        "",
        "| parser | us per message | messages/s |",
        "|---|---:|---:|",
        *[f"| {name} | {seconds * 1e6:.0f} | {1 / seconds:.0f} |" for name, seconds in parse_rows],
        "",
        f"## Live over loopback: {args.fps:g} fps for {args.seconds:g} s, sender in another process",
        "",
        "Latency: the sender's IGTL timestamp (taken just before it encodes the frame) to the frame in the "
        "receiver's hands. CPU: the receiving process's user+system time per frame received.",
        "",
        "| receiver | sent | received | dropped | fps | p50 ms | p95 ms | p99 ms | max ms | CPU ms/frame |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
        *[f"| {names[r['kind']]} | {r['frames_sent']} | {r['frames_received']} | {r['dropped']} | {r['fps']:.1f} | "
          f"{r['p50']:.2f} | {r['p95']:.2f} | {r['p99']:.2f} | {r['max']:.2f} | {r['cpu_ms_per_frame']:.2f} |"
          for r in live],
        "",
    ]
    args.report.write_text("\n".join(lines) + "\n", encoding="utf-8")
    print(f"wrote {args.report}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
