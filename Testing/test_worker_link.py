"""The link between Slicer's process and its worker: messages round-trip without a socket, sizes are checked
before allocation, reading never blocks, a waiting frame is replaced by a newer one, and the worker runs with
Slicer's PythonSlicer inside Slicer."""

from __future__ import annotations

import os
import socket
import struct
import sys
import time
from types import SimpleNamespace

import numpy as np
import pytest

from NerveSegLogic.frame import ImageGeometry
from NerveSegLogic.live.worker import link
from NerveSegLogic.live.worker.parent import worker_python


def test_a_frame_and_its_labelmap_round_trip_in_one_message():
    image = np.arange(12, dtype=np.uint8).reshape(3, 4)
    labels = (image % 3).astype(np.uint8)
    data = b"".join(bytes(b) for b in link.encode("result", {"frame_id": 7}, [image, labels]))
    reader = link.MessageReader()
    assert reader.feed(data[:10]) == []  # a partial message waits for the rest
    (message,) = reader.feed(data[10:])
    assert message.kind == "result" and message.header["frame_id"] == 7
    assert np.array_equal(message.arrays[0], image) and np.array_equal(message.arrays[1], labels)
    assert reader.pending_bytes == 0


def test_sizes_over_the_limit_are_refused_before_anything_is_allocated():
    huge = struct.pack("<4sIQ", link.MAGIC, 10, link.MAX_PAYLOAD_BYTES + 1)
    with pytest.raises(link.LinkError, match="too large"):
        link.MessageReader().feed(huge)
    with pytest.raises(link.LinkError, match="magic"):
        link.MessageReader().feed(b"XXXX" + b"\0" * 12)
    header = b'{"kind":"result","arrays":[["uint8",[100,100]]]}'
    short = struct.pack("<4sIQ", link.MAGIC, len(header), 10) + header + b"\0" * 10
    with pytest.raises(link.LinkError, match="shorter than its arrays"):
        link.MessageReader().feed(short)


def test_reading_an_empty_socket_returns_at_once_and_a_closed_one_says_so():
    a, b = socket.socketpair()
    a.setblocking(False)
    reader = link.MessageReader()
    start = time.perf_counter()
    assert reader.read(a) == []
    assert time.perf_counter() - start < 0.05
    link.send(b, "status", {"received": 3})
    b.close()
    with pytest.raises(link.LinkClosed):
        reader.read(a)
    a.close()


def test_a_frame_waiting_to_be_sent_is_replaced_by_a_newer_one():
    a, b = socket.socketpair()
    a.setblocking(False)
    a.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    writer = link.MessageWriter(a)
    frames = [np.full((300, 300), k, np.uint8) for k in range(4)]
    for frame in frames:
        writer.offer(link.encode("frame", {"k": int(frame[0, 0])}, [frame]))
    assert writer.replaced >= 1  # the socket could not take them all at once: the waiting one was replaced
    reader = link.MessageReader()
    got = []
    b.setblocking(False)
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and (not got or got[-1].header["k"] != 3):
        writer.flush()
        try:
            got += reader.read(b)
        except link.LinkClosed:
            break
    assert got[-1].header["k"] == 3  # the newest always arrives
    assert [m.header["k"] for m in got] == sorted(m.header["k"] for m in got)
    a.close()
    b.close()


def test_geometry_survives_the_link():
    geometry = ImageGeometry(spacing=(0.1, 0.2, 1.0), origin=(-3.0, 4.0, 5.0),
                             directions=((-1.0, 0.0, 0.0), (0.0, -1.0, 0.0), (0.0, 0.0, 1.0)))
    assert link.geometry_from_json(link.geometry_to_json(geometry)) == geometry


def test_inside_slicer_the_worker_runs_with_pythonslicer_from_slicers_bin_folder(tmp_path, monkeypatch):
    bin_dir = tmp_path / "Slicer" / "bin"
    bin_dir.mkdir(parents=True)
    executable = bin_dir / ("PythonSlicer.exe" if os.name == "nt" else "PythonSlicer")
    executable.write_text("#!/bin/sh\n")
    executable.chmod(0o755)
    monkeypatch.delenv("NERVESEG_WORKER_PYTHON", raising=False)
    monkeypatch.setenv("PATH", "")
    monkeypatch.setitem(sys.modules, "slicer", SimpleNamespace(app=SimpleNamespace(slicerHome=str(tmp_path / "Slicer"))))
    assert worker_python() == str(executable)
    monkeypatch.setitem(sys.modules, "slicer", SimpleNamespace(app=SimpleNamespace(slicerHome=str(tmp_path / "none"))))
    monkeypatch.setattr(sys, "executable", str(tmp_path / "none" / "SlicerApp-real"))
    with pytest.raises(RuntimeError, match="NERVESEG_WORKER_PYTHON"):
        worker_python()
    monkeypatch.setenv("NERVESEG_WORKER_PYTHON", "/opt/custom/python")
    assert worker_python() == "/opt/custom/python"


def test_outside_slicer_the_worker_runs_with_this_python(monkeypatch):
    monkeypatch.delenv("NERVESEG_WORKER_PYTHON", raising=False)
    import slicer

    assert not hasattr(slicer, "app")  # slicer-core: MRML without the application
    assert worker_python() == sys.executable


def test_a_message_that_arrives_in_the_same_read_as_the_hello_is_not_lost():
    """A worker that fails at once sends its hello and its error back to back; the error must reach the status."""
    from NerveSegLogic.live.worker import link
    from NerveSegLogic.live.worker.parent import WorkerProcess

    process = WorkerProcess([])
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)
    listener.setblocking(False)
    process._listener, process._token = listener, "t0ken"
    client = socket.create_connection(listener.getsockname())
    try:
        client.sendall(b"".join(link.encode("hello", {"token": "t0ken"}) + link.encode("error", {"message": "boom"})))
        messages, deadline = [], time.monotonic() + 5
        while not messages and time.monotonic() < deadline:
            messages = process.read()
            time.sleep(0.01)
        assert process.hello["token"] == "t0ken"
        assert [(m.kind, m.header.get("message")) for m in messages] == [("error", "boom")]
    finally:
        client.close()
        process._close()
