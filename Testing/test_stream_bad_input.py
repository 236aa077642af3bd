"""ImageReceiver on bad input: no server, a server that dies, truncated / corrupt / oversize messages, images it
does not take, other message types. Each case: a clear count (and message), the stream goes on."""

import itertools
import logging
import selectors
import socket
import struct
import threading
import time
import tracemalloc

import numpy as np
import pytest

from NerveSegLogic.frame import ImageGeometry
from NerveSegLogic.stream import ImageReceiver, ReplayServer
from NerveSegLogic.stream.receiver import backoff_delays
from NerveSegLogic.stream.codec import (HEADER_SIZE, encode_image, encode_status, encode_string, encode_transform,
                                        pack_message)

WAIT = 10.0  # seconds; generous upper bound for events on 2 shared cores, never a sleep
GEOMETRY = ImageGeometry(spacing=(0.2, 0.2, 1.0))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def frame_bytes(value: int, shape=(40, 60), device="Image_Reference", timestamp=None) -> bytes:
    """A valid IMAGE whose pixels are all ``value`` (so a test can tell frames apart)."""
    return encode_image(np.full(shape, value, np.uint8), GEOMETRY, device_name=device,
                        timestamp=time.time() if timestamp is None else timestamp)


def noisy_frame_bytes(seed: int, shape=(100, 100)) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 256, size=shape, dtype=np.uint8)
    return encode_image(pixels, GEOMETRY, timestamp=time.time())


class ScriptedServer:
    """A fake OpenIGTLink server: the n-th connection it accepts gets ``scripts[n]`` (a list of byte strings) and is
    then closed, except the last, which is held open until stop(). Lets a test send exactly the bytes it wants."""

    def __init__(self, scripts, port: int = 0):
        self.scripts = scripts
        self.listener = socket.socket()
        self.listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.listener.bind(("127.0.0.1", port))
        self.listener.listen(4)
        self.port = self.listener.getsockname()[1]
        self.accepted = 0
        self._wake_r, self._wake_w = socket.socketpair()
        self._held = []
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self):
        selector = selectors.DefaultSelector()
        selector.register(self.listener, selectors.EVENT_READ)
        selector.register(self._wake_r, selectors.EVENT_READ)
        for index, script in enumerate(self.scripts):
            events = [key.fileobj for key, _ in selector.select()]
            if self._wake_r in events:
                break
            conn, _ = self.listener.accept()
            self.accepted += 1
            for part in script:
                conn.sendall(part)
            if index == len(self.scripts) - 1:
                self._held.append(conn)
            else:
                conn.close()
        selector.close()

    def stop(self):
        self._wake_w.send(b"x")
        self._thread.join(WAIT)
        for conn in self._held:
            conn.close()
        for s in (self.listener, self._wake_r, self._wake_w):
            s.close()


@pytest.fixture
def collect():
    """A list that a receiver's on_frame appends to, and the receivers to stop at the end."""
    frames, receivers = [], []

    def make(port, **kwargs):
        kwargs.setdefault("reconnect_min_s", 0.02)
        kwargs.setdefault("reconnect_max_s", 0.1)
        receiver = ImageReceiver(port=port, on_frame=frames.append, **kwargs)
        receivers.append(receiver)
        receiver.start()
        return receiver

    yield frames, make
    for receiver in receivers:
        receiver.stop()


def values(frames):
    return [int(f.image[0, 0]) for f in frames]


def test_no_server_logs_a_clear_message_keeps_retrying_and_stops_promptly(caplog):
    port = free_port()
    caplog.set_level(logging.INFO, logger="NerveSegLogic.stream.receiver")
    receiver = ImageReceiver(port=port, reconnect_min_s=0.01, reconnect_max_s=0.05)
    receiver.start()
    try:
        assert receiver.wait_for(lambda s: s.connect_attempts >= 4, WAIT)
        assert not receiver.connected.is_set()
        messages = [r.getMessage() for r in caplog.records]
        assert any(f"No OpenIGTLink server at 127.0.0.1:{port}" in m and "connection refused" in m
                   for m in messages), messages
        # One warning, not one per attempt.
        assert sum("No OpenIGTLink server" in m for m in messages) == 1
        assert "no server" in receiver.stats().last_error
    finally:
        started = time.monotonic()
        receiver.stop()
        stopped_in = time.monotonic() - started
    assert not receiver.running
    assert stopped_in < 1.0, f"stop() took {stopped_in:.2f} s while retrying"


def test_backoff_doubles_from_its_first_delay_up_to_its_cap():
    assert list(itertools.islice(backoff_delays(0.1, 2.0), 8)) == [0.1, 0.2, 0.4, 0.8, 1.6, 2.0, 2.0, 2.0]


