"""ImageSender (what `nerveseg serve` sends segmentations with): many clients, the same labelmap with the frame's
geometry and IGTL timestamp to each, clients leaving without disturbing others, slow clients never blocking the
caller, and pyigtl's client reading what it sends."""

import socket
import time

import numpy as np
import pytest

from NerveSegLogic.frame import ImageGeometry
from NerveSegLogic.stream import ImageReceiver, ImageSender
from NerveSegLogic.stream.codec import HEADER_SIZE, check_crc, decode_image, parse_header

WAIT = 10.0
GEOMETRY = ImageGeometry(spacing=(0.1, 0.12, 1.0), origin=(-12.0, 30.5, 4.0),
                         directions=((0.0, 1.0, 0.0), (-1.0, 0.0, 0.0), (0.0, 0.0, 1.0)))


def labelmap(value=1, shape=(42, 58)):
    out = np.zeros(shape, np.uint8)
    out[5:20, 10:30] = value
    out[25:35, 40:50] = 2
    return out


@pytest.fixture
def sender():
    s = ImageSender(port=0)
    s.start()
    yield s
    s.stop()


def receiver_for(sender, frames):
    r = ImageReceiver(port=sender.port, device_name="NerveSegLabel", on_frame=frames.append,
                      reconnect_min_s=0.01, reconnect_max_s=0.05)
    r.start()
    return r


def test_two_clients_both_receive_the_labelmap_with_the_frames_timestamp_and_geometry(sender):
    got_a, got_b = [], []
    a, b = receiver_for(sender, got_a), receiver_for(sender, got_b)
    try:
        assert sender.wait_for_clients(2, WAIT)
        assert sender.send_labelmap(labelmap(), GEOMETRY, igtl_timestamp=1_712_345_678.987654) == 2
        assert a.wait_for_frames(1, WAIT) and b.wait_for_frames(1, WAIT)
    finally:
        a.stop()
        b.stop()
    for frames in (got_a, got_b):
        frame = frames[0]
        assert frame.device_name == "NerveSegLabel"
        assert frame.igtl_timestamp == 1_712_345_678.987654  # the source frame's timestamp, unchanged
        assert frame.image.dtype == np.uint8
        np.testing.assert_array_equal(frame.image, labelmap())
        np.testing.assert_allclose(frame.geometry.spacing, GEOMETRY.spacing, rtol=1e-6)
        np.testing.assert_allclose(frame.geometry.origin, GEOMETRY.origin, atol=1e-4)
        np.testing.assert_allclose(frame.geometry.direction_matrix(), GEOMETRY.direction_matrix(), atol=1e-6)


def test_a_client_that_disconnects_does_not_disturb_the_other(sender):
    got_a, got_b = [], []
    a, b = receiver_for(sender, got_a), receiver_for(sender, got_b)
    try:
        assert sender.wait_for_clients(2, WAIT)
        sender.send_labelmap(labelmap(1), GEOMETRY, 10.0)
        assert a.wait_for_frames(1, WAIT) and b.wait_for_frames(1, WAIT)
        a.stop()  # client A leaves
        assert sender.wait_for(lambda s: s.clients == 1, WAIT)
        for value in (3, 4, 5):
            assert sender.send_labelmap(labelmap(value), GEOMETRY, 10.0 + value) == 1
            assert b.wait_for_frames(1 + value - 2, WAIT)
        stats = sender.stats()
    finally:
        a.stop()
        b.stop()
    assert [int(f.image[10, 15]) for f in got_b] == [1, 3, 4, 5]
    assert len(got_a) == 1
    assert stats.clients_accepted == 2 and stats.clients_dropped == 1 and stats.clients == 1


def test_a_client_that_never_reads_does_not_block_the_caller_and_loses_old_messages(sender):
    stuck = socket.create_connection(("127.0.0.1", sender.port))  # connects, never reads
    stuck.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    try:
        assert sender.wait_for_clients(1, WAIT)
        big = np.zeros((1000, 1000), np.uint8)  # 1 MB per message: the socket buffers fill at once
        started = time.monotonic()
        for index in range(40):
            sender.send_labelmap(big, GEOMETRY, float(index))
        elapsed = time.monotonic() - started
        stats = sender.stats()
    finally:
        stuck.close()
    # 40 MB could never have been written to a client that reads nothing: the caller returned anyway and
    # the client's older messages were dropped (newest wins), not queued.
    assert stats.messages_dropped >= 30
    assert stats.messages_queued == 40 and stats.messages_written + stats.messages_dropped <= 40
    assert elapsed < 5.0, f"sending to a stuck client blocked the caller for {elapsed:.1f} s"


