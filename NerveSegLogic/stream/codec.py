"""OpenIGTLink message codec: bytes in, bytes out, no sockets.

Wire format (OpenIGTLink protocol version 2/3, all numbers big-endian):

- Header, 58 bytes: header version (uint16; 1 for protocol v1/v2, 2 adds the extended header and metadata of v3),
  message type (12 ASCII bytes), device name (20 bytes), timestamp (uint32 seconds + uint32 fraction of a second,
  32.32 fixed point since the Unix epoch), body size (uint64), CRC-64 ECMA-182 of the body (uint64).
- Body of a header version 2 message: extended header (12 bytes: its size, metadata header size, metadata body size,
  message id), then the content, then the metadata.
- IMAGE content: image header version (uint16), components (uint8), scalar type (uint8), endian of the pixels
  (uint8; 1 big, 2 little), coordinate system (uint8; 1 RAS, 2 LPS), size i, j, k (3 x uint16), the 12 float32
  ``tx ty tz sx sy sz nx ny nz px py pz`` (i, j, k axis directions times the spacing, then the position of the
  image CENTRE), subvolume offset and size (6 x uint16), then the pixels (i fastest, components interleaved).

NerveSeg's :class:`~NerveSegLogic.frame.ImageGeometry` puts its origin at the centre of pixel 0, as Slicer does;
:func:`igtl_matrix_to_geometry` and :func:`geometry_to_igtl_matrix` convert between the two, with the
``(size - 1) / 2`` half-extent that Slicer's OpenIGTLinkIF and OpenIGTLinkIO use.

Decisions kept here so the receiver, the sender and the replay server agree:

- Pixel types accepted as frames: uint8, uint16 and float32 unchanged; float64 converted to float32 (a float frame
  keeps its meaning, only precision beyond float32 is lost). int8, int16, int32 and uint32 are REFUSED: their value
  range has no agreed mapping to the models' 0..1 input, and rescaling silently would change what the model sees.
- Components: 1 (grey) or 3 (RGB, turned grey by the receiver); anything else is refused.
- Only 2D frames: an image with more than one slice is refused, as is a partial subvolume.
- Bounded size: an image longer than ``image_bounds.MAX_SIDE_PX`` on a side, with more than ``MAX_PIXELS`` pixels or
  further from square than ``MAX_ASPECT`` is refused on decoding (reason ``size`` or ``aspect``), before its pixels
  are touched: a 65 KB message of 1 x 65,535 pixels would otherwise cost gigabytes in preprocessing.
"""

from __future__ import annotations

import functools
import logging
import math
import struct
from dataclasses import dataclass, field
from typing import Dict, Mapping, Optional, Sequence, Tuple

import numpy as np

from NerveSegLogic.frame import ImageGeometry
from NerveSegLogic.igtl import IMAGE_DEVICE_NAME
from ..imaging.bounds import ImageTooLarge, check_image_size

logger = logging.getLogger(__name__)

HEADER_SIZE = 58
IMAGE_HEADER_SIZE = 72
EXTENDED_HEADER_SIZE = 12
DEFAULT_MAX_BODY_BYTES = 64 * 1024 * 1024

_HEADER = struct.Struct(">H12s20sIIQQ")
_IMAGE_HEADER = struct.Struct(">HBBBBHHH12fHHHHHH")
_EXTENDED_HEADER = struct.Struct(">HHII")
_TRANSFORM = struct.Struct(">12f")
assert _HEADER.size == HEADER_SIZE and _IMAGE_HEADER.size == IMAGE_HEADER_SIZE

#: IGTL scalar type code -> numpy dtype (the protocol's full list).
SCALAR_TYPES: Dict[int, np.dtype] = {
    2: np.dtype(np.int8), 3: np.dtype(np.uint8), 4: np.dtype(np.int16), 5: np.dtype(np.uint16),
    6: np.dtype(np.int32), 7: np.dtype(np.uint32), 10: np.dtype(np.float32), 11: np.dtype(np.float64),
}
_SCALAR_CODES = {dtype: code for code, dtype in SCALAR_TYPES.items()}
#: What a received frame may carry (float64 is converted to float32 on receipt; see the module docstring).
FRAME_DTYPES = (np.dtype(np.uint8), np.dtype(np.uint16), np.dtype(np.float32))
FRAME_COMPONENTS = (1, 3)

