"""Hostile input on the live path: tiny messages that announce huge or absurdly shaped images, a server that goes
silent, clients that are not on the allow-list. Each is refused (and counted) before it costs memory or time."""

import socket
import struct
import time
import tracemalloc

import numpy as np
import pytest

from NerveSegLogic.frame import ImageGeometry
from NerveSegLogic.image_bounds import MAX_ASPECT, MAX_SIDE_PX, ImageTooLarge, check_image_size
from NerveSegLogic.inference import preprocess as pp
from NerveSegLogic.stream import ImageReceiver
from NerveSegLogic.stream.codec import (ImageRefused, decode_image, encode_image, parse_header, HEADER_SIZE)

WAIT = 10.0
GEOMETRY = ImageGeometry(spacing=(0.2, 0.2, 1.0))


def split(message: bytes):
    header = parse_header(message[:HEADER_SIZE])
    return header, bytearray(message[HEADER_SIZE:])


def test_one_column_of_65535_rows_is_refused_on_decoding_with_the_aspect_reason():
    header, body = split(encode_image(np.zeros((65535, 1), np.uint8), GEOMETRY))
    with pytest.raises(ImageRefused) as caught:
        decode_image(header, body)
    assert caught.value.reason == "size"
    assert "65535" in str(caught.value)


@pytest.mark.parametrize("shape, reason", [((20000, 1), "size"), ((1, 5000), "aspect"), ((100, 2000), "aspect"),
                                          ((9000, 9000), "size")])
def test_bounds_name_what_was_broken(shape, reason):
    with pytest.raises(ImageTooLarge) as caught:
        check_image_size(*shape, what="frame.png")
    assert caught.value.reason == reason and "frame.png" in str(caught.value)


def test_ordinary_ultrasound_shapes_pass_the_bounds():
    for height, width in ((480, 640), (1080, 1920), (1080, 3840), (256, 256), (64, 16)):
        check_image_size(height, width)


def test_preprocess_refuses_a_1_by_65535_frame_before_allocating_the_scaled_image():
    spec = pp.InputSpec(height=256, width=256)
    image = np.zeros((65535, 1), np.uint8)
    tracemalloc.start()
    try:
        with pytest.raises(ValueError, match="65535"):
            pp.preprocess(image, spec)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 5 * 1024 * 1024  # before the fix: about 4 GB (65535 * 256 rows of 256 float32)


def test_preprocess_still_takes_a_wide_frame_within_the_aspect_bound():
    spec = pp.InputSpec(height=64, width=64)
    width = int(40 * MAX_ASPECT)
    tensor, placement = pp.preprocess(np.zeros((40, width), np.uint8), spec)
    assert tensor.shape == (1, 64, 64) and placement.src_w == width


def serve_once(messages):
    """A one-shot server that sends ``messages`` to its first client and holds the connection open."""
    import threading

    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)
    held = []

    def run():
        conn, _ = listener.accept()
        for m in messages:
            conn.sendall(m)
        held.append(conn)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return listener, held


def test_receiver_refuses_and_counts_slivers_and_takes_the_next_frame():
    sliver = encode_image(np.zeros((65535, 1), np.uint8), GEOMETRY, device_name="Image_Reference")
    thin = encode_image(np.zeros((1, 5000), np.uint8), GEOMETRY, device_name="Image_Reference")
    good = encode_image(np.full((40, 60), 9, np.uint8), GEOMETRY, device_name="Image_Reference")
    listener, held = serve_once([sliver, thin, good])
    receiver = ImageReceiver(port=listener.getsockname()[1])
    try:
        receiver.start()
        assert receiver.wait_for_frames(1, WAIT)
        stats = receiver.stats()
        frame = receiver.frames.take(timeout=1.0)
    finally:
        receiver.stop()
        for c in held:
            c.close()
        listener.close()
    assert stats.refused == {"size": 1, "aspect": 1} and stats.connects == 1
    assert "aspect" in stats.last_refusal
    assert frame is not None and int(frame.image[0, 0]) == 9
