"""Hostile input on the live path: tiny messages that announce huge or absurdly shaped images, a server that goes
silent, clients that are not on the allow-list. Each is refused (and counted) before it costs memory or time."""

import socket
import tracemalloc

import numpy as np
import pytest

from NerveSegLogic.frame import ImageGeometry
from NerveSegLogic.imaging.bounds import MAX_ASPECT, ImageTooLarge, check_image_size
from NerveSegLogic.imaging import placement as pp
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


def test_a_server_that_accepts_and_sends_nothing_is_reported_and_reconnected_after_the_idle_timeout():
    listener, held = serve_once([])  # accepts, then silence; the second connection is never accepted
    receiver = ImageReceiver(port=listener.getsockname()[1], idle_timeout_s=0.3, reconnect_min_s=0.05,
                             reconnect_max_s=0.1)
    try:
        receiver.start()
        assert receiver.wait_for(lambda s: s.idle_timeouts >= 1 and s.connect_attempts >= 2, WAIT)
        stats = receiver.stats()
    finally:
        receiver.stop()
        for c in held:
            c.close()
        listener.close()
    assert stats.disconnects >= 1 and "no message for 0.3 s" in stats.last_error
    assert stats.truncated == 0


def test_the_receiver_sets_tcp_keepalive_on_its_connection():
    listener, held = serve_once([])
    receiver = ImageReceiver(port=listener.getsockname()[1], keepalive_idle_s=4)
    sockets = []
    original = receiver._keepalive

    def spy(sock):
        original(sock)
        sockets.append((sock.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE),
                        sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE)
                        if hasattr(socket, "TCP_KEEPIDLE") else 4))

    receiver._keepalive = spy
    try:
        receiver.start()
        assert receiver.connected.wait(WAIT)
    finally:
        receiver.stop()
        for c in held:
            c.close()
        listener.close()
    assert sockets and sockets[0][0] != 0 and sockets[0][1] == 4


@pytest.mark.parametrize("bad", [float("nan"), -1.0, 0.0, float("inf")])
def test_receiver_timeouts_must_be_positive_finite_seconds(bad):
    with pytest.raises(ValueError, match="idle_timeout_s"):
        ImageReceiver(idle_timeout_s=bad)


def test_sender_allow_list_refuses_other_addresses_and_counts_them():
    from NerveSegLogic.stream.sender import ImageSender

    sender = ImageSender(allowed_clients="10.11.12.13,192.168.0.0/16")
    sender.start()
    try:
        with socket.create_connection(("127.0.0.1", sender.port), timeout=WAIT) as client:
            client.settimeout(WAIT)
            assert client.recv(1) == b""  # closed at once
        assert sender.wait_for(lambda s: s.clients_refused == 1, WAIT)
        assert sender.stats().clients_accepted == 0
    finally:
        sender.stop()
    allowed = ImageSender(allowed_clients=["127.0.0.0/8"])
    allowed.start()
    try:
        with socket.create_connection(("127.0.0.1", allowed.port), timeout=WAIT):
            assert allowed.wait_for_clients(1, WAIT)
    finally:
        allowed.stop()


def test_a_bad_allow_list_entry_is_named():
    from NerveSegLogic.stream.sender import parse_allow_list

    with pytest.raises(ValueError, match="'10.0.0.300'"):
        parse_allow_list("10.0.0.1,10.0.0.300")


def test_serve_and_replay_listen_on_this_machine_only_unless_told_otherwise():
    from NerveSegLogic.cli import build_parser

    parser = build_parser()
    serve = parser.parse_args(["serve", "--input", "127.0.0.1:18944"])
    replay = parser.parse_args(["replay"])
    assert serve.host == "127.0.0.1" and replay.host == "127.0.0.1"
    assert serve.input_timeout == 10.0 and serve.allow is None
    opened = parser.parse_args(["serve", "--input", "h:1", "--host", "0.0.0.0", "--allow", "10.0.0.5",
                                "--input-timeout", "2.5"])
    assert (opened.host, opened.allow, opened.input_timeout) == ("0.0.0.0", "10.0.0.5", 2.5)
    from NerveSegLogic.live.serve import ServeOptions

    assert ServeOptions(input_host="h", input_port=1).host == "127.0.0.1"


@pytest.mark.parametrize("bad", ["nan", "-3", "inf", "soon"])
def test_serve_input_timeout_must_be_a_positive_number(bad, capsys):
    from NerveSegLogic.cli import build_parser

    with pytest.raises(SystemExit):
        build_parser().parse_args(["serve", "--input", "h:1", "--input-timeout", bad])
    assert "positive number of seconds" in capsys.readouterr().err


@pytest.mark.parametrize("argv, words", [
    (["replay", "--spacing", "nan"], "positive finite number"),
    (["replay", "--fps", "inf"], "positive finite number"),
    (["replay", "--port", "70000"], "TCP port 0..65535"),
    (["serve", "--input", "h:1", "--port", "70000"], "TCP port 0..65535"),
])
def test_stream_commands_refuse_numbers_outside_their_range_at_parse_time(argv, words, capsys):
    from NerveSegLogic.cli import build_parser

    with pytest.raises(SystemExit):
        build_parser().parse_args(argv)
    assert words in capsys.readouterr().err


def test_a_sender_port_outside_the_range_is_a_value_error_not_an_overflow():
    from NerveSegLogic.stream.sender import ImageSender

    with pytest.raises(ValueError, match="0..65535"):
        ImageSender(port=70000)
