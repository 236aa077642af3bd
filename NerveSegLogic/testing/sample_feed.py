"""What the live-path benchmarks stream: the bundled sample frames as a 580x420 scanner would send them, a free
loopback port, and a record of the IGTL timestamp of every frame the replay server sends.

Used by benchmarks/speed (bench_vs_fast.py, bench_threads.py, profile_serve.py, bench_live_path.py,
bench_slicer_driver.py), which match the labelmaps that come back to the frames sent by these timestamps.
"""

from __future__ import annotations

import socket
from pathlib import Path
from typing import List, Tuple

from ..resources import sample_dir

#: The frame the benchmarks stream (width, height): the size issue 2 names for a scanner's frames.
FRAME_SIZE: Tuple[int, int] = (580, 420)


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def sample_frames(folder: Path, size: Tuple[int, int] = FRAME_SIZE) -> int:
    """Write the bundled sample frames into ``folder`` as grey uint8 PNGs of ``size`` (width, height; resized,
    aspect not kept); returns how many."""
    import cv2

    files = sorted((sample_dir() / "images").glob("*.png"))
    for path in files:
        image = cv2.imread(str(path), cv2.IMREAD_GRAYSCALE)
        cv2.imwrite(str(folder / path.name), cv2.resize(image, tuple(size), interpolation=cv2.INTER_AREA))
    return len(files)


class SentLog:
    """Records the IGTL timestamp of every frame the replay server encodes (the replay module's encoder, wrapped,
    while the ``with`` block runs)."""

    def __init__(self):
        # The package's own imports inside functions here are lazy on purpose: they load numpy, which importing this
        # module must not.
        from ..stream import replay

        self._replay = replay
        self._original = replay.encode_frame_parts
        self.timestamps: List[float] = []

    def __enter__(self):
        def encode(image, geometry, device_name, timestamp, *args, **kwargs):
            self.timestamps.append(timestamp)
            return self._original(image, geometry, device_name, timestamp, *args, **kwargs)

        self._replay.encode_frame_parts = encode
        return self

    def __exit__(self, *exc):
        self._replay.encode_frame_parts = self._original