COORDINATE_RAS = 1
COORDINATE_LPS = 2
ENDIAN_BIG = 1
ENDIAN_LITTLE = 2

#: STATUS message codes (subset) used when encoding.
STATUS_OK = 1

_crc64_impl = None
#: Which library computes CRC-64 here: "anycrc" (table-sliced C, ~0.05 ms per 580x420 frame) or "crcmod" (byte-wise C,
#: ~0.7 ms; installed with pyigtl). Set on first use.
crc64_library = ""


def crc64(data, crc: int = 0) -> int:
    """CRC-64 ECMA-182 (polynomial 0x42F0E1EBA9EA3693, initial value 0, no reflection, no final xor) of ``data``.

    This is the checksum OpenIGTLink puts in every header. ``data`` is a one-dimensional bytes-like object. ``crc``
    continues a checksum: ``crc64(b, crc64(a)) == crc64(a + b)``, so a message in several buffers needs no joining.
    Uses anycrc when it is installed, else crcmod (a dependency of pyigtl); both give the same value
    (Testing/test_stream_codec.py).
    """
    global _crc64_impl, crc64_library
    if _crc64_impl is None:
        try:
            import anycrc  # deferred: only the stream needs it

            _crc64_impl, crc64_library = anycrc.Model("CRC64-ECMA-182").calc, "anycrc"
        except ImportError:
            _crc64_impl, crc64_library = crcmod_crc64(), "crcmod"
    return _crc64_impl(data, crc)


def crcmod_crc64():
    """crcmod's CRC-64 ECMA-182 function (the fallback, and the reference the tests compare against)."""
    import crcmod

    try:
        import crcmod._crcfunext  # noqa: F401  (present when crcmod was built with its C extension)
    except ImportError:
        logger.warning("crcmod has no C extension here: CRC-64 checks run in pure Python and are slow")
    return crcmod.mkCrcFun(0x142F0E1EBA9EA3693, rev=False, initCrc=0, xorOut=0)


class IgtlProtocolError(ValueError):
    """The bytes are not an OpenIGTLink message the stream can trust (bad header, bad size, bad CRC).

    ``kind`` names the failure for counters: ``header``, ``oversize``, ``crc``, ``body``.
    """

    def __init__(self, kind: str, message: str):
        super().__init__(message)
        self.kind = kind


class ImageRefused(ValueError):
    """A well-formed IMAGE message whose content NerveSeg does not take as a frame.

    ``reason`` is a short key for counters (``scalar_type``, ``components``, ``volume``, ``subvolume``,
    ``size``, ``aspect``, ``geometry``, ``header``); the message says what was received and what was expected.
    """

    def __init__(self, reason: str, message: str):
        super().__init__(message)
        self.reason = reason


# ----------------------------------------------------------------------------------------------------------------
# Header and timestamps
# ----------------------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Header:
    """A parsed 58-byte OpenIGTLink header. ``timestamp`` is seconds since the Unix epoch (0.0 when unset)."""

    version: int
    message_type: str
    device_name: str
    timestamp: float
    body_size: int
    crc: int


def timestamp_to_igtl(seconds: float) -> Tuple[int, int]:
    """Seconds since the epoch -> (whole seconds, 32-bit fraction), rounding to the nearest 2**-32 s."""
    if not math.isfinite(seconds) or seconds < 0:
        raise ValueError(f"IGTL timestamp must be a finite number of seconds >= 0, got {seconds}")
    whole = int(seconds)
    frac = int(round((seconds - whole) * 4294967296.0))
    if frac >= 4294967296:  # rounding carried into the next second
        whole, frac = whole + 1, 0
    if whole > 0xFFFFFFFF:
        raise ValueError(f"IGTL timestamp {seconds} s does not fit the protocol's 32-bit seconds field")
    return whole, frac


