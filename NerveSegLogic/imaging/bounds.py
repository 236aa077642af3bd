"""Bounds on the size of every image NerveSeg accepts, checked before anything is allocated for it.

A small message can announce an image whose processing costs gigabytes: a 1 x 65,535 uint8 frame is 65 KB on the
wire, but scaling its width to the model's input width multiplies its height by the same factor (256 x 16.7 M
pixels). So the live path (receiver, preprocessing) and the offline readers (``predict``, annotation import) refuse
an image that is too large in total, too long on one side, or too far from a screen-like shape, with a message
saying which bound it broke.

Ultrasound frames are at most a few megapixels and rarely further from square than 3:1 (a scanner screen with two
images side by side); the bounds below leave a wide margin above that.
"""

from __future__ import annotations

#: Longest side accepted (pixels).
MAX_SIDE_PX = 8192
#: Most pixels accepted in one frame (an 8K UHD screen is 33 M).
MAX_PIXELS = 40_000_000
#: Largest ratio of the longer side to the shorter side.
MAX_ASPECT = 16.0


class ImageTooLarge(ValueError):
    """An image outside the bounds above. ``reason`` is ``size`` (a side or the pixel count) or ``aspect``."""

    def __init__(self, reason: str, message: str):
        super().__init__(message)
        self.reason = reason


def check_image_size(height: int, width: int, what: str = "image") -> None:
    """Raise ImageTooLarge unless a ``height`` x ``width`` image (pixels) is inside the bounds.

    ``what`` names the image in the message (a file, an IGTL device). Empty images are the caller's to refuse.
    """
    height, width = int(height), int(width)
    if height <= 0 or width <= 0:
        return
    if max(height, width) > MAX_SIDE_PX:
        raise ImageTooLarge("size", f"{what}: {width} x {height} pixels (width x height); each side must be at most "
                                    f"{MAX_SIDE_PX} pixels")
    if height * width > MAX_PIXELS:
        raise ImageTooLarge("size", f"{what}: {width} x {height} = {height * width} pixels; at most {MAX_PIXELS} are "
                                    "taken")
    aspect = max(height, width) / min(height, width)
    if aspect > MAX_ASPECT:
        raise ImageTooLarge("aspect", f"{what}: {width} x {height} pixels (width x height) has an aspect ratio of "
                                      f"{aspect:.0f}:1; at most {MAX_ASPECT:.0f}:1 is taken")
