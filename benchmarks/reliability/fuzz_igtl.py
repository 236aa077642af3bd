"""Fuzzing the OpenIGTLink codec and the receiver for a bounded time (the tests run the same briefly).

Three campaigns, each for its share of ``--seconds``:

1. codec: hypothesis-generated valid IMAGE messages (every scalar type, 1..4 components, 1..2 slices, header
   versions 1 and 2 with metadata, RAS and LPS), mutated (bytes flipped, cut, extended, header and image-header
   fields overwritten, huge and sliver sizes announced, CRC recomputed half the time), fed through parse_header,
   check_crc, decode_image and frame_image. The contract: only IgtlProtocolError / ImageRefused are raised, and
   every accepted frame is 2D and inside image_bounds (NerveSegLogic/testing/igtl_fuzz.py).
2. headers: random 58-byte headers through parse_header.
3. receiver: an ImageReceiver connected to a server that sends a stream of mutated messages followed by a valid
   frame; the receiver must stay alive, never stop on an unexpected error, and stop within 2 s.

Any contract break is printed with the input that caused it and the exit code is 1.

Run:  .venv/bin/python benchmarks/reliability/fuzz_igtl.py --seconds 120 [--report benchmarks/reliability/reliability_fuzz.json]
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import platform
import sys
import time
import traceback
from pathlib import Path

HERE = Path(__file__).resolve().parent


def _run_campaign(name, strategy, check, seconds, first_seed, counts, failures, batch=200):
    """Run ``check`` on examples of ``strategy`` in batches of ``batch`` (a new seed each) until ``seconds`` pass."""
    from hypothesis import HealthCheck, Phase, given, seed, settings

    deadline = time.monotonic() + seconds
    batch_no = 0
    while time.monotonic() < deadline:
        @seed(first_seed + batch_no)
        @settings(max_examples=batch, deadline=None, database=None, suppress_health_check=list(HealthCheck),
                  phases=[Phase.generate])
        @given(strategy)
        def one(example):
            counts[name]["cases"] += 1
            try:
                outcome = check(example)
            except Exception as error:  # a contract break: record it and keep going
                failures.append({"campaign": name, "error": repr(error), "input": repr(example)[:400],
                                 "traceback": traceback.format_exc(limit=4)})
                outcome = "FAILURE"
            counts[name][outcome] += 1

        one()
        batch_no += 1


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=120.0, help="total time budget (default %(default)s)")
    parser.add_argument("--seed", type=int, default=14, help="first hypothesis seed (default %(default)s)")
    parser.add_argument("--report", default=None, help="also write the counts as JSON to this file")
    args = parser.parse_args(argv)

    import logging

    import numpy as np
    from hypothesis import strategies as st

    logging.basicConfig(level=logging.CRITICAL)  # the receiver logs every refusal; the counts say it all

    from NerveSegLogic.frame import ImageGeometry
    from NerveSegLogic.stream.codec import HEADER_SIZE, IgtlProtocolError, encode_image, parse_header
    from NerveSegLogic.testing.igtl_fuzz import check_codec_on, mutated_messages

    def check_header(raw):
        try:
            parse_header(raw)
            return "parsed"
        except IgtlProtocolError as error:
            return f"header:{error.kind}"

    good = encode_image(np.full((16, 20), 5, np.uint8), ImageGeometry(), device_name="Image_Reference")

    def check_receiver(messages):
        from NerveSegLogic.stream import ImageReceiver
        from NerveSegLogic.testing.igtl_fuzz import StreamServer  # the same fake server the test uses

        server = StreamServer(b"".join(messages) + good)
        receiver = ImageReceiver(port=server.port, reconnect_min_s=0.01, reconnect_max_s=0.02, stall_timeout_s=0.2,
                                 idle_timeout_s=0.3)
        try:
            receiver.start()
            receiver.wait_for(lambda s: s.frames >= 1 or s.disconnects >= 1, 5.0)
            alive = receiver.running
        finally:
            started = time.perf_counter()
            receiver.stop()
            stopped_in = time.perf_counter() - started
            server.stop()
        stats = receiver.stats()
        if not alive or stats.last_error.startswith("receiver stopped"):
            raise AssertionError(f"receiver died: {stats.last_error}")
        if stopped_in > 2.0:
            raise AssertionError(f"stop() took {stopped_in:.1f} s")
        return "frame" if stats.frames else ("refused" if stats.refused else "reconnected")

    counts = collections.defaultdict(collections.Counter)
    failures = []
    started = time.time()
    _run_campaign("codec", mutated_messages(), check_codec_on, args.seconds * 0.6, args.seed, counts, failures)
    import struct

    structured = st.builds(
        lambda version, kind, device, size, crc: struct.pack(">H12s20sIIQQ", version, kind, device, 0, 0, size, crc),
        st.integers(0, 3), st.sampled_from([b"IMAGE", b"TRANSFORM", b"STATUS", b"", b"\x01BAD", b"IMAGE\x00X"]),
        st.binary(max_size=20), st.integers(0, 2 ** 64 - 1), st.integers(0, 2 ** 64 - 1))
    _run_campaign("headers", st.one_of(st.binary(min_size=HEADER_SIZE, max_size=HEADER_SIZE), structured),
                  check_header,
                  args.seconds * 0.1, args.seed + 10_000, counts, failures)
    _run_campaign("receiver", st.lists(mutated_messages(), min_size=1, max_size=4), check_receiver,
                  args.seconds * 0.3, args.seed + 20_000, counts, failures, batch=20)
    elapsed = time.time() - started
    report = {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "machine": platform.platform(),
              "cpus": os.cpu_count(), "seconds": round(elapsed, 1),
              "command": "benchmarks/reliability/fuzz_igtl.py " + " ".join(argv if argv is not None else sys.argv[1:]),
              "campaigns": {name: dict(c) for name, c in counts.items()}, "failures": failures}
    for name, c in counts.items():
        outcomes = ", ".join(f"{k} {v}" for k, v in sorted(c.items()) if k != "cases")
        print(f"{name}: {c['cases']} cases in the budget; {outcomes}")
    print(f"{len(failures)} contract breaks in {elapsed:.0f} s")
    for failure in failures[:5]:
        print(json.dumps(failure, indent=1))
    if args.report:
        Path(args.report).write_text(json.dumps(report, indent=1) + "\n", encoding="utf-8")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
