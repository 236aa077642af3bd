"""OpenIGTLink codec: messages round-trip as bytes, with no socket at all; geometry converts exactly both ways."""

import struct

import numpy as np
import pytest

from NerveSegLogic.frame import ImageGeometry
from NerveSegLogic.stream import codec
from NerveSegLogic.stream.codec import (HEADER_SIZE, IgtlProtocolError, ImageRefused, check_crc, crc64,
                                        decode_image, encode_image, encode_status, encode_string, encode_transform,
                                        frame_image, geometry_to_igtl_matrix, igtl_matrix_to_geometry, parse_header)


def _rotation(axis, degrees):
    axis = np.asarray(axis, dtype=float) / np.linalg.norm(axis)
    a = np.radians(degrees)
    k = np.array([[0, -axis[2], axis[1]], [axis[2], 0, -axis[0]], [-axis[1], axis[0], 0]])
    return np.eye(3) + np.sin(a) * k + (1 - np.cos(a)) * k @ k


OBLIQUE = ImageGeometry(spacing=(0.083, 0.121, 2.5), origin=(-41.25, 17.5, 103.0),
                        directions=tuple(map(tuple, _rotation((1.0, 2.0, 0.5), 37.0))))


def _split(message: bytes):
    header = parse_header(message[:HEADER_SIZE])
    body = bytearray(message[HEADER_SIZE:])
    assert header.body_size == len(body)
    return header, body


def test_crc64_is_ecma_182_with_its_published_check_value():
    # CRC-64/ECMA-182 of "123456789" (the catalogue's check value) and of nothing.
    assert crc64(b"123456789") == 0x6C40DF5F0B497347
    assert crc64(b"") == 0


def test_crc64_agrees_with_crcmod_on_frame_sized_data():
    # Whichever library computes it here (anycrc when installed), it must equal crcmod's, pyigtl's own choice.
    reference = codec.crcmod_crc64()
    for size in (1, 7, 8, 9, 4095, 243_672):
        data = bytearray(np.random.default_rng(size).integers(0, 256, size, dtype=np.uint8).tobytes())
        assert crc64(data) == reference(bytes(data)) == crc64(memoryview(data))


def test_crc64_continues_over_a_message_in_parts_as_over_the_joined_bytes():
    """A message written in parts (headers, then the frame's own pixels) is checksummed part after part."""
    reference = codec.crcmod_crc64()
    data = np.random.default_rng(5).integers(0, 256, 243_672, dtype=np.uint8).tobytes()
    for cut in (0, 1, 72, 100_000, len(data)):
        head, tail = data[:cut], data[cut:]
        assert crc64(tail, crc64(head)) == crc64(data) == reference(tail, reference(head))


@pytest.mark.parametrize("dtype", [np.uint8, np.int8, np.uint16, np.int16, np.uint32, np.int32, np.float32,
                                   np.float64])
@pytest.mark.parametrize("components", [1, 3])
def test_image_round_trips_as_bytes_for_every_scalar_type_and_component_count(dtype, components):
    rng = np.random.default_rng(7)
    shape = (11, 17) if components == 1 else (11, 17, components)
    if np.issubdtype(dtype, np.integer):
        info = np.iinfo(dtype)
        pixels = rng.integers(info.min, info.max, size=shape, endpoint=True, dtype=dtype)
    else:
        pixels = (rng.standard_normal(shape) * 1000).astype(dtype)
    message = encode_image(pixels, OBLIQUE, device_name="Image_Reference", timestamp=1_700_000_000.25)

    header, body = _split(message)
    check_crc(header, body)
    decoded = decode_image(header, body)
    assert (header.message_type, header.device_name, header.timestamp) == ("IMAGE", "Image_Reference",
                                                                            1_700_000_000.25)
    assert decoded.pixels.dtype == np.dtype(dtype)
    assert decoded.pixels.shape == (1, 11, 17, components)
    np.testing.assert_array_equal(decoded.pixels[0].reshape(shape), pixels)
    assert decoded.size_ijk == (17, 11, 1)


def test_header_version_2_with_metadata_round_trips():
    pixels = np.arange(6 * 5, dtype=np.uint16).reshape(6, 5) * 1000
    message = encode_image(pixels, OBLIQUE, device_name="Image_Reference", timestamp=12.5, header_version=2,
                           metadata={"DepthMm": "40", "Probe": "L14-6Ns"})
    header, body = _split(message)
    assert header.version == 2
    check_crc(header, body)
    decoded = decode_image(header, body)
    assert decoded.metadata == {"DepthMm": "40", "Probe": "L14-6Ns"}
    np.testing.assert_array_equal(decoded.pixels[0, :, :, 0], pixels)