def timestamp_from_igtl(whole: int, frac: int) -> float:
    """(whole seconds, 32-bit fraction) -> float seconds (about 0.24 microsecond resolution for current dates)."""
    return whole + frac / 4294967296.0


def _ascii_field(name: str, value: str, size: int) -> bytes:
    raw = value.encode("utf-8")
    if len(raw) > size:
        raise ValueError(f"IGTL {name} {value!r} is {len(raw)} bytes; the header field holds at most {size}")
    return raw


def pack_header(message_type: str, device_name: str, timestamp: float, body, version: int = 1) -> bytes:
    """The 58-byte header for ``body`` (bytes-like), with its size and CRC-64."""
    seconds, frac = timestamp_to_igtl(timestamp)
    return _HEADER.pack(version, _ascii_field("message type", message_type, 12),
                        _ascii_field("device name", device_name, 20), seconds, frac, len(body), crc64(body))


def parse_header(data, max_body_bytes: int = DEFAULT_MAX_BODY_BYTES) -> Header:
    """Parse 58 header bytes; raises IgtlProtocolError.

    kind ``header``: a version other than 1 or 2, or a type that is not printable ASCII (the stream is out of step);
    kind ``oversize``: the announced body exceeds ``max_body_bytes`` (checked here, before anyone allocates it).
    """
    if len(data) != HEADER_SIZE:
        raise IgtlProtocolError("header", f"IGTL header must be {HEADER_SIZE} bytes, got {len(data)}")
    version, raw_type, raw_device, seconds, frac, body_size, crc = _HEADER.unpack(data)
    if version not in (1, 2):
        raise IgtlProtocolError("header", f"IGTL header version {version} unknown (expected 1 or 2); "
                                          "the stream is not OpenIGTLink or is out of step")
    message_type = raw_type.rstrip(b"\0")
    if not message_type or any(c < 0x20 or c > 0x7E for c in message_type) or b"\0" in message_type:
        raise IgtlProtocolError("header", f"IGTL message type {bytes(raw_type)!r} is not printable ASCII; "
                                          "the stream is not OpenIGTLink or is out of step")
    if body_size > max_body_bytes:
        raise IgtlProtocolError("oversize", f"IGTL {message_type.decode()} message announces a body of "
                                            f"{body_size} bytes, more than the limit of {max_body_bytes} bytes")
    device = raw_device.split(b"\0", 1)[0].decode("utf-8", errors="replace")
    return Header(version=version, message_type=message_type.decode("ascii"), device_name=device,
                  timestamp=timestamp_from_igtl(seconds, frac), body_size=body_size, crc=crc)


def check_crc(header: Header, body) -> None:
    """Raise IgtlProtocolError(kind ``crc``) unless ``body``'s CRC-64 equals the header's."""
    actual = crc64(body)
    if actual != header.crc:
        raise IgtlProtocolError("crc", f"IGTL {header.message_type} message from {header.device_name!r}: body CRC "
                                       f"{actual:#018x} differs from the header's {header.crc:#018x}")


# ----------------------------------------------------------------------------------------------------------------
# Body (header version 2 extended header and metadata)
# ----------------------------------------------------------------------------------------------------------------

def pack_body(content: bytes, header_version: int = 1, metadata: Optional[Mapping[str, str]] = None,
              message_id: int = 0) -> bytes:
    """The message body: ``content`` alone (version 1), or extended header + content + metadata (version 2)."""
    if header_version == 1:
        if metadata:
            raise ValueError("IGTL metadata needs header version 2")
        return content
    if header_version != 2:
        raise ValueError(f"IGTL header version must be 1 or 2, got {header_version}")
    items = list((metadata or {}).items())
    meta_header = [struct.pack(">H", len(items))]
    meta_body = []
    for key, value in items:
        k, v = key.encode("utf-8"), value.encode("utf-8")
        meta_header.append(struct.pack(">HHI", len(k), 106, len(v)))  # 106: IANA code of UTF-8
        meta_body.append(k + v)
    meta_h, meta_b = b"".join(meta_header), b"".join(meta_body)
    extended = _EXTENDED_HEADER.pack(EXTENDED_HEADER_SIZE, len(meta_h), len(meta_b), message_id)
    return extended + content + meta_h + meta_b


