"""The link between Slicer's process and its segmentation worker: framed messages over a loopback socket.

One message is ``MAGIC | header length (uint32) | payload length (uint64) | header (JSON) | payload``, little
endian. The header says what the message is (``kind``) and how to read the payload (array shapes and dtypes);
the payload carries raw pixels, so a 580x420 frame and its labelmap cross in one ``sendall`` without pickling.

Reading never blocks: :class:`MessageReader` takes whatever bytes the socket has (a non-blocking ``recv_into``)
and hands out the messages completed so far, so the GUI's timer tick can read the link between two frames of the
event loop. Sizes are checked before anything is allocated.

Internal to NerveSeg (both ends are this package), which is why it is not OpenIGTLink: the frame, its labelmap,
its stage times and the regions of each class travel together, and a message can never pair a mask with another
frame.
"""

from __future__ import annotations

import json
import socket
import struct
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np

from ...frame import ImageGeometry

MAGIC = b"NSW1"
_PREFIX = struct.Struct("<4sIQ")
MAX_HEADER_BYTES = 1 << 20
#: A frame of 4096 x 4096 16-bit pixels and its labelmap fit; anything larger is refused before allocation.
MAX_PAYLOAD_BYTES = 64 << 20
_DTYPES = {"uint8", "uint16", "int16", "float32"}
_RECV_CHUNK = 1 << 20


class LinkError(RuntimeError):
    """The peer sent something that is not a well-formed message (the link is then closed)."""


class LinkClosed(ConnectionError):
    """The peer closed the link."""


def encode(kind: str, header: Optional[Dict[str, Any]] = None, arrays: Sequence[np.ndarray] = ()) -> List[bytes]:
    """The buffers of one message (send them in order, e.g. with ``sendall(b''.join(...))``).

    ``arrays`` go into the payload in order; their shapes and dtypes are added to the header as ``arrays``.
    """
    head = dict(header or {})
    head["kind"] = kind
    specs = []
    buffers = []
    for array in arrays:
        array = np.ascontiguousarray(array)
        if array.dtype.name not in _DTYPES:
            raise ValueError(f"link arrays must be one of {sorted(_DTYPES)}, got {array.dtype}")
        specs.append([array.dtype.name, list(array.shape)])
        buffers.append(memoryview(array).cast("B"))
    head["arrays"] = specs
    text = json.dumps(head, separators=(",", ":")).encode("utf-8")
    payload_len = sum(len(b) for b in buffers)
    return [_PREFIX.pack(MAGIC, len(text), payload_len), text, *buffers]


def send(sock: socket.socket, kind: str, header: Optional[Dict[str, Any]] = None,
         arrays: Sequence[np.ndarray] = ()) -> None:
    """Send one message on a blocking socket (the worker's side)."""
    for buffer in encode(kind, header, arrays):
        sock.sendall(buffer)


class Message:
    """One received message: ``kind``, ``header`` (dict) and ``arrays`` (numpy arrays, owning their memory)."""

    __slots__ = ("kind", "header", "arrays")

    def __init__(self, kind: str, header: Dict[str, Any], arrays: List[np.ndarray]):
        self.kind, self.header, self.arrays = kind, header, arrays

    def __repr__(self) -> str:
        return f"Message({self.kind!r}, arrays={[a.shape for a in self.arrays]})"


