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