def split_body(header: Header, body) -> Tuple[memoryview, Dict[str, str]]:
    """(content, metadata) of a body; version 1 bodies are all content. Raises IgtlProtocolError(kind ``body``)."""
    view = memoryview(body)
    if header.version == 1:
        return view, {}
    if len(view) < EXTENDED_HEADER_SIZE:
        raise IgtlProtocolError("body", f"IGTL v2 {header.message_type} body of {len(view)} bytes is shorter "
                                        f"than its {EXTENDED_HEADER_SIZE}-byte extended header")
    ext_size, meta_header_size, meta_body_size, _message_id = _EXTENDED_HEADER.unpack(view[:EXTENDED_HEADER_SIZE])
    meta_size = meta_header_size + meta_body_size
    if ext_size < EXTENDED_HEADER_SIZE or ext_size + meta_size > len(view):
        raise IgtlProtocolError("body", f"IGTL v2 {header.message_type} extended header (size {ext_size}, metadata "
                                        f"{meta_size}) does not fit its {len(view)}-byte body")
    content = view[ext_size:len(view) - meta_size]
    metadata: Dict[str, str] = {}
    if meta_size:
        meta = view[len(view) - meta_size:]
        try:
            (count,) = struct.unpack(">H", meta[:2])
            offset = 2 + 8 * count
            for index in range(count):
                key_size, _encoding, value_size = struct.unpack(">HHI", meta[2 + 8 * index:10 + 8 * index])
                key = bytes(meta[offset:offset + key_size]).decode("utf-8", errors="replace")
                offset += key_size
                metadata[key] = bytes(meta[offset:offset + value_size]).decode("utf-8", errors="replace")
                offset += value_size
        except struct.error as exc:
            raise IgtlProtocolError("body", f"IGTL v2 {header.message_type} metadata is malformed: {exc}") from None
    return content, metadata


def pack_message(message_type: str, device_name: str, timestamp: float, content: bytes, header_version: int = 1,
                 metadata: Optional[Mapping[str, str]] = None, message_id: int = 0) -> bytes:
    """A complete message (header + body) around ``content``."""
    body = pack_body(content, header_version, metadata, message_id)
    return pack_header(message_type, device_name, timestamp, body, header_version) + body


# ----------------------------------------------------------------------------------------------------------------
# Geometry
# ----------------------------------------------------------------------------------------------------------------

def geometry_to_igtl_matrix(geometry: ImageGeometry, size_ijk: Sequence[int]) -> Tuple[float, ...]:
    """The 12 IGTL matrix numbers (tx ty tz sx sy sz nx ny nz px py pz) in RAS mm for an image of ``size_ijk``.

    t, s, n are the i, j, k axis directions times the spacing; p is the image centre, which lies
    ``(size - 1) / 2`` pixels from the centre of pixel 0 along each axis.
    """
    axes = geometry.direction_matrix() * np.asarray(geometry.spacing, dtype=float)[np.newaxis, :]
    half = (np.asarray(size_ijk, dtype=float) - 1.0) / 2.0
    centre = np.asarray(geometry.origin, dtype=float) + axes @ half
    return tuple(float(v) for v in (*axes[:, 0], *axes[:, 1], *axes[:, 2], *centre))


