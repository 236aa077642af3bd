"""Training augmentations of an ultrasound frame and its label mask, applied jointly (numpy + OpenCV, seeded).

Each augmentation is ``fn(image, mask, rng) -> (image, mask)``: ``image`` (H, W) uint8 grey, ``mask`` (H, W) uint8
labels, ``rng`` a ``numpy.random.Generator``. Shapes and dtypes are kept; geometric ones move the mask with the image
using nearest-neighbour sampling, so the mask only ever holds label values it had (or 0 where the frame moved in
from outside). Names are those of the model cards' ``training.recipe.augmentations``:

- ``gamma`` (Smistad): intensity ``I' = 255 (I / 255) ** g``, g log-uniform in [0.5, 2].
- ``rotation`` (Smistad): up to +-10 degrees about the frame centre.
- ``gaussian_shadow`` (Smistad): multiply by ``1 - s * exp(-d^2 / 2 sigma^2)``, a dark elliptic blob
  (strength s in [0.3, 0.8], sigma 10-40 % of the frame), as an acoustic shadow darkens tissue.
- ``depth_cut`` (Smistad): the frame below a random depth (60-95 % of its height) is blanked in image and mask,
  as if the scanner's depth were set shallower.
- ``jpeg`` (Smistad): JPEG compression at quality 10-60, the artefacts of a compressed video link.
- ``elastic`` (Smistad): a smooth random displacement field (up to 3 % of the frame size, smoothness 10 % of it).
- ``shear`` (Kim): shear along x and along y, each up to +-15 degrees, about the frame centre.
- ``flip``: left-right mirror (Smistad tested it; Wu's "horizontal flip").
- ``vertical_flip`` (Wu): top-bottom mirror.
- ``diagonal_flip`` (Wu): mirror about the main diagonal (rows and columns swapped); a frame that is not square is
  resized back to its own shape afterwards, so shapes are kept (Wu's inputs are square; usgra-seg's frames are
  512x512 to 632x761, so the stretch is at most 20 %).
- ``affine``: a small similarity transform: rotation up to +-10 degrees, scale 0.9-1.1, shift up to 5 % of the
  frame, about the frame centre (the effnet-unet recipe).

:class:`Augmenter` applies a recipe's list, each one with probability ``p`` (default 0.5) in the listed order.
"""

from __future__ import annotations

import math
from typing import Callable, Dict, Iterable, List, Optional, Sequence, Tuple

import cv2
import numpy as np

Pair = Tuple[np.ndarray, np.ndarray]
Augmentation = Callable[[np.ndarray, np.ndarray, np.random.Generator], Pair]

MAX_ROTATION_DEG = 10.0
MAX_SHEAR_DEG = 15.0


def _check(image: np.ndarray, mask: np.ndarray) -> None:
    if image.ndim != 2 or image.dtype != np.uint8:
        raise ValueError(f"augmentations take an (H, W) uint8 grey image, got {image.shape} {image.dtype}")
    if mask.shape != image.shape:
        raise ValueError(f"mask shape {mask.shape} differs from image shape {image.shape}")


def _warp_affine(image: np.ndarray, mask: np.ndarray, matrix: np.ndarray) -> Pair:
    height, width = image.shape
    warped = cv2.warpAffine(image, matrix, (width, height), flags=cv2.INTER_LINEAR,
                            borderMode=cv2.BORDER_CONSTANT, borderValue=0)
    warped_mask = cv2.warpAffine(mask, matrix, (width, height), flags=cv2.INTER_NEAREST,
                                 borderMode=cv2.BORDER_CONSTANT, borderValue=0)
    return warped, warped_mask


def gamma(image: np.ndarray, mask: np.ndarray, rng: np.random.Generator) -> Pair:
    """Gamma intensity transform, g log-uniform in [0.5, 2]; the mask is unchanged."""
    _check(image, mask)
    g = math.exp(rng.uniform(math.log(0.5), math.log(2.0)))
    table = np.clip(np.rint(255.0 * (np.arange(256) / 255.0) ** g), 0, 255).astype(np.uint8)
    return cv2.LUT(image, table), mask