def test_big_endian_pixels_decode_to_the_same_values():
    pixels = np.array([[1, 256, 65535], [4660, 0, 7]], dtype=">u2")
    header, body = _split(encode_image(pixels))
    decoded = decode_image(header, body)
    np.testing.assert_array_equal(decoded.pixels[0, :, :, 0], pixels.astype(np.uint16))
    # And a message whose pixels are big-endian on the wire (endian field 1), built by hand.
    content = bytearray(body)
    struct.pack_into(">B", content, 4, codec.ENDIAN_BIG)
    content[codec.IMAGE_HEADER_SIZE:] = pixels.astype(">u2").tobytes()
    wire = codec.pack_message("IMAGE", "Image_Reference", 0.0, bytes(content))
    header, body = _split(wire)
    np.testing.assert_array_equal(decode_image(header, body).pixels[0, :, :, 0], pixels.astype(np.uint16))


def test_geometry_round_trips_through_the_igtl_centre_matrix_with_oblique_axes_and_anisotropic_spacing():
    size = (534, 512, 1)
    matrix = geometry_to_igtl_matrix(OBLIQUE, size)
    back = igtl_matrix_to_geometry(matrix, size)
    np.testing.assert_allclose(back.spacing, OBLIQUE.spacing, rtol=1e-12)
    np.testing.assert_allclose(back.origin, OBLIQUE.origin, atol=1e-9)
    np.testing.assert_allclose(back.direction_matrix(), OBLIQUE.direction_matrix(), atol=1e-12)

    # The matrix holds the image CENTRE: pixel (i, j) = ((534-1)/2, (512-1)/2) of the geometry.
    centre_ras = OBLIQUE.ijk_to_ras() @ np.array([(size[0] - 1) / 2, (size[1] - 1) / 2, 0.0, 1.0])
    np.testing.assert_allclose(matrix[9:], centre_ras[:3], atol=1e-9)
    # t, s, n are the axis directions times the spacing.
    np.testing.assert_allclose(matrix[0:3], OBLIQUE.direction_matrix()[:, 0] * 0.083, atol=1e-12)
    np.testing.assert_allclose(matrix[3:6], OBLIQUE.direction_matrix()[:, 1] * 0.121, atol=1e-12)


def test_geometry_survives_the_float32_wire_format():
    image = np.zeros((512, 534), np.uint8)
    decoded = decode_image(*_split(encode_image(image, OBLIQUE)))
    geometry = decoded.geometry
    np.testing.assert_allclose(geometry.spacing, OBLIQUE.spacing, rtol=1e-6)
    np.testing.assert_allclose(geometry.origin, OBLIQUE.origin, atol=1e-4)  # mm; float32 on the wire
    np.testing.assert_allclose(geometry.direction_matrix(), OBLIQUE.direction_matrix(), atol=1e-6)
    # The corner pixel lands where the source geometry puts it.
    corner = np.array([533, 511, 0, 1.0])
    np.testing.assert_allclose(geometry.ijk_to_ras() @ corner, OBLIQUE.ijk_to_ras() @ corner, atol=1e-4)


def test_lps_images_are_turned_into_ras():
    image = np.zeros((4, 6), np.uint8)
    lps = decode_image(*_split(encode_image(image, OBLIQUE, coordinate=codec.COORDINATE_LPS)))
    assert lps.coordinate == codec.COORDINATE_LPS
    np.testing.assert_allclose(lps.geometry.origin, OBLIQUE.origin, atol=1e-4)
    np.testing.assert_allclose(lps.geometry.direction_matrix(), OBLIQUE.direction_matrix(), atol=1e-6)


def test_a_2d_image_with_an_empty_k_axis_gets_the_normal_of_i_and_j():
    matrix = (0.0, 0.2, 0.0, -0.3, 0.0, 0.0, 0.0, 0.0, 0.0, 5.0, 6.0, 7.0)  # i along A, j along -R, k empty
    geometry = igtl_matrix_to_geometry(matrix, (3, 5, 1))
    assert geometry.spacing == pytest.approx((0.2, 0.3, 1.0))
    np.testing.assert_allclose(geometry.direction_matrix()[:, 2], [0.0, 0.0, 1.0], atol=1e-12)
    np.testing.assert_allclose(geometry.origin, [5.0 + 0.3 * 2, 6.0 - 0.2 * 1, 7.0], atol=1e-12)


def test_zero_length_image_axis_is_refused_as_bad_geometry():
    with pytest.raises(ImageRefused) as refused:
        igtl_matrix_to_geometry((0.0,) * 9 + (0.0, 0.0, 0.0), (4, 4, 1))
    assert refused.value.reason == "geometry"


def test_timestamps_keep_32_32_fixed_point_precision():
    for seconds in (0.0, 1.5, 1_700_000_000.123456, 4294967295.5):
        whole, frac = codec.timestamp_to_igtl(seconds)
        assert 0 <= frac < 2 ** 32
        assert codec.timestamp_from_igtl(whole, frac) == pytest.approx(seconds, abs=1e-6)
    assert codec.timestamp_to_igtl(1.99999999999999) == (2, 0)  # rounding carries into the seconds
    # A float timestamp survives float -> 32.32 -> float unchanged (the sender echoes a frame's timestamp).
    t = 1_712_345_678.987654
    assert codec.timestamp_from_igtl(*codec.timestamp_to_igtl(t)) == t
    with pytest.raises(ValueError):
        codec.timestamp_to_igtl(-1.0)


