#!/usr/bin/env python3
"""What this machine costs before any of serve's code runs: the floor under the overhead in serve_overhead.md.

1. One loopback TCP hop of a 580x420 uint8 IGTL IMAGE message (243,730 bytes), bare sockets, at the frame rate:
   ``sendall`` starts -> the other thread has every byte (``recv_into`` a preallocated buffer). serve's latency
   holds two such hops (replay server -> serve, serve -> client), each with its encode and checks on top.
2. The same preprocessing call (``preprocess.preprocess``, a fresh 580x420 frame into the default model's input)
   right after the previous one, after a sleep of 2, 10 and 20 ms, and after 20 ms spent spinning: how much a step
   that runs once per frame costs over its back-to-back time (serve's worker sleeps between frames), and whether
   the CPU going idle is the reason.

    .venv/bin/python benchmarks/speed/bench_machine_floor.py           # prints a Markdown section
"""

from __future__ import annotations

import argparse
import os
import selectors
import socket
import threading
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]

import numpy as np  # noqa: E402

MESSAGE_BYTES = 58 + 72 + 580 * 420


def loopback_hop(messages: int, fps: float, buffer_bytes: int = 0) -> np.ndarray:
    """ms from the start of sendall to the last byte received, per message; ``buffer_bytes``: SO_SNDBUF and
    SO_RCVBUF to ask for (0: the system's)."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)
    client = socket.socket()
    if buffer_bytes:
        client.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, buffer_bytes)
    client.connect(listener.getsockname())
    server, _ = listener.accept()
    for sock in (server, client):
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    if buffer_bytes:
        server.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, buffer_bytes)
    message = np.random.default_rng(0).integers(0, 256, MESSAGE_BYTES, dtype=np.uint8).tobytes()
    arrived = []

    def receive():
        view = memoryview(bytearray(MESSAGE_BYTES))
        with selectors.DefaultSelector() as selector:
            selector.register(client, selectors.EVENT_READ)
            for _ in range(messages):
                got = 0
                while got < MESSAGE_BYTES:
                    selector.select(5.0)
                    got += client.recv_into(view[got:], MESSAGE_BYTES - got)
                arrived.append(time.perf_counter())

    thread = threading.Thread(target=receive)
    thread.start()
    started = []
    for _ in range(messages):
        time.sleep(1.0 / fps)
        started.append(time.perf_counter())
        server.sendall(message)
    thread.join()
    for sock in (server, client, listener):
        sock.close()
    return (np.asarray(arrived) - np.asarray(started)) * 1e3


def preprocess_after_sleep(gaps_ms, repeats: int) -> dict:
    """{(gap ms, how): per-call ms} of preprocess on fresh frames (copies of the sample frames at 580x420), the gap
    spent asleep (``sleep``) or reading the clock in a loop (``spin``: the CPU never goes idle)."""
    import cv2

    from NerveSegLogic.imaging import placement as pp
    from NerveSegLogic.models import registry
    from NerveSegLogic.resources import sample_dir

    spec = registry.card(registry.default_name()).input
    frames = [cv2.resize(cv2.imread(str(p), cv2.IMREAD_GRAYSCALE), (580, 420), interpolation=cv2.INTER_AREA)
              for p in sorted((sample_dir() / "images").glob("*.png"))]
    out = {gap: [] for gap in gaps_ms}
    for _ in range(repeats):
        for gap in gaps_ms:  # interleaved, so a slow spell of the machine falls on every gap alike
            for frame in frames:
                fresh = frame.copy()
                if gap[1] == "sleep":
                    time.sleep(gap[0] / 1000.0)
                else:
                    end = time.perf_counter() + gap[0] / 1000.0
                    while time.perf_counter() < end:
                        pass
                start = time.perf_counter()
                pp.preprocess(fresh, spec)
                out[gap].append((time.perf_counter() - start) * 1e3)
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--messages", type=int, default=300)
    parser.add_argument("--fps", type=float, default=30.0)
    parser.add_argument("--repeats", type=int, default=5, help="passes over the sample frames per sleep")
    args = parser.parse_args(argv)
    print(f"## The machine's floor ({time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, load "
          f"{os.getloadavg()[0]:.2f})\n")
    print(f"Loopback TCP hop of one {MESSAGE_BYTES:,}-byte message at {args.fps:g} per second, bare sockets, "
          f"{args.messages} messages:\n")
    print("| socket buffers | p50 ms | p90 ms | p99 ms |\n|---|---|---|---|")
    for buffer_bytes in (0, 1 << 20):
        hop = loopback_hop(args.messages, args.fps, buffer_bytes)
        label = "the system's" if not buffer_bytes else f"{buffer_bytes >> 10} KiB asked"
        print(f"| {label} | {np.percentile(hop, 50):.3f} | {np.percentile(hop, 90):.3f} | "
              f"{np.percentile(hop, 99):.3f} |")
    gaps = ((0, "sleep"), (2, "sleep"), (10, "sleep"), (20, "sleep"), (20, "spin"))
    timings = preprocess_after_sleep(gaps, args.repeats)
    print("\npreprocess.preprocess of a fresh 580x420 frame for the default model, after a gap spent asleep or "
          "spinning (a loop reading the clock):\n")
    print("| gap before the call | calls | p50 ms | p90 ms |\n|---|---|---|---|")
    for gap in gaps:
        values = np.asarray(timings[gap])
        label = "none" if not gap[0] else f"{gap[0]} ms {'asleep' if gap[1] == 'sleep' else 'spinning'}"
        print(f"| {label} | {values.size} | {np.percentile(values, 50):.3f} | {np.percentile(values, 90):.3f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
