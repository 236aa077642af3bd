"""Reading and writing single image files (PNG, TIFF, JPEG, BMP) for the readers and writers, with Pillow.

Pillow rather than OpenCV because masks are often palette images: Pillow returns their class indices, OpenCV would
expand them to colours. Every function raises :class:`DatasetError` naming the file.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional, Sequence, Tuple

import numpy as np

from .dataset import DatasetError
from ..imaging.bounds import check_image_size, ImageTooLarge

IMAGE_SUFFIXES = (".png", ".tif", ".tiff", ".jpg", ".jpeg", ".bmp")


def _open(path: Path):
    from PIL import Image, UnidentifiedImageError

    try:
        image = Image.open(path)
        try:  # the header gives the size: refuse a huge or absurdly shaped image before decoding its pixels
            check_image_size(image.height, image.width, str(path))
        except ImageTooLarge as error:
            image.close()
            raise DatasetError(str(error)) from None
        image.load()
    except FileNotFoundError:
        raise DatasetError(f"{path}: file not found") from None
    except (OSError, UnidentifiedImageError, ValueError) as error:
        raise DatasetError(f"{path}: unreadable image file ({error})") from None
    if getattr(image, "n_frames", 1) > 1:
        raise DatasetError(f"{path}: holds {image.n_frames} pages/frames; expected one 2D image")
    return image


def read_image(path: Path) -> np.ndarray:
    """Pixels of an image file: (H, W) uint8/uint16 grey or (H, W, 3|4) colour as stored."""
    image = _open(Path(path))
    if image.mode == "P":
        image = image.convert("RGBA" if "transparency" in image.info else "RGB")
    elif image.mode in ("1", "LA"):
        image = image.convert("L")
    elif image.mode in ("CMYK", "YCbCr", "HSV", "LAB"):
        image = image.convert("RGB")
    array = np.asarray(image)
    if image.mode.startswith("I;16"):
        array = array.astype(np.uint16)
    return array


def read_label_image(path: Path) -> np.ndarray:
    """Class indices of a mask file: palette images give their indices, grey images their values, binary (1-bit)
    images 0/255. A colour image is accepted only when it is grey (R = G = B), else DatasetError: colour-coded
    masks need their colours mapped to labels first."""
    path = Path(path)
    image = _open(path)
    if image.mode == "1":
        image = image.convert("L")
    array = np.asarray(image)
    if array.ndim == 3:
        channels = array[:, :, :3]
        if not (np.array_equal(channels[:, :, 0], channels[:, :, 1])
                and np.array_equal(channels[:, :, 0], channels[:, :, 2])):
            raise DatasetError(f"{path}: mask is a colour image ({image.mode}); expected one class index per pixel "
                               "(a palette or grey PNG/TIFF)")
        array = channels[:, :, 0]
    if image.mode.startswith("I;16"):
        array = array.astype(np.uint16)
    return array


def image_size(path: Path) -> Tuple[int, int]:
    """(width, height) from the file header, without decoding the pixels."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as image:
            return image.size
    except (OSError, UnidentifiedImageError) as error:
        raise DatasetError(f"{path}: unreadable image file ({error})") from None


def palette_for(colors: Sequence[Tuple[int, int, int]]) -> list:
    """A 256-entry Pillow palette: 0 black, label l coloured ``colors[l - 1]``, the rest grey ramps (visible)."""
    palette = []
    for index in range(256):
        if index == 0:
            rgb = (0, 0, 0)
        elif index <= len(colors):
            rgb = tuple(int(c) for c in colors[index - 1])
        else:
            rgb = (index, index, index)
        palette.extend(rgb)
    return palette


def write_image(path: Path, image: np.ndarray, compress_level: int = 1) -> None:
    """Write a grey (H, W) uint8/uint16 image as PNG or TIFF (by suffix). ``compress_level`` 0..9 for PNG (1 is
    several times faster than 6 for a few per cent more bytes)."""
    from PIL import Image

    path = Path(path)
    if image.ndim != 2:
        raise DatasetError(f"{path}: can only write grey (H, W) images, got shape {image.shape}")
    size = (image.shape[1], image.shape[0])
    if image.dtype == np.uint16:
        pil = Image.frombytes("I;16", size, np.ascontiguousarray(image, dtype="<u2").tobytes())
    elif image.dtype == np.uint8:
        pil = Image.frombytes("L", size, np.ascontiguousarray(image).tobytes())
    else:
        raise DatasetError(f"{path}: can only write uint8 or uint16 images, got {image.dtype}")
    _save(pil, path, compress_level)


def write_label_image(path: Path, mask: np.ndarray, colors: Sequence[Tuple[int, int, int]],
                      compress_level: int = 1) -> None:
    """Write a (H, W) uint8 class-index mask as a palette PNG or TIFF, so a person sees the classes in colour while
    tools read the indices."""
    from PIL import Image

    if mask.dtype != np.uint8 or mask.ndim != 2:
        raise DatasetError(f"{path}: a mask must be (H, W) uint8 class indices, got {mask.dtype} {mask.shape}")
    # frombytes keeps the indices as they are (converting an "L" image to "P" would re-quantise them).
    pil = Image.frombytes("P", (mask.shape[1], mask.shape[0]), np.ascontiguousarray(mask).tobytes())
    pil.putpalette(palette_for(colors))
    _save(pil, Path(path), compress_level)


def _save(pil, path: Path, compress_level: int) -> None:
    suffix = path.suffix.lower()
    if suffix == ".png":
        pil.save(path, format="PNG", compress_level=compress_level)
    elif suffix in (".tif", ".tiff"):
        pil.save(path, format="TIFF", compression="tiff_deflate" if compress_level else None)
    else:
        raise DatasetError(f"{path}: writing {suffix} is not supported; use .png or .tif")


def find_partner(folder: Path, stem: str, suffixes: Sequence[str] = IMAGE_SUFFIXES) -> Optional[Path]:
    """The file ``folder/stem<suffix>`` for the first suffix that exists (any case), or None."""
    for suffix in suffixes:
        for candidate in (folder / f"{stem}{suffix}", folder / f"{stem}{suffix.upper()}"):
            if candidate.is_file():
                return candidate
    return None
