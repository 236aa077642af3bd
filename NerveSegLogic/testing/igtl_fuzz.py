"""Hypothesis strategies and checks for fuzzing the OpenIGTLink codec and receiver (Testing/test_stream_fuzz.py runs
them briefly; benchmarks/reliability/fuzz_igtl.py runs them for longer), and the fake server that feeds a receiver
the mutated messages (:class:`StreamServer`). Needs hypothesis (the ``test`` extra); nothing in the live path
imports this module.

The inputs: valid IMAGE messages (every scalar type, 1..4 components, 1..3 slices, header versions 1 and 2 with
metadata, RAS and LPS) which are then mutated: bytes flipped anywhere, cut short or extended, header fields (version,
body size, type) and image header fields (sizes up to 65535, scalar type, components, endian, coordinate system,
subvolume) overwritten, the CRC recomputed or not. The contract checked: the codec raises only its own errors
(IgtlProtocolError, ImageRefused), and a frame it accepts is a 2D grey/RGB image inside the size bounds.
"""

from __future__ import annotations

import socket
import struct
import threading

import numpy as np
from hypothesis import strategies as st

from ..frame import ImageGeometry
from ..imaging.bounds import MAX_ASPECT, MAX_PIXELS, MAX_SIDE_PX
from ..stream.codec import (HEADER_SIZE, IgtlProtocolError, ImageRefused, SCALAR_TYPES, check_crc, crc64,
                                        decode_image, encode_image, frame_image, parse_header)

#: Offsets of fields inside a version-1 IMAGE message (header then image header).
_IMAGE_FIELDS = {  # name: (offset from the start of the content, struct format)
    "version": (0, ">H"), "components": (2, ">B"), "scalar": (3, ">B"), "endian": (4, ">B"), "coord": (5, ">B"),
    "size_i": (6, ">H"), "size_j": (8, ">H"), "size_k": (10, ">H"), "sub_i": (66, ">H"), "sub_j": (68, ">H"),
    "sub_k": (70, ">H"), "off_i": (60, ">H"),
}
_HEADER_FIELDS = {"hversion": (0, ">H"), "body_size": (42, ">Q"), "crc": (50, ">Q")}


@st.composite
def valid_image_messages(draw) -> bytes:
    dtype = draw(st.sampled_from(sorted(SCALAR_TYPES.values(), key=str)))
    height = draw(st.integers(1, 24))
    width = draw(st.integers(1, 24))
    components = draw(st.integers(1, 4))
    slices = draw(st.sampled_from([1, 1, 1, 2]))
    shape = (slices, height, width, components)
    pixels = np.zeros(shape, dtype=dtype) + np.asarray(draw(st.integers(0, 100)), dtype=dtype)
    spacing = draw(st.floats(0.01, 5.0))
    version = draw(st.sampled_from([1, 2]))
    metadata = draw(st.dictionaries(st.text(max_size=8), st.text(max_size=8), max_size=3)) if version == 2 else None
    return encode_image(pixels, ImageGeometry(spacing=(spacing, spacing, 1.0)), device_name="Image_Reference",
                        header_version=version, metadata=metadata, coordinate=draw(st.sampled_from([1, 2])))


def _overwrite(data: bytearray, offset: int, fmt: str, value: int) -> None:
    size = struct.calcsize(fmt)
    if offset + size <= len(data):
        limit = 256 ** size - 1
        data[offset:offset + size] = struct.pack(fmt, value % (limit + 1))


@st.composite
def mutated_messages(draw) -> bytes:
    """A valid IMAGE message, then 1..4 mutations; the CRC recomputed half the time so decoding is reached."""
    data = bytearray(draw(valid_image_messages()))
    version = struct.unpack(">H", data[:2])[0]
    content_offset = HEADER_SIZE + (12 if version == 2 else 0)
    for _ in range(draw(st.integers(1, 4))):
        kind = draw(st.sampled_from(["flip", "truncate", "extend", "image_field", "header_field", "huge_size"]))
        if kind == "flip" and data:
            at = draw(st.integers(0, len(data) - 1))
            data[at] ^= draw(st.integers(1, 255))
        elif kind == "truncate" and len(data) > 1:
            del data[draw(st.integers(1, len(data) - 1)):]
        elif kind == "extend":
            data += draw(st.binary(min_size=1, max_size=64))
        elif kind == "image_field":
            name = draw(st.sampled_from(sorted(_IMAGE_FIELDS)))
            offset, fmt = _IMAGE_FIELDS[name]
            _overwrite(data, content_offset + offset, fmt, draw(st.integers(0, 65535)))
        elif kind == "header_field":
            name = draw(st.sampled_from(sorted(_HEADER_FIELDS)))
            offset, fmt = _HEADER_FIELDS[name]
            _overwrite(data, offset, fmt, draw(st.integers(0, 2 ** 64 - 1)))
        else:  # announce a huge or sliver image in a small message
            _overwrite(data, content_offset + 6, ">H", draw(st.sampled_from([1, 2, 65535, 20000])))
            _overwrite(data, content_offset + 8, ">H", draw(st.sampled_from([1, 65535, 30000, 5000])))
    if draw(st.booleans()) and len(data) >= HEADER_SIZE:
        body = bytes(data[HEADER_SIZE:])
        data[42:58] = struct.pack(">QQ", len(body), crc64(body))
    return bytes(data)


def check_codec_on(message: bytes) -> str:
    """Feed ``message`` through the codec as the receiver does; returns what happened. Raises AssertionError when
    the contract is broken (any other exception type escapes as it is, which is the bug the fuzzing looks for)."""
    if len(message) < HEADER_SIZE:
        try:
            parse_header(message)
        except IgtlProtocolError:
            return "short"
        raise AssertionError("a short header was accepted")
    try:
        header = parse_header(message[:HEADER_SIZE])
    except IgtlProtocolError as error:
        return f"header:{error.kind}"
    body = bytearray(message[HEADER_SIZE:HEADER_SIZE + header.body_size])
    if len(body) != header.body_size:
        return "truncated"
    try:
        check_crc(header, body)
    except IgtlProtocolError:
        return "crc"
    if header.message_type != "IMAGE":
        return "other-type"
    try:
        pixels = frame_image(decode_image(header, body))
    except (ImageRefused, IgtlProtocolError) as error:
        return f"refused:{getattr(error, 'reason', getattr(error, 'kind', '?'))}"
    assert pixels.ndim in (2, 3), pixels.shape
    height, width = pixels.shape[:2]
    assert max(height, width) <= MAX_SIDE_PX and height * width <= MAX_PIXELS
    assert max(height, width) / min(height, width) <= MAX_ASPECT
    return "frame"


class StreamServer:
    """Sends ``payload`` to each client it accepts, then holds the connection until stop()."""

    def __init__(self, payload: bytes):
        self.payload = payload
        self.listener = socket.socket()
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(8)
        self.listener.settimeout(0.05)
        self.port = self.listener.getsockname()[1]
        self.held, self.stopping = [], threading.Event()
        self.thread = threading.Thread(target=self.run, daemon=True)
        self.thread.start()

    def run(self):
        while not self.stopping.is_set():
            try:
                conn, _ = self.listener.accept()
            except OSError:
                continue
            try:
                conn.sendall(self.payload)
            except OSError:
                pass
            self.held.append(conn)

    def stop(self):
        self.stopping.set()
        self.thread.join(5)
        for conn in self.held:
            conn.close()
        self.listener.close()