def test_parse_header_refuses_an_oversize_body_and_a_header_that_is_not_igtl():
    big = bytearray(encode_image(np.zeros((2, 2), np.uint8))[:HEADER_SIZE])
    struct.pack_into(">Q", big, 42, 2 ** 40)
    with pytest.raises(IgtlProtocolError) as oversize:
        parse_header(big)
    assert oversize.value.kind == "oversize" and str(2 ** 40) in str(oversize.value)
    with pytest.raises(IgtlProtocolError) as small_cap:
        parse_header(encode_image(np.zeros((64, 64), np.uint8))[:HEADER_SIZE], max_body_bytes=1000)
    assert small_cap.value.kind == "oversize"
    with pytest.raises(IgtlProtocolError) as garbage:
        parse_header(bytes(range(HEADER_SIZE)))
    assert garbage.value.kind == "header"


def test_a_flipped_body_byte_fails_the_crc_check():
    header, body = _split(encode_image(np.full((8, 8), 100, np.uint8)))
    body[-1] ^= 0x01
    with pytest.raises(IgtlProtocolError) as bad:
        check_crc(header, body)
    assert bad.value.kind == "crc"


@pytest.mark.parametrize("pixels, reason", [
    (np.zeros((4, 4), np.int16), "scalar_type"),
    (np.zeros((4, 4), np.uint32), "scalar_type"),
    (np.zeros((4, 4, 2), np.uint8), "components"),
    (np.zeros((3, 4, 4, 1), np.uint8), "volume"),
])
def test_frame_image_refuses_what_nerveseg_does_not_take_with_the_reason(pixels, reason):
    decoded = decode_image(*_split(encode_image(pixels)))
    with pytest.raises(ImageRefused) as refused:
        frame_image(decoded)
    assert refused.value.reason == reason
    assert "Image_Reference" in str(refused.value)


def test_frame_image_keeps_uint8_uint16_float32_and_turns_float64_into_float32():
    for dtype, expected in ((np.uint8, np.uint8), (np.uint16, np.uint16), (np.float32, np.float32),
                            (np.float64, np.float32)):
        image = frame_image(decode_image(*_split(encode_image(np.ones((3, 5), dtype)))))
        assert image.shape == (3, 5) and image.dtype == expected
    rgb = frame_image(decode_image(*_split(encode_image(np.ones((3, 5, 3), np.uint8)))))
    assert rgb.shape == (3, 5, 3)


def test_pixel_data_of_the_wrong_length_is_refused():
    message = bytearray(encode_image(np.zeros((4, 4), np.uint8)))
    truncated_body = bytes(message[HEADER_SIZE:-3])
    wire = codec.pack_message("IMAGE", "Image_Reference", 0.0, truncated_body)
    with pytest.raises(ImageRefused) as refused:
        decode_image(*_split(wire))
    assert refused.value.reason == "size"


def test_other_message_types_encode_with_valid_headers_and_crc():
    for message, kind in ((encode_transform(np.eye(4)), "TRANSFORM"), (encode_string("hello"), "STRING"),
                          (encode_status(status="ok"), "STATUS")):
        header, body = _split(message)
        assert header.message_type == kind
        check_crc(header, body)


def test_pyigtl_reads_our_bytes_and_we_read_pyigtl_bytes():
    import pyigtl

    pixels = np.arange(7 * 9, dtype=np.uint8).reshape(7, 9)
    ours = encode_image(pixels, OBLIQUE, device_name="Image_Reference", timestamp=1234.5)
    header_fields = pyigtl.MessageBase.parse_header(ours[:HEADER_SIZE])
    theirs = pyigtl.ImageMessage()
    theirs.unpack(header_fields, ours[HEADER_SIZE:])
    np.testing.assert_array_equal(theirs.image[0], pixels)
    np.testing.assert_allclose(theirs.ijk_to_world_matrix, OBLIQUE.ijk_to_ras(), atol=1e-4)
    assert theirs.device_name == "Image_Reference" and theirs.timestamp == pytest.approx(1234.5)

    # pyigtl's packer (LPS by default, k-j-i axes): a (1, 7, 9) volume with our geometry in LPS.
    lps = np.diag([-1.0, -1.0, 1.0, 1.0]) @ OBLIQUE.ijk_to_ras()
    packed = pyigtl.ImageMessage(pixels[np.newaxis], ijk_to_world_matrix=lps, device_name="US",
                                 timestamp=99.0).pack()
    header, body = _split(packed)
    check_crc(header, body)  # pyigtl computes the CRC correctly when sending
    decoded = decode_image(header, body)
    np.testing.assert_array_equal(frame_image(decoded), pixels)
    np.testing.assert_allclose(decoded.geometry.origin, OBLIQUE.origin, atol=1e-4)
    np.testing.assert_allclose(decoded.geometry.spacing, OBLIQUE.spacing, rtol=1e-5)