def test_a_backlog_keeps_the_newest_messages_in_order_for_a_client_that_reads_late():
    sender = ImageSender(port=0, backlog=3)
    sender.start()
    late = socket.socket()
    late.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    late.connect(("127.0.0.1", sender.port))
    try:
        assert sender.wait_for_clients(1, WAIT)
        big = np.zeros((3000, 3000), np.uint8)  # 9 MB: the first message fills the socket buffers and blocks
        for index in range(8):
            sender.send_labelmap(big, GEOMETRY, float(index))
        late.settimeout(WAIT)
        received = []
        while len(received) < 8 and not (received and received[-1] == 7.0):
            header = parse_header(_read_exactly(late, HEADER_SIZE), max_body_bytes=16 * 1024 * 1024)
            _read_exactly(late, header.body_size)
            received.append(header.timestamp)
        stats = sender.stats()
    finally:
        late.close()
        sender.stop()
    # The writer was busy with the first message (or about to take it) while the others came: the backlog kept the
    # newest three, in order, and dropped the ones between.
    assert received[-3:] == [5.0, 6.0, 7.0]
    assert len(received) in (3, 4) and received == sorted(received)
    assert stats.messages_dropped == 8 - len(received)


def test_a_client_that_stops_reading_is_dropped_after_the_send_timeout():
    sender = ImageSender(port=0, client_send_timeout_s=0.3)
    sender.start()
    stuck = socket.create_connection(("127.0.0.1", sender.port))
    stuck.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    try:
        assert sender.wait_for_clients(1, WAIT)
        for index in range(3):
            sender.send_labelmap(np.zeros((2000, 2000), np.uint8), GEOMETRY, float(index))
        assert sender.wait_for(lambda s: s.clients == 0, WAIT)
        assert sender.stats().clients_dropped == 1
    finally:
        stuck.close()
        sender.stop()


def test_labelmaps_must_be_2d_uint8(sender):
    with pytest.raises(ValueError, match="uint8"):
        sender.send_labelmap(np.zeros((4, 4), np.int32), GEOMETRY, 0.0)
    with pytest.raises(ValueError, match="2D"):
        sender.send_labelmap(np.zeros((4, 4, 3), np.uint8), GEOMETRY, 0.0)


def test_start_and_stop_are_idempotent_and_a_restart_listens_again():
    sender = ImageSender(port=0)
    sender.stop()  # stopping a sender never started is fine
    sender.start()
    sender.start()
    first_port = sender.port
    sender.stop()
    sender.stop()
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", first_port), timeout=2).close()
    sender.start()
    try:
        got = []
        r = receiver_for(sender, got)
        try:
            assert sender.wait_for_clients(1, WAIT)
            sender.send_labelmap(labelmap(), GEOMETRY, 1.0)
            assert r.wait_for_frames(1, WAIT)
        finally:
            r.stop()
    finally:
        sender.stop()


def test_pyigtl_client_reads_what_the_sender_sends(sender):
    import pyigtl

    client = pyigtl.OpenIGTLinkClient(host="127.0.0.1", port=sender.port)
    try:
        assert sender.wait_for_clients(1, WAIT)
        sender.send_labelmap(labelmap(), GEOMETRY, igtl_timestamp=1234.5)
        message = client.wait_for_message("NerveSegLabel", timeout=WAIT)
    finally:
        client.stop()
    assert message is not None, "pyigtl received nothing"
    assert message.message_type == "IMAGE" and message.device_name == "NerveSegLabel"
    assert message.timestamp == pytest.approx(1234.5)
    np.testing.assert_array_equal(message.image[0], labelmap())  # pyigtl's axes: (k, j, i)
    assert message.world_coordinate_system == "ras"
    np.testing.assert_allclose(message.ijk_to_world_matrix, GEOMETRY.ijk_to_ras(), atol=1e-4)


def test_raw_bytes_on_the_wire_are_one_well_formed_message_per_send(sender):
    with socket.create_connection(("127.0.0.1", sender.port)) as client:
        client.settimeout(WAIT)
        assert sender.wait_for_clients(1, WAIT)
        sender.send_labelmap(labelmap(), GEOMETRY, 5.0)
        header = parse_header(_read_exactly(client, HEADER_SIZE))
        body = _read_exactly(client, header.body_size)
    check_crc(header, body)
    assert header.version == 1 and header.message_type == "IMAGE"
    np.testing.assert_array_equal(decode_image(header, body).pixels[0, :, :, 0], labelmap())


def _read_exactly(sock, size):
    data = bytearray()
    while len(data) < size:
        chunk = sock.recv(size - len(data))
        assert chunk, "connection closed early"
        data += chunk
    return bytes(data)


class _PartialSocket:
    """Takes at most ``step`` bytes per sendmsg call, as a socket with little room does."""

    def __init__(self, step):
        self.step, self.data, self.calls = step, bytearray(), 0

    def sendmsg(self, buffers):
        self.calls += 1
        taken = b"".join(bytes(b) for b in buffers)[:self.step]
        self.data += taken
        return len(taken)