def _igtl_matrix(geometry: ImageGeometry, size_ijk: Tuple[int, int, int]) -> Tuple[float, ...]:
    """geometry_to_igtl_matrix, remembered for hashable geometries: a stream sends one geometry over and over, and
    the numpy on 3x3 matrices costs ~10-40 us per message (ImageGeometry is frozen, so a cached answer stays
    right)."""
    try:
        return _igtl_matrix_cached(geometry, size_ijk)
    except TypeError:  # a geometry built with lists is not hashable: computed each time
        return geometry_to_igtl_matrix(geometry, size_ijk)


@functools.lru_cache(maxsize=64)
def _igtl_matrix_cached(geometry: ImageGeometry, size_ijk: Tuple[int, int, int]) -> Tuple[float, ...]:
    return geometry_to_igtl_matrix(geometry, size_ijk)


def igtl_matrix_to_geometry(matrix: Sequence[float], size_ijk: Sequence[int],
                            coordinate: int = COORDINATE_RAS) -> ImageGeometry:
    """Inverse of :func:`geometry_to_igtl_matrix`; an LPS matrix is turned into RAS.

    A zero-length k axis (some senders leave it empty for 2D images) becomes the unit normal of i and j with
    1 mm spacing. Raises ImageRefused(reason ``geometry``) for a zero-length i or j axis or non-finite numbers.
    """
    m = np.asarray(matrix, dtype=float)
    if m.shape != (12,) or not np.all(np.isfinite(m)):
        raise ImageRefused("geometry", f"IGTL image matrix must be 12 finite numbers, got {m.tolist()}")
    axes = m[:9].reshape(3, 3).T.copy()  # columns: i, j, k axes (direction times spacing)
    centre = m[9:].copy()
    if coordinate == COORDINATE_LPS:
        axes[:2, :] *= -1.0
        centre[:2] *= -1.0
    elif coordinate != COORDINATE_RAS:
        raise ImageRefused("geometry", f"IGTL image coordinate system {coordinate} unknown (1 RAS, 2 LPS)")
    spacing = np.linalg.norm(axes, axis=0)
    if spacing[0] <= 0 or spacing[1] <= 0:
        raise ImageRefused("geometry", f"IGTL image matrix has a zero-length i or j axis: {m[:9].tolist()}")
    directions = axes / np.where(spacing > 0, spacing, 1.0)[np.newaxis, :]
    if spacing[2] <= 0:
        normal = np.cross(directions[:, 0], directions[:, 1])
        directions[:, 2] = normal / max(np.linalg.norm(normal), 1e-12)
        spacing[2] = 1.0
        axes[:, 2] = directions[:, 2]
    half = (np.asarray(size_ijk, dtype=float) - 1.0) / 2.0
    origin = centre - axes @ half
    return ImageGeometry(spacing=tuple(float(s) for s in spacing), origin=tuple(float(o) for o in origin),
                         directions=tuple(tuple(float(v) for v in row) for row in directions))


# ----------------------------------------------------------------------------------------------------------------
# IMAGE
# ----------------------------------------------------------------------------------------------------------------

@dataclass
class ImageMessage:
    """A decoded IMAGE message.

    pixels: ``(K, J, I, C)`` array in native byte order, exactly the scalar type sent (a view of the body
        where possible). :func:`frame_image` gives the 2D frame form NerveSeg accepts.
    geometry: RAS geometry with origin at the centre of pixel 0.
    """

    device_name: str
    timestamp: float
    pixels: np.ndarray
    geometry: ImageGeometry
    coordinate: int = COORDINATE_RAS
    metadata: Dict[str, str] = field(default_factory=dict)

    @property
    def components(self) -> int:
        return int(self.pixels.shape[3])

    @property
    def size_ijk(self) -> Tuple[int, int, int]:
        k, j, i = self.pixels.shape[:3]
        return int(i), int(j), int(k)