def test_stop_while_connected_and_idle_returns_promptly_and_start_after_stop_works(collect):
    frames, make = collect
    server = ScriptedServer([[frame_bytes(1)], [frame_bytes(2)]])  # 2nd connection held open, idle
    try:
        receiver = make(server.port)
        receiver.start()  # idempotent
        assert receiver.wait_for(lambda s: s.frames >= 2, WAIT)
        assert receiver.connected.is_set()
        started = time.monotonic()
        receiver.stop()
        receiver.stop()  # idempotent
        assert time.monotonic() - started < 1.0
        assert not receiver.running and not receiver.connected.is_set()
    finally:
        server.stop()
    server = ScriptedServer([[frame_bytes(3)]])
    try:
        receiver.port = server.port
        receiver.start()
        assert receiver.wait_for(lambda s: s.frames >= 3, WAIT)
        assert values(frames) == [1, 2, 3]
        assert [f.frame_id for f in frames] == [1, 2, 3]
    finally:
        receiver.stop()
        server.stop()


def test_server_dying_mid_stream_is_followed_by_reconnection_and_the_gap_is_counted(collect):
    frames, make = collect
    port = free_port()
    first = ReplayServer(port=port, fps=100, loop=True)
    first.start()
    receiver = make(port)
    try:
        assert receiver.wait_for_frames(5, WAIT)
        first.stop()  # the server dies; the receiver sees the connection close
        assert receiver.wait_for(lambda s: s.disconnects >= 1, WAIT)
        before = receiver.stats().frames
        second = ReplayServer(port=port, fps=100, loop=True)
        second.start()
        try:
            assert receiver.wait_for(lambda s: s.frames >= before + 5 and s.gaps >= 1, WAIT)
            stats = receiver.stats()  # before the second server goes too
        finally:
            second.stop()
    finally:
        first.stop()
    assert stats.gaps == 1 and stats.gap_seconds > 0
    assert stats.reconnects == 1 and stats.connects == 2
    ids = [f.frame_id for f in frames]
    assert ids == sorted(ids) and len(set(ids)) == len(ids)


def test_message_truncated_by_the_server_closing_is_dropped_and_counted_and_later_frames_arrive(collect):
    frames, make = collect
    cut = frame_bytes(2)
    server = ScriptedServer([[frame_bytes(1), cut[:HEADER_SIZE + 500]],  # then the connection closes
                             [frame_bytes(3), frame_bytes(4)]])
    try:
        receiver = make(server.port)
        assert receiver.wait_for(lambda s: s.frames >= 3, WAIT)
        stats = receiver.stats()  # before the server goes, which the receiver would count
    finally:
        server.stop()
    assert values(frames) == [1, 3, 4]
    assert stats.truncated == 1 and stats.reconnects == 1
    assert "after" in stats.last_error and "bytes" in stats.last_error


def test_message_truncated_inside_the_stream_fails_its_crc_and_the_connection_is_reopened(collect):
    frames, make = collect
    broken = noisy_frame_bytes(1)
    server = ScriptedServer([[frame_bytes(1), broken[:HEADER_SIZE + 5000], noisy_frame_bytes(2)],
                             [frame_bytes(9)]])
    try:
        receiver = make(server.port)
        assert receiver.wait_for(lambda s: s.frames >= 2, WAIT)
        stats = receiver.stats()  # before the server goes, which the receiver would count
    finally:
        server.stop()
    assert values(frames) == [1, 9]
    assert stats.crc_errors == 1  # the short body swallowed the start of the next message
    assert stats.out_of_step == 1  # what followed was not a header: the connection was reopened
    assert stats.reconnects == 1


def test_a_message_that_stalls_mid_body_is_dropped_after_the_stall_timeout(collect):
    frames, make = collect
    stalled = ScriptedServer([[frame_bytes(1), frame_bytes(2)[:HEADER_SIZE + 100]]])  # held open, never finished
    try:
        receiver = make(stalled.port, stall_timeout_s=0.2)
        assert receiver.wait_for(lambda s: s.truncated >= 1, WAIT)
    finally:
        stalled.stop()
    assert values(frames) == [1]
    assert "stalled" in receiver.stats().last_error


def test_corrupt_crc_is_dropped_and_counted_and_the_connection_is_kept(collect):
    frames, make = collect
    corrupt = bytearray(frame_bytes(2))
    corrupt[-1] ^= 0xFF
    server = ScriptedServer([[frame_bytes(1), bytes(corrupt), frame_bytes(3)]])
    try:
        receiver = make(server.port)
        assert receiver.wait_for(lambda s: s.frames >= 2, WAIT)
        stats = receiver.stats()  # before the server goes, which the receiver would count
    finally:
        server.stop()
    assert values(frames) == [1, 3]
    assert stats.crc_errors == 1 and stats.connects == 1 and stats.disconnects == 0


def test_crc_check_can_be_switched_off_for_senders_that_leave_it_empty(collect):
    frames, make = collect
    no_crc = bytearray(frame_bytes(5))
    struct.pack_into(">Q", no_crc, 50, 0)
    server = ScriptedServer([[bytes(no_crc)]])
    try:
        receiver = make(server.port, check_crc=False)
        assert receiver.wait_for_frames(1, WAIT)
    finally:
        server.stop()
    assert values(frames) == [5]