def _decode(header_bytes: bytes, payload: memoryview) -> Message:
    try:
        header = json.loads(header_bytes.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise LinkError(f"message header is not JSON: {error}") from None
    if not isinstance(header, dict) or not isinstance(header.get("kind"), str):
        raise LinkError("message header has no 'kind'")
    arrays = []
    offset = 0
    for spec in header.get("arrays") or []:
        try:
            dtype_name, shape = spec
            dtype = np.dtype(dtype_name)
            shape = tuple(int(n) for n in shape)
        except (TypeError, ValueError):
            raise LinkError(f"bad array spec {spec!r}") from None
        if dtype_name not in _DTYPES or any(n < 0 for n in shape):
            raise LinkError(f"bad array spec {spec!r}")
        size = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
        if offset + size > len(payload):
            raise LinkError(f"payload of {len(payload)} bytes is shorter than its arrays ({offset + size})")
        arrays.append(np.frombuffer(payload[offset:offset + size], dtype=dtype).reshape(shape).copy())
        offset += size
    if offset != len(payload):
        raise LinkError(f"payload of {len(payload)} bytes has {len(payload) - offset} bytes no array claims")
    return Message(header["kind"], header, arrays)


class MessageReader:
    """Accumulates bytes from a non-blocking socket and yields whole messages; never blocks.

    ``read(sock)`` returns the messages completed by whatever the socket had; raises :class:`LinkClosed` when the
    peer closed it and :class:`LinkError` for malformed data (a size over the limits included, checked before
    any allocation).
    """

    def __init__(self, max_payload: int = MAX_PAYLOAD_BYTES):
        self._buffer = bytearray()
        self.max_payload = int(max_payload)
        self.bytes_read = 0

    def read(self, sock: socket.socket, max_bytes: int = 64 << 20) -> List[Message]:
        """Read what is available now (up to ``max_bytes``, so one tick cannot be held up by a flood)."""
        got = 0
        closed = False
        while got < max_bytes:
            try:
                chunk = sock.recv(_RECV_CHUNK)
            except (BlockingIOError, InterruptedError):
                break
            except socket.timeout:
                break
            if not chunk:
                closed = True
                break
            self._buffer += chunk
            got += len(chunk)
        self.bytes_read += got
        messages = self.parse()
        if closed:
            raise LinkClosed("the worker closed the link")
        return messages

    def feed(self, data: bytes) -> List[Message]:
        """Add bytes (from anywhere) and return the messages they completed."""
        self._buffer += data
        return self.parse()

    def parse(self) -> List[Message]:
        out = []
        while len(self._buffer) >= _PREFIX.size:
            magic, header_len, payload_len = _PREFIX.unpack_from(self._buffer, 0)
            if magic != MAGIC:
                raise LinkError(f"bad message magic {bytes(magic)!r}; expected {MAGIC!r}")
            if header_len > MAX_HEADER_BYTES or payload_len > self.max_payload:
                raise LinkError(f"message too large: header {header_len} bytes (limit {MAX_HEADER_BYTES}), payload "
                                f"{payload_len} bytes (limit {self.max_payload})")
            total = _PREFIX.size + header_len + payload_len
            if len(self._buffer) < total:
                break
            view = memoryview(self._buffer)
            try:
                header_bytes = bytes(view[_PREFIX.size:_PREFIX.size + header_len])
                message = _decode(header_bytes, view[_PREFIX.size + header_len:total])
            finally:
                view.release()
            del self._buffer[:total]
            out.append(message)
        return out

    @property
    def pending_bytes(self) -> int:
        return len(self._buffer)


class MessageWriter:
    """Sends messages on a non-blocking socket without ever blocking: what the socket does not take now waits in
    a buffer and goes out on the next :meth:`flush`. ``offer`` of a *replaceable* message (a frame for the worker)
    replaces one still waiting in full, so a slow worker gets the newest frame, never a backlog."""

    def __init__(self, sock: socket.socket):
        self.sock = sock
        self._sending = bytearray()  # a message partly sent: must go out whole
        self._waiting: Optional[bytes] = None  # a whole message not started yet
        self.replaced = 0

    def offer(self, buffers: Sequence[bytes], replaceable: bool = True) -> None:
        data = b"".join(bytes(b) for b in buffers)
        if self._waiting is not None and replaceable:
            self.replaced += 1
            self._waiting = data
        elif self._waiting is not None:
            self._waiting += data
        else:
            self._waiting = data
        self.flush()

    def flush(self) -> None:
        """Send as much as the socket takes now. Raises LinkClosed when the peer is gone."""
        while True:
            if not self._sending:
                if self._waiting is None:
                    return
                self._sending = bytearray(self._waiting)
                self._waiting = None
            try:
                sent = self.sock.send(self._sending)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as error:
                raise LinkClosed(f"the worker link failed: {error}") from None
            del self._sending[:sent]

    @property
    def idle(self) -> bool:
        return not self._sending and self._waiting is None


def geometry_to_json(geometry) -> Dict[str, Any]:
    return {"spacing": list(geometry.spacing), "origin": list(geometry.origin),
            "directions": [list(row) for row in geometry.directions]}


def geometry_from_json(data: Dict[str, Any]):
    try:
        return ImageGeometry(spacing=tuple(float(v) for v in data["spacing"]),
                             origin=tuple(float(v) for v in data["origin"]),
                             directions=tuple(tuple(float(v) for v in row) for row in data["directions"]))
    except (KeyError, TypeError) as error:
        raise LinkError(f"bad geometry in message: {error}") from None


def frame_stage_offsets(frame) -> Tuple[float, Dict[str, float]]:
    """``(received perf time, {stage: seconds after received})`` of a frame's stamps, to send across processes."""
    stamps = dict(frame.timestamps)
    received = stamps.get("received")
    if received is None:
        return 0.0, {}
    return received, {stage: value - received for stage, value in stamps.items()}
