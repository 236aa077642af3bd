"""Reading and writing image files with every failure turned into an error that names the file.

``cv2.imread`` returns None for a missing, unreadable or corrupt file and ``cv2.imwrite`` returns False when the
disk is full or the folder is read-only: unchecked, a batch reports files that were never written. These wrappers
check both, and refuse an image outside :mod:`NerveSegLogic.imaging.bounds` from its header, before decoding it.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Union

import numpy as np

from .bounds import ImageTooLarge, check_image_size

PathLike = Union[str, os.PathLike]


class ImageFileError(OSError):
    """An image file could not be read or written; the message names the file and why."""


def read_image_file(path: PathLike) -> np.ndarray:
    """Pixels of an image file as OpenCV reads them with IMREAD_UNCHANGED (colour in BGR order).

    Raises ImageFileError for a missing or undecodable file, or one whose header announces an image outside the
    bounds (checked with Pillow, which reads only the header, before OpenCV decodes anything).
    """
    import cv2
    from PIL import Image, UnidentifiedImageError

    path = Path(path)
    if not path.is_file():
        raise ImageFileError(f"{path}: no such image file")
    try:
        with Image.open(path) as header:
            height, width = header.height, header.width
    except (OSError, UnidentifiedImageError, ValueError):
        height = width = None  # a format Pillow does not know: OpenCV may still read it, and cv2's own limit holds
    if height is not None:
        try:
            check_image_size(height, width, str(path))
        except ImageTooLarge as error:
            raise ImageFileError(str(error)) from None
    image = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if image is None or image.size == 0:
        raise ImageFileError(f"{path}: not a readable image (missing, truncated or corrupt)")
    try:
        check_image_size(image.shape[0], image.shape[1], str(path))
    except ImageTooLarge as error:
        raise ImageFileError(str(error)) from None
    return image


def write_image_file(path: PathLike, image: np.ndarray) -> Path:
    """Write ``image`` with ``cv2.imwrite`` (format from the suffix); ImageFileError, and no partial file left, when
    OpenCV reports a failure (full disk, read-only folder, unsupported format)."""
    import cv2

    path = Path(path)
    try:
        ok = cv2.imwrite(str(path), image)
    except cv2.error as error:
        ok, reason = False, str(error).strip().splitlines()[-1]
    else:
        reason = "the disk may be full or the folder read-only"
    if not ok:
        try:
            path.unlink()
        except OSError:
            pass
        raise ImageFileError(f"{path}: could not be written ({reason})")
    return path