def rotation(image: np.ndarray, mask: np.ndarray, rng: np.random.Generator,
             max_degrees: float = MAX_ROTATION_DEG) -> Pair:
    """Rotation by an angle uniform in [-max_degrees, max_degrees] about the frame centre."""
    _check(image, mask)
    height, width = image.shape
    angle = rng.uniform(-max_degrees, max_degrees)
    matrix = cv2.getRotationMatrix2D(((width - 1) / 2.0, (height - 1) / 2.0), angle, 1.0)
    return _warp_affine(image, mask, matrix)


def shear(image: np.ndarray, mask: np.ndarray, rng: np.random.Generator,
          max_degrees: float = MAX_SHEAR_DEG) -> Pair:
    """Shear along both axes about the frame centre, as Kim et al. state it (x and y, +-15 degrees):
    x' = x + tan(a) (y - cy), y' = y + tan(b) (x - cx), a and b independent, uniform in [-max_degrees, max_degrees].
    A vertical line through the centre leans by a, a horizontal one by b."""
    _check(image, mask)
    height, width = image.shape
    along_x, along_y = (math.tan(math.radians(rng.uniform(-max_degrees, max_degrees))) for _ in range(2))
    centre_x, centre_y = (width - 1) / 2.0, (height - 1) / 2.0
    matrix = np.array([[1.0, along_x, -along_x * centre_y], [along_y, 1.0, -along_y * centre_x]])
    return _warp_affine(image, mask, matrix)


def gaussian_shadow(image: np.ndarray, mask: np.ndarray, rng: np.random.Generator) -> Pair:
    """Darken an elliptic Gaussian blob at a random place; the mask is unchanged."""
    _check(image, mask)
    height, width = image.shape
    strength = rng.uniform(0.3, 0.8)
    centre_y, centre_x = rng.uniform(0, height), rng.uniform(0, width)
    sigma_y, sigma_x = rng.uniform(0.1, 0.4) * height, rng.uniform(0.1, 0.4) * width
    rows = ((np.arange(height, dtype=np.float32) - centre_y) / sigma_y) ** 2
    cols = ((np.arange(width, dtype=np.float32) - centre_x) / sigma_x) ** 2
    shade = 1.0 - strength * np.exp(-0.5 * (rows[:, None] + cols[None, :]))
    return np.clip(np.rint(image.astype(np.float32) * shade), 0, 255).astype(np.uint8), mask


def depth_cut(image: np.ndarray, mask: np.ndarray, rng: np.random.Generator) -> Pair:
    """Blank every row from a random depth (60-95 % of the height) down, in image and mask."""
    _check(image, mask)
    height = image.shape[0]
    cut = int(round(rng.uniform(0.6, 0.95) * height))
    image, mask = image.copy(), mask.copy()
    image[cut:] = 0
    mask[cut:] = 0
    return image, mask


def jpeg(image: np.ndarray, mask: np.ndarray, rng: np.random.Generator) -> Pair:
    """JPEG-compress and decode at a quality uniform in [10, 60]; the mask is unchanged."""
    _check(image, mask)
    quality = int(rng.integers(10, 61))
    ok, encoded = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, quality])
    if not ok:
        raise RuntimeError("OpenCV could not JPEG-encode the frame")
    return cv2.imdecode(encoded, cv2.IMREAD_GRAYSCALE), mask