class _NoSendmsgSocket:
    """A socket without sendmsg (Windows): parts go out with one sendall each."""

    def __init__(self):
        self.data = bytearray()

    def sendall(self, data):
        self.data += bytes(data)


def test_a_message_in_parts_is_written_whole_however_little_the_socket_takes_at_a_time():
    from NerveSegLogic.stream.codec import encode_frame_parts
    from NerveSegLogic.stream.sender import message_size, write_message

    parts = encode_frame_parts(labelmap(shape=(30, 41)), GEOMETRY, "NerveSegLabel", 5.0)
    whole = bytes(parts[0]) + bytes(parts[1])
    assert message_size(parts) == len(whole)
    for step in (1, 7, 130, 131, len(whole)):
        sock = _PartialSocket(step)
        write_message(sock, parts)
        assert bytes(sock.data) == whole and sock.calls == -(-len(whole) // step)
    plain = _NoSendmsgSocket()
    write_message(plain, parts)
    assert bytes(plain.data) == whole


def test_labelmaps_sent_without_a_copy_arrive_as_sent_and_a_copied_one_does_not_see_later_writes(sender):
    """copy=False (serve: a new labelmap per frame) sends the array's own pixels; the default copies them, so the
    caller may write to its array as soon as send_labelmap returns."""
    got = []
    client = receiver_for(sender, got)
    try:
        assert sender.wait_for_clients(1, WAIT)
        big = np.random.default_rng(1).integers(0, 3, (420, 580), dtype=np.uint8)
        assert sender.send_labelmap(big, GEOMETRY, 1.0, copy=False) == 1
        assert client.wait_for_frames(1, WAIT)
        reused = labelmap(1)
        sender.send_labelmap(reused, GEOMETRY, 2.0)
        reused[:] = 7  # at once: the message must already hold its own copy
        assert client.wait_for_frames(2, WAIT)
        assert sender.flush(WAIT)
        stats = sender.stats()
    finally:
        client.stop()
    np.testing.assert_array_equal(got[0].image, big)
    np.testing.assert_array_equal(got[1].image, labelmap(1))
    assert stats.messages_written == 2 and stats.bytes_written == 2 * HEADER_SIZE + 2 * 72 + big.size + reused.size


def test_a_labelmap_with_metadata_is_a_version_2_message_that_pyigtl_and_our_receiver_read(sender):
    """``nerveseg serve`` sends each class's presence and state as IGTL metadata (header version 2): byte for byte
    what the codec's general encoder makes, with or without a copy of the pixels; pyigtl (an independent reader of
    OpenIGTLink 3) and our receiver read the labelmap and the metadata; without metadata the message stays version 1
    (which clients built on OpenIGTLink 2 or older can read)."""
    import pyigtl

    from NerveSegLogic.stream import codec
    from NerveSegLogic.stream.sender import confidence_metadata, encode_labelmap, encode_labelmap_parts

    meta = confidence_metadata({"nerve": 0.93, "blood_vessel": 0.4123}, {"nerve": "shown", "blood_vessel": "uncertain"})
    assert meta == {"NerveSeg.presence.nerve": "0.930", "NerveSeg.presence.blood_vessel": "0.412",
                    "NerveSeg.state.nerve": "shown", "NerveSeg.state.blood_vessel": "uncertain"}
    expected = codec.encode_image(labelmap(), GEOMETRY, "NerveSegLabel", 1234.5, header_version=2, metadata=meta)
    assert b"".join(bytes(p) for p in encode_labelmap_parts(labelmap(), GEOMETRY, "NerveSegLabel", 1234.5, meta)) \
        == expected == bytes(encode_labelmap(labelmap(), GEOMETRY, "NerveSegLabel", 1234.5, meta))
    assert bytes(encode_labelmap(labelmap(), GEOMETRY, "NerveSegLabel", 1234.5, {})) == \
        codec.encode_image(labelmap(), GEOMETRY, "NerveSegLabel", 1234.5)  # no metadata: version 1 as before

    frames = []
    ours = receiver_for(sender, frames)
    client = pyigtl.OpenIGTLinkClient(host="127.0.0.1", port=sender.port)
    try:
        assert sender.wait_for_clients(2, WAIT)
        sender.send_labelmap(labelmap(), GEOMETRY, igtl_timestamp=1234.5, copy=False, metadata=meta)
        message = client.wait_for_message("NerveSegLabel", timeout=WAIT)
        assert ours.wait_for_frames(1, WAIT)
    finally:
        client.stop()
        ours.stop()
    assert message is not None, "pyigtl received nothing"
    np.testing.assert_array_equal(message.image[0], labelmap())
    assert message.metadata == meta
    assert frames[0].metadata == meta
    np.testing.assert_array_equal(frames[0].image, labelmap())
