"""Fuzzing the OpenIGTLink codec and receiver (hypothesis, deterministic and brief here; benchmarks/reliability/fuzz_igtl.py runs
the same for longer): mutated messages raise only the codec's own errors, accepted frames are inside the bounds,
and a receiver fed mutated streams stays alive, counts what it refused and stops promptly."""

import time

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from NerveSegLogic.frame import ImageGeometry
from NerveSegLogic.stream import ImageReceiver
from NerveSegLogic.stream.codec import HEADER_SIZE, IgtlProtocolError, encode_image, parse_header
from NerveSegLogic.testing.igtl_fuzz import StreamServer, check_codec_on, mutated_messages

BRIEF = settings(max_examples=100, derandomize=True, deadline=None, database=None,
                 suppress_health_check=[HealthCheck.too_slow])


@BRIEF
@given(st.binary(min_size=HEADER_SIZE, max_size=HEADER_SIZE))
def test_any_58_bytes_parse_as_a_header_or_raise_the_protocol_error(raw):
    try:
        parse_header(raw)
    except IgtlProtocolError:
        pass


@BRIEF
@given(mutated_messages())
def test_mutated_image_messages_raise_only_the_codecs_errors_and_accepted_frames_are_bounded(message):
    check_codec_on(message)


GOOD = encode_image(np.full((16, 20), 5, np.uint8), ImageGeometry(), device_name="Image_Reference")


@settings(max_examples=12, derandomize=True, deadline=None, database=None,
          suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(mutated_messages(), min_size=1, max_size=4))
def test_a_receiver_fed_mutated_streams_stays_alive_counts_and_stops_promptly(messages):
    server = StreamServer(b"".join(messages) + GOOD)
    receiver = ImageReceiver(port=server.port, reconnect_min_s=0.01, reconnect_max_s=0.02, stall_timeout_s=0.2,
                             idle_timeout_s=0.3)
    try:
        receiver.start()
        # either the good frame arrives (the garbage was skipped or refused) or the connection is reopened
        receiver.wait_for(lambda s: s.frames >= 1 or s.disconnects >= 1, 5.0)
        assert receiver.running, receiver.stats().last_error
    finally:
        started = time.perf_counter()
        receiver.stop()
        stopped_in = time.perf_counter() - started
        server.stop()
    stats = receiver.stats()
    assert not stats.last_error.startswith("receiver stopped"), stats.last_error
    assert stopped_in < 2.0
    assert stats.frames + sum(stats.refused.values()) + stats.crc_errors + stats.disconnects + \
        sum(stats.ignored.values()) + stats.wrong_device >= 1