def elastic(image: np.ndarray, mask: np.ndarray, rng: np.random.Generator,
            magnitude: float = 0.03, smoothness: float = 0.1) -> Pair:
    """Smooth random deformation: displacements up to ``magnitude`` x the frame's smaller side, Gaussian-smoothed
    with sigma ``smoothness`` x that side (computed on a coarse grid, then resized, for speed)."""
    _check(image, mask)
    height, width = image.shape
    side = min(height, width)
    step = max(1, side // 32)  # coarse grid: the field is smooth at this scale anyway
    small = (max(2, height // step), max(2, width // step))
    sigma = max(1.0, smoothness * side / step)
    fields = []
    for _ in range(2):
        field = cv2.GaussianBlur(rng.uniform(-1.0, 1.0, small).astype(np.float32), (0, 0), sigma)
        peak = float(np.abs(field).max()) or 1.0
        fields.append(cv2.resize(field / peak * magnitude * side, (width, height), interpolation=cv2.INTER_LINEAR))
    grid_y, grid_x = np.mgrid[0:height, 0:width].astype(np.float32)
    map_x, map_y = grid_x + fields[0], grid_y + fields[1]
    warped = cv2.remap(image, map_x, map_y, cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT, borderValue=0)
    warped_mask = cv2.remap(mask, map_x, map_y, cv2.INTER_NEAREST, borderMode=cv2.BORDER_CONSTANT, borderValue=0)
    return warped, warped_mask


def affine(image: np.ndarray, mask: np.ndarray, rng: np.random.Generator, max_degrees: float = MAX_ROTATION_DEG,
           max_scale: float = 0.1, max_shift: float = 0.05) -> Pair:
    """Rotation uniform in +-``max_degrees``, scale uniform in 1 +- ``max_scale`` and a shift uniform in
    +-``max_shift`` of the width and height, about the frame centre."""
    _check(image, mask)
    height, width = image.shape
    angle = rng.uniform(-max_degrees, max_degrees)
    scale = rng.uniform(1.0 - max_scale, 1.0 + max_scale)
    matrix = cv2.getRotationMatrix2D(((width - 1) / 2.0, (height - 1) / 2.0), angle, scale)
    matrix[0, 2] += rng.uniform(-max_shift, max_shift) * width
    matrix[1, 2] += rng.uniform(-max_shift, max_shift) * height
    return _warp_affine(image, mask, matrix)


def flip(image: np.ndarray, mask: np.ndarray, rng: np.random.Generator) -> Pair:
    """Left-right mirror of image and mask (``rng`` unused; :class:`Augmenter` decides whether to apply it)."""
    _check(image, mask)
    return np.ascontiguousarray(image[:, ::-1]), np.ascontiguousarray(mask[:, ::-1])


def vertical_flip(image: np.ndarray, mask: np.ndarray, rng: np.random.Generator) -> Pair:
    """Top-bottom mirror of image and mask (``rng`` unused)."""
    _check(image, mask)
    return np.ascontiguousarray(image[::-1]), np.ascontiguousarray(mask[::-1])


def diagonal_flip(image: np.ndarray, mask: np.ndarray, rng: np.random.Generator) -> Pair:
    """Mirror about the main diagonal (the transpose) of image and mask (``rng`` unused); a frame that is not square
    is resized back to its (H, W) afterwards, linearly for the image and nearest-neighbour for the mask."""
    _check(image, mask)
    height, width = image.shape
    image, mask = np.ascontiguousarray(image.T), np.ascontiguousarray(mask.T)
    if height != width:
        image = cv2.resize(image, (width, height), interpolation=cv2.INTER_LINEAR)
        mask = cv2.resize(mask, (width, height), interpolation=cv2.INTER_NEAREST)
    return image, mask


AUGMENTATIONS: Dict[str, Augmentation] = {
    "gamma": gamma,
    "rotation": rotation,
    "gaussian_shadow": gaussian_shadow,
    "depth_cut": depth_cut,
    "jpeg": jpeg,
    "elastic": elastic,
    "shear": shear,
    "flip": flip,
    "vertical_flip": vertical_flip,
    "diagonal_flip": diagonal_flip,
    "affine": affine,
}


class Augmenter:
    """Applies the named augmentations in order, each with probability ``probability``.

    Raises ValueError for an unknown name, listing the known ones.
    """

    def __init__(self, names: Iterable[str], probability: float = 0.5,
                 settings: Optional[Dict[str, Dict[str, float]]] = None):
        self.names: List[str] = [str(n) for n in names]
        self.settings = {k: dict(v) for k, v in (settings or {}).items()}
        unknown = [n for n in self.names if n not in AUGMENTATIONS]
        if unknown:
            raise ValueError(f"unknown augmentation(s) {unknown}; known: {', '.join(sorted(AUGMENTATIONS))}")
        if not 0.0 <= probability <= 1.0:
            raise ValueError(f"augmentation probability must be in [0, 1], got {probability}")
        self.probability = float(probability)

    def __call__(self, image: np.ndarray, mask: np.ndarray, rng: np.random.Generator) -> Pair:
        for name in self.names:
            if rng.random() < self.probability:
                image, mask = AUGMENTATIONS[name](image, mask, rng, **self.settings.get(name, {}))
        return image, mask

    @classmethod
    def from_recipe(cls, recipe: Dict) -> "Augmenter":
        """From a card's ``training.recipe``: ``augmentations`` (names), optional ``augmentation_probability``,
        ``rotation_degrees`` and ``shear_degrees`` (the largest angles)."""
        settings: Dict[str, Dict[str, float]] = {}
        if recipe.get("rotation_degrees") is not None:
            settings["rotation"] = {"max_degrees": float(recipe["rotation_degrees"])}
        if recipe.get("shear_degrees") is not None:
            settings["shear"] = {"max_degrees": float(recipe["shear_degrees"])}
        return cls(recipe.get("augmentations", []), float(recipe.get("augmentation_probability", 0.5)), settings)

    def __repr__(self) -> str:
        return f"Augmenter({self.names}, probability={self.probability})"


def overlay(image: np.ndarray, mask: np.ndarray, colors: Optional[Dict[int, Sequence[int]]] = None,
            alpha: float = 0.45) -> np.ndarray:
    """(H, W, 3) uint8 RGB picture of a grey frame with its labels tinted (label 1 yellow, 2 red, others blue)."""
    colors = colors or {1: (244, 214, 49), 2: (216, 101, 79)}
    rgb = np.repeat(image[:, :, None], 3, axis=2).astype(np.float32)
    for label in np.unique(mask):
        if label == 0:
            continue
        color = np.array(colors.get(int(label), (0, 151, 206)), dtype=np.float32)
        where = mask == label
        rgb[where] = (1 - alpha) * rgb[where] + alpha * color
    return np.clip(rgb, 0, 255).astype(np.uint8)


def augmentation_grid(image: np.ndarray, mask: np.ndarray, names: Sequence[str] = tuple(AUGMENTATIONS),
                      seed: int = 0, examples: int = 3, tile: int = 200) -> np.ndarray:
    """An RGB picture to look at: one row per augmentation (the original first), ``examples`` seeded draws each,
    every tile the frame with its mask tinted, the augmentation's name written on the row."""
    def fit(picture: np.ndarray) -> np.ndarray:
        return cv2.resize(picture, (tile, int(round(tile * picture.shape[0] / picture.shape[1]))),
                          interpolation=cv2.INTER_AREA)

    rows = []
    for name in ["original", *names]:
        tiles = []
        for example in range(examples):
            rng = np.random.default_rng([seed, example, len(rows)])
            out = (image, mask) if name == "original" else AUGMENTATIONS[name](image, mask, rng)
            picture = fit(overlay(*out))
            cv2.putText(picture, name, (4, 16), cv2.FONT_HERSHEY_SIMPLEX, 0.5, (255, 255, 255), 1, cv2.LINE_AA)
            tiles.append(picture)
        rows.append(np.concatenate(tiles, axis=1))
    return np.concatenate(rows, axis=0)