def encode_image(image: np.ndarray, geometry: Optional[ImageGeometry] = None, device_name: str = IMAGE_DEVICE_NAME,
                 timestamp: float = 0.0, header_version: int = 1, metadata: Optional[Mapping[str, str]] = None,
                 coordinate: int = COORDINATE_RAS) -> bytes:
    """A complete IMAGE message for ``image``.

    image: ``(H, W)`` one component, ``(H, W, C)`` C components, or ``(K, H, W, C)`` a volume; any IGTL scalar
        type (uint8, int8, uint16, int16, uint32, int32, float32, float64). Pixels are sent little-endian.
    geometry: RAS geometry (origin = centre of pixel 0); identity with 1 mm spacing when None.
    coordinate: COORDINATE_RAS, or COORDINATE_LPS to send the same geometry in LPS.
    Raises ValueError for an unsupported dtype, dimension or size (each axis at most 65535 pixels).
    """
    pixels = np.asarray(image)
    if pixels.ndim == 2:
        pixels = pixels[np.newaxis, :, :, np.newaxis]
    elif pixels.ndim == 3:
        pixels = pixels[np.newaxis]
    elif pixels.ndim != 4:
        raise ValueError(f"IGTL image must be (H, W), (H, W, C) or (K, H, W, C), got shape {pixels.shape}")
    dtype = pixels.dtype.newbyteorder("=") if pixels.dtype.byteorder in "<>" else pixels.dtype
    code = _SCALAR_CODES.get(np.dtype(dtype))
    if code is None:
        raise ValueError(f"IGTL image dtype {pixels.dtype} unsupported; expected one of "
                         f"{sorted(str(d) for d in SCALAR_TYPES.values())}")
    k, j, i, c = pixels.shape
    if max(i, j, k) > 0xFFFF or c > 0xFF or min(i, j, k, c) < 1:
        raise ValueError(f"IGTL image size (i, j, k, components) = {(i, j, k, c)} outside 1..65535 (components 1..255)")
    geometry = geometry or ImageGeometry()
    matrix = _igtl_matrix(geometry, (i, j, k))
    if coordinate == COORDINATE_LPS:
        matrix = tuple(-v if index % 3 < 2 else v for index, v in enumerate(matrix))
    elif coordinate != COORDINATE_RAS:
        raise ValueError(f"coordinate must be COORDINATE_RAS (1) or COORDINATE_LPS (2), got {coordinate}")
    head = _IMAGE_HEADER.pack(1, c, code, ENDIAN_LITTLE, coordinate, i, j, k, *matrix, 0, 0, 0, i, j, k)
    data = np.ascontiguousarray(pixels, dtype=np.dtype(dtype).newbyteorder("<")).tobytes()
    return pack_message("IMAGE", device_name, timestamp, head + data, header_version, metadata)


def encode_frame_parts(image: np.ndarray, geometry: Optional[ImageGeometry], device_name: str,
                       timestamp: float) -> Tuple[bytes, memoryview]:
    """The IMAGE message of one 2D frame, ``(H, W)`` or ``(H, W, C)``, as two buffers to write one after the other:
    the headers (OpenIGTLink's 58 bytes + the 72-byte image header) and the pixels. Together they are byte for byte
    what :func:`encode_image` makes with header version 1 and RAS.

    The pixels are ``image``'s own memory when it is C-contiguous and little-endian (a 580x420 uint8 frame or
    labelmap): nothing is copied, so the caller must not write to ``image`` until the message has been sent.
    Otherwise they are one converted copy. Raises ValueError as encode_image does for an unsupported dtype, shape
    or size.
    """
    pixels = np.asarray(image)
    if pixels.ndim not in (2, 3):
        raise ValueError(f"IGTL frame must be (H, W) or (H, W, C), got shape {pixels.shape}")
    height, width = pixels.shape[:2]
    components = pixels.shape[2] if pixels.ndim == 3 else 1
    dtype = pixels.dtype.newbyteorder("=") if pixels.dtype.byteorder in "<>" else pixels.dtype
    code = _SCALAR_CODES.get(np.dtype(dtype))
    if code is None:
        raise ValueError(f"IGTL image dtype {pixels.dtype} unsupported; expected one of "
                         f"{sorted(str(d) for d in SCALAR_TYPES.values())}")
    if max(height, width) > 0xFFFF or components > 0xFF or min(height, width, components) < 1:
        raise ValueError(f"IGTL image size (i, j, k, components) = {(width, height, 1, components)} outside 1..65535 "
                         "(components 1..255)")
    wire = np.ascontiguousarray(pixels, dtype=np.dtype(dtype).newbyteorder("<"))  # no copy when already so
    data = memoryview(wire.reshape(-1).view(np.uint8))
    matrix = _igtl_matrix(geometry or ImageGeometry(), (width, height, 1))
    image_header = _IMAGE_HEADER.pack(1, components, code, ENDIAN_LITTLE, COORDINATE_RAS, width, height, 1, *matrix,
                                      0, 0, 0, width, height, 1)
    seconds, frac = timestamp_to_igtl(timestamp)
    header = _HEADER.pack(1, b"IMAGE", _ascii_field("device name", device_name, 20), seconds, frac,
                          IMAGE_HEADER_SIZE + data.nbytes, crc64(data, crc64(image_header)))
    return header + image_header, data


