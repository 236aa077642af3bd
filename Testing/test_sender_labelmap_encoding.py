"""The labelmap send path: one copy of the pixels, the same bytes as the general IMAGE encoder."""

import numpy as np
import pytest

from NerveSegLogic.frame import ImageGeometry
from NerveSegLogic.stream.codec import encode_image
from NerveSegLogic.stream.sender import encode_labelmap


@pytest.mark.parametrize("shape", [(420, 580), (1, 1), (3, 7), (512, 534)])
def test_labelmap_message_is_byte_for_byte_the_image_encoders(shape):
    rng = np.random.default_rng(sum(shape))
    labelmap = rng.integers(0, 3, size=shape, dtype=np.uint8)
    geometry = ImageGeometry(spacing=(0.1, 0.2, 1.0), origin=(5.0, -3.0, 2.0))
    for geo in (geometry, None):
        fast = encode_labelmap(labelmap, geo, "NerveSegLabel", 1796117150.25)
        assert bytes(fast) == encode_image(labelmap, geo, device_name="NerveSegLabel", timestamp=1796117150.25)


def test_a_strided_view_is_sent_as_its_pixels():
    big = np.arange(40 * 60, dtype=np.uint8).reshape(40, 60)
    view = big[::2, 5:45]
    assert bytes(encode_labelmap(view, None, "L", 0.0)) == encode_image(np.ascontiguousarray(view), None,
                                                                         device_name="L", timestamp=0.0)


def test_each_message_is_a_new_buffer():
    labelmap = np.zeros((4, 4), dtype=np.uint8)
    first = encode_labelmap(labelmap, None, "L", 1.0)
    labelmap[:] = 2
    second = encode_labelmap(labelmap, None, "L", 1.0)
    assert first is not second and bytes(first) != bytes(second)
    assert bytes(first) == encode_image(np.zeros((4, 4), dtype=np.uint8), None, device_name="L", timestamp=1.0)


def test_too_large_a_labelmap_is_refused():
    with pytest.raises(ValueError, match="65535"):
        encode_labelmap(np.zeros((1, 70000), dtype=np.uint8), None, "L", 0.0)


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16, np.int16, np.float32, np.float64, ">u2", ">f4"])
@pytest.mark.parametrize("shape", [(420, 580), (5, 3), (6, 4, 3)])
def test_frame_message_is_byte_for_byte_the_image_encoders(dtype, shape):
    """The replay server's frames (grey or RGB, any IGTL scalar type, either byte order) go out through the one-copy
    encoder: the same bytes as encode_image, pixels little-endian."""
    from NerveSegLogic.stream.codec import encode_frame_message

    image = (np.random.default_rng(len(shape)).random(shape) * 1000).astype(dtype)
    geometry = ImageGeometry(spacing=(0.3, 0.3, 1.0), origin=(1.0, 2.0, -4.0))
    for frame in (image, image[::-1, ::2]):
        for geo in (geometry, None):
            expected = encode_image(np.ascontiguousarray(frame), geo, device_name="Image_Reference", timestamp=12.5)
            assert bytes(encode_frame_message(frame, geo, "Image_Reference", 12.5)) == expected


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16, np.float32, ">u2"])
@pytest.mark.parametrize("shape", [(420, 580), (6, 4, 3)])
def test_frame_parts_are_the_image_encoders_bytes_and_refer_to_the_frame_when_they_can(dtype, shape):
    """encode_frame_parts (what serve and the replay server send): headers + pixels, together the bytes of
    encode_image; a C-contiguous little-endian frame's pixels are its own memory (no copy), others are converted."""
    from NerveSegLogic.stream.codec import encode_frame_parts

    image = (np.random.default_rng(3).random(shape) * 1000).astype(dtype)
    geometry = ImageGeometry(spacing=(0.3, 0.3, 1.0), origin=(1.0, 2.0, -4.0))
    for frame in (image, image[::-1, ::2]):
        head, pixels = encode_frame_parts(frame, geometry, "Image_Reference", 12.5)
        expected = encode_image(np.ascontiguousarray(frame), geometry, device_name="Image_Reference", timestamp=12.5)
        assert bytes(head) + bytes(pixels) == expected
        own = frame.flags.c_contiguous and frame.dtype.byteorder != ">"
        assert np.shares_memory(np.frombuffer(pixels, np.uint8), frame) == own


def test_frame_message_refuses_what_encode_image_refuses():
    from NerveSegLogic.stream.codec import encode_frame_message

    with pytest.raises(ValueError, match="dtype"):
        encode_frame_message(np.zeros((4, 4), bool), None, "F", 0.0)
    with pytest.raises(ValueError, match=r"\(H, W\)"):
        encode_frame_message(np.zeros((2, 4, 4, 1), np.uint8), None, "F", 0.0)
    with pytest.raises(ValueError, match="65535"):
        encode_frame_message(np.zeros((0, 4), np.uint8), None, "F", 0.0)