def test_absurd_body_size_is_refused_before_any_allocation_and_the_connection_is_reopened(collect):
    frames, make = collect
    absurd = bytearray(frame_bytes(2)[:HEADER_SIZE])
    struct.pack_into(">Q", absurd, 42, 256 * 1024 * 1024)  # 256 MiB announced, above the 64 MiB default cap
    server = ScriptedServer([[frame_bytes(1), bytes(absurd) + b"\0" * 1000], [frame_bytes(3)]])
    tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        receiver = make(server.port)
        assert receiver.wait_for(lambda s: s.frames >= 2, WAIT)
        _, peak = tracemalloc.get_traced_memory()
        stats = receiver.stats()  # before the server goes, which the receiver would count
    finally:
        tracemalloc.stop()
        server.stop()
    assert values(frames) == [1, 3]
    assert stats.oversize == 1 and stats.reconnects == 1
    assert peak < 32 * 1024 * 1024, f"peak traced allocation {peak} bytes: the body was allocated"


def test_the_body_size_cap_is_configurable(collect):
    frames, make = collect
    server = ScriptedServer([[frame_bytes(1, shape=(100, 100))], [frame_bytes(2, shape=(10, 10))]])
    try:
        receiver = make(server.port, max_body_bytes=5000)  # the 100x100 frame's body is 10072 bytes
        assert receiver.wait_for(lambda s: s.frames >= 1, WAIT)
    finally:
        server.stop()
    assert values(frames) == [2]
    assert receiver.stats().oversize == 1


def test_images_of_unexpected_type_or_shape_are_refused_with_the_reason_and_counted(collect, caplog):
    frames, make = collect
    caplog.set_level(logging.WARNING, logger="NerveSegLogic.stream.receiver")
    script = [
        encode_image(np.zeros((20, 30), np.int16), GEOMETRY),  # scalar type not taken
        encode_image(np.zeros((3, 20, 30, 1), np.uint8), GEOMETRY),  # a volume of 3 slices
        encode_image(np.zeros((20, 30, 2), np.uint8), GEOMETRY),  # 2 components
        frame_bytes(7),
    ]
    server = ScriptedServer([script])
    try:
        receiver = make(server.port)
        assert receiver.wait_for_frames(1, WAIT)
        stats = receiver.stats()  # before the server goes, which the receiver would count
    finally:
        server.stop()
    assert values(frames) == [7]
    assert stats.refused == {"scalar_type": 1, "volume": 1, "components": 1}
    assert stats.connects == 1
    logged = " ".join(r.getMessage() for r in caplog.records)
    assert "int16" in logged and "3 slices" in logged and "2 components" in logged


def test_rgb_and_uint16_and_float_frames_are_taken(collect):
    frames, make = collect
    rgb = np.zeros((20, 30, 3), np.uint8)
    rgb[..., 0] = 200  # pure red -> grey 0.299 * 200 = 59.8 -> 60
    script = [encode_image(rgb, GEOMETRY), encode_image(np.full((20, 30), 4000, np.uint16), GEOMETRY),
              encode_image(np.full((20, 30), 0.5, np.float32), GEOMETRY),
              encode_image(np.full((20, 30), 0.25, np.float64), GEOMETRY)]
    server = ScriptedServer([script])
    try:
        receiver = make(server.port)
        assert receiver.wait_for_frames(4, WAIT)
    finally:
        server.stop()
    assert [f.image.dtype for f in frames] == [np.uint8, np.uint16, np.float32, np.float32]
    assert all(f.image.shape == (20, 30) for f in frames)
    assert [float(f.image[0, 0]) for f in frames] == [60.0, 4000.0, 0.5, 0.25]


def test_transform_string_status_and_unknown_types_interleaved_are_ignored_and_frames_still_arrive(collect):
    frames, make = collect
    script = [
        encode_transform(np.eye(4)), frame_bytes(1), encode_string("hello"), encode_status(status="fine"),
        pack_message("NERVESEG_XYZ", "Other", 0.0, bytes(range(256)) * 40), frame_bytes(2),
        frame_bytes(66, device="Image_Other"), encode_transform(np.eye(4)), frame_bytes(3),
    ]
    server = ScriptedServer([script])
    try:
        receiver = make(server.port, device_name="Image_Reference")
        assert receiver.wait_for(lambda s: s.messages >= len(script), WAIT)
        stats = receiver.stats()  # before the server goes, which the receiver would count
    finally:
        server.stop()
    assert values(frames) == [1, 2, 3]
    assert all(f.device_name == "Image_Reference" for f in frames)
    assert stats.ignored == {"TRANSFORM": 2, "STRING": 1, "STATUS": 1, "NERVESEG_XYZ": 1}
    assert stats.wrong_device == 1
    assert stats.connects == 1 and stats.crc_errors == 0


def test_without_a_device_filter_any_image_is_taken(collect):
    frames, make = collect
    server = ScriptedServer([[frame_bytes(1), frame_bytes(2, device="ImagerClient")]])
    try:
        receiver = make(server.port)
        assert receiver.wait_for_frames(2, WAIT)
    finally:
        server.stop()
    assert [f.device_name for f in frames] == ["Image_Reference", "ImagerClient"]