def encode_frame_message(image: np.ndarray, geometry: Optional[ImageGeometry], device_name: str,
                         timestamp: float) -> bytearray:
    """The IMAGE message of one 2D frame in one new buffer (:func:`encode_frame_parts` joined): byte for byte what
    :func:`encode_image` makes with header version 1 and RAS, with the pixels copied once."""
    head, data = encode_frame_parts(image, geometry, device_name, timestamp)
    message = bytearray(head)
    message += data
    return message


def decode_image(header: Header, body) -> ImageMessage:
    """Decode an IMAGE body (CRC already checked or not wanted). Raises ImageRefused with the reason.

    The pixel array is a view of ``body`` when the bytes are already in native order (no copy).
    """
    content, metadata = split_body(header, body)
    source = f"IGTL IMAGE from {header.device_name!r}"
    if len(content) < IMAGE_HEADER_SIZE:
        raise ImageRefused("header", f"{source}: content of {len(content)} bytes is shorter than the "
                                     f"{IMAGE_HEADER_SIZE}-byte image header")
    values = _IMAGE_HEADER.unpack(content[:IMAGE_HEADER_SIZE])
    _version, components, scalar_code, endian, coordinate = values[:5]
    i, j, k = values[5:8]
    matrix = values[8:20]
    offset, sub_size = values[20:23], values[23:26]
    dtype = SCALAR_TYPES.get(scalar_code)
    if dtype is None:
        raise ImageRefused("scalar_type", f"{source}: scalar type code {scalar_code} unknown; expected one of "
                                          f"{sorted(SCALAR_TYPES)}")
    if components < 1:
        raise ImageRefused("components", f"{source}: 0 components")
    if min(i, j, k) < 1:
        raise ImageRefused("size", f"{source}: empty image of size (i, j, k) = {(i, j, k)}")
    try:
        check_image_size(j, i, source)
    except ImageTooLarge as exc:
        raise ImageRefused(exc.reason, str(exc)) from None
    if tuple(offset) != (0, 0, 0) or tuple(sub_size) != (i, j, k):
        raise ImageRefused("subvolume", f"{source}: a subvolume (offset {tuple(offset)}, size {tuple(sub_size)}) of "
                                        f"an image of size {(i, j, k)}; only whole images are taken")
    if endian not in (ENDIAN_BIG, ENDIAN_LITTLE):
        raise ImageRefused("header", f"{source}: endian code {endian} unknown (1 big, 2 little)")
    expected = i * j * k * components * dtype.itemsize
    pixel_bytes = len(content) - IMAGE_HEADER_SIZE
    if pixel_bytes != expected:
        raise ImageRefused("size", f"{source}: {pixel_bytes} pixel bytes, expected {expected} for size (i, j, k) = "
                                   f"{(i, j, k)}, {components} component(s) of {dtype}")
    wire = dtype.newbyteorder(">" if endian == ENDIAN_BIG else "<")
    pixels = np.frombuffer(content[IMAGE_HEADER_SIZE:], dtype=wire).reshape(k, j, i, components)
    if wire != dtype:  # byte order differs from this machine's
        pixels = pixels.astype(dtype)
    geometry = _geometry_of(tuple(matrix), (i, j, k), coordinate)
    return ImageMessage(device_name=header.device_name, timestamp=header.timestamp, pixels=pixels,
                        geometry=geometry, coordinate=coordinate, metadata=metadata)


@functools.lru_cache(maxsize=64)
def _geometry_of(matrix: Tuple[float, ...], size_ijk: Tuple[int, int, int], coordinate: int) -> ImageGeometry:
    """igtl_matrix_to_geometry, remembered: a stream repeats one geometry, and the conversion costs ~0.1 ms of numpy
    overhead per frame (ImageGeometry is frozen, so sharing it is safe)."""
    return igtl_matrix_to_geometry(matrix, size_ijk, coordinate)


def frame_image(message: ImageMessage) -> np.ndarray:
    """The ``(H, W)`` or ``(H, W, 3)`` frame pixels NerveSeg accepts from ``message``; raises ImageRefused.

    Applies the decisions in the module docstring: uint8, uint16, float32 kept; float64 -> float32; other integer
    types, component counts other than 1 or 3, and volumes refused.
    """
    source = f"IGTL IMAGE from {message.device_name!r}"
    dtype = message.pixels.dtype
    if dtype == np.float64:
        pixels = message.pixels.astype(np.float32)
    elif dtype in FRAME_DTYPES:
        pixels = message.pixels
    else:
        raise ImageRefused("scalar_type", f"{source}: pixels of type {dtype} are not taken; send uint8, uint16 or "
                                          "float32 (float64 is converted)")
    if message.components not in FRAME_COMPONENTS:
        raise ImageRefused("components", f"{source}: {message.components} components per pixel; expected 1 (grey) "
                                         "or 3 (RGB)")
    if pixels.shape[0] != 1:
        raise ImageRefused("volume", f"{source}: {pixels.shape[0]} slices of {pixels.shape[2]}x{pixels.shape[1]}; "
                                     "NerveSeg takes 2D frames (1 slice)")
    plane = pixels[0]
    return plane[:, :, 0] if plane.shape[2] == 1 else plane


# ----------------------------------------------------------------------------------------------------------------
# Other message types (sent by tests and by tools; the receiver skips them)
# ----------------------------------------------------------------------------------------------------------------

def encode_transform(matrix: np.ndarray, device_name: str = "ProbeToReference", timestamp: float = 0.0) -> bytes:
    """A TRANSFORM message for a 4x4 homogeneous matrix (mm)."""
    m = np.asarray(matrix, dtype=float)
    if m.shape != (4, 4):
        raise ValueError(f"transform must be 4x4, got shape {m.shape}")
    content = _TRANSFORM.pack(*m[:3, 0], *m[:3, 1], *m[:3, 2], *m[:3, 3])
    return pack_message("TRANSFORM", device_name, timestamp, content)


def encode_string(text: str, device_name: str = "Text", timestamp: float = 0.0) -> bytes:
    """A STRING message (UTF-8)."""
    raw = text.encode("utf-8")
    if len(raw) > 0xFFFF:
        raise ValueError(f"IGTL STRING holds at most 65535 bytes, got {len(raw)}")
    return pack_message("STRING", device_name, timestamp, struct.pack(">HH", 106, len(raw)) + raw)


def encode_status(code: int = STATUS_OK, subcode: int = 0, error_name: str = "", status: str = "",
                  device_name: str = "Status", timestamp: float = 0.0) -> bytes:
    """A STATUS message (code, subcode, 20-byte error name, NUL-terminated status text)."""
    content = struct.pack(">Hq20s", code, subcode, _ascii_field("error name", error_name, 20))
    return pack_message("STATUS", device_name, timestamp, content + status.encode("utf-8") + b"\0")
