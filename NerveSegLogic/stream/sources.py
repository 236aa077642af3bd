"""Recorded frames for the replay server: image folders, video files, Slicer sequence files, the bundled sample.

Every source yields :class:`SourceFrame` items, one pass per iteration (iterate again to loop), each with its pixels
((H, W) grey or (H, W, 3) RGB, uint8 / uint16 / float32) and its geometry (RAS mm, origin = centre of pixel 0).

- :class:`ImageFolderSource`: PNG, JPEG, TIFF or BMP files in a folder, sorted by name. No spacing in those files:
  the caller gives it (default 1 mm, with a warning).
- :class:`VideoSource`: any file OpenCV's VideoCapture opens (mp4, avi, ...); its own frame rate is kept.
- :class:`SequenceFileSource`: a Slicer volume sequence (``.seq.nrrd``) or any 2D+t NRRD, read with pynrrd; spacing,
  directions and origin from the NRRD header (LPS turned into RAS), the frame rate from the time axis when given.
- :func:`open_source` picks one from a path; a folder with ``sample.json`` (Resources/Sample) takes its spacing and
  rate from there.

OpenCV is imported inside the functions that need it.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, List, Optional, Protocol, Sequence, Tuple, Union

import numpy as np

from NerveSegLogic.frame import ImageGeometry
from ..imaging.placement import to_grey
from ..resources import sample_dir

logger = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp")
VIDEO_SUFFIXES = (".mp4", ".avi", ".mov", ".mkv", ".m4v", ".mpg", ".mpeg", ".wmv", ".webm")
COLOR_MODES = ("grey", "rgb")


@dataclass
class SourceFrame:
    """One recorded frame: ``image`` (H, W) or (H, W, 3) RGB, its geometry, and a name for messages."""

    image: np.ndarray
    geometry: ImageGeometry
    name: str


class FrameSource(Protocol):
    """What the replay server needs from a recording. Each frame's ``image`` must not be written to after it was
    yielded (a new array, or a view of data nothing changes): the replay server sends the array's own memory, and
    a message may wait in a slow client's backlog for half a second."""

    description: str
    fps: Optional[float]  # the recording's own rate (frames/s) when it has one

    def __len__(self) -> int:  # frames in one pass (a video's count may be approximate)
        ...

    def __iter__(self) -> Iterator[SourceFrame]:  # one pass, from the first frame
        ...


def _spacing_xyz(spacing_mm: Union[None, float, Sequence[float]], default: Tuple[float, float, float]):
    if spacing_mm is None:
        return default
    if np.isscalar(spacing_mm):
        return (float(spacing_mm), float(spacing_mm), default[2])
    values = [float(v) for v in spacing_mm]
    if len(values) == 2:
        values.append(default[2])
    if len(values) != 3:
        raise ValueError(f"spacing must be one, two or three numbers (mm), got {spacing_mm}")
    return tuple(values)


def _colour(image: np.ndarray, color: str, name: str) -> np.ndarray:
    """BGR(A) from OpenCV -> RGB, or grey; grey input stays grey."""
    import cv2

    if image.ndim == 2:
        return image
    if image.ndim != 3 or image.shape[2] not in (1, 3, 4):
        raise ValueError(f"{name}: expected a grey or colour image, got shape {image.shape}")
    if image.shape[2] == 1:
        return image[:, :, 0]
    rgb = cv2.cvtColor(image, cv2.COLOR_BGRA2RGB if image.shape[2] == 4 else cv2.COLOR_BGR2RGB)
    return rgb if color == "rgb" else to_grey(rgb)


def _check_color(color: str) -> str:
    if color not in COLOR_MODES:
        raise ValueError(f"color must be one of {COLOR_MODES}, got {color!r}")
    return color


class ImageFolderSource:
    """The image files of a folder, sorted by name.

    spacing_mm: pixel size (one number for i and j, or two/three numbers); 1 mm with a warning when None.
    color: ``grey`` (colour files made grey by luminance) or ``rgb`` (kept as 3 components).
    Raises FileNotFoundError / ValueError naming the folder when it has no images.
    """

    def __init__(self, folder: Union[str, Path], spacing_mm=None, color: str = "grey", fps: Optional[float] = None):
        self.folder = Path(folder)
        if not self.folder.is_dir():
            raise FileNotFoundError(f"image folder {self.folder} does not exist")
        self.files: List[Path] = sorted(p for p in self.folder.iterdir()
                                        if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
        if not self.files:
            raise ValueError(f"no images ({', '.join(IMAGE_SUFFIXES)}) in folder {self.folder}")
        if spacing_mm is None:
            logger.warning("%s: image files carry no pixel spacing; sending 1.0 mm (give a spacing to set it)",
                           self.folder)
        self.spacing = _spacing_xyz(spacing_mm, (1.0, 1.0, 1.0))
        self.color = _check_color(color)
        self.fps = fps
        self.description = f"{len(self.files)} images in {self.folder}"

    def __len__(self) -> int:
        return len(self.files)

    def __iter__(self) -> Iterator[SourceFrame]:
        import cv2

        geometry = ImageGeometry(spacing=self.spacing)
        for path in self.files:
            image = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
            if image is None:
                raise ValueError(f"cannot read image {path} (OpenCV could not decode it)")
            yield SourceFrame(_colour(image, self.color, str(path)), geometry, path.name)


class VideoSource:
    """The frames of a video file (anything OpenCV's VideoCapture decodes); ``fps`` is the file's own rate."""

    def __init__(self, path: Union[str, Path], spacing_mm=None, color: str = "grey"):
        import cv2

        self.path = Path(path)
        if not self.path.is_file():
            raise FileNotFoundError(f"video file {self.path} does not exist")
        capture = cv2.VideoCapture(str(self.path))
        try:
            if not capture.isOpened():
                raise ValueError(f"cannot open video {self.path} (OpenCV could not decode it)")
            fps = capture.get(cv2.CAP_PROP_FPS)
            self.fps = float(fps) if fps and np.isfinite(fps) and 0 < fps < 1000 else None
            self._count = max(int(capture.get(cv2.CAP_PROP_FRAME_COUNT)), 0)
        finally:
            capture.release()
        if spacing_mm is None:
            logger.warning("%s: a video carries no pixel spacing; sending 1.0 mm (give a spacing to set it)",
                           self.path)
        self.spacing = _spacing_xyz(spacing_mm, (1.0, 1.0, 1.0))
        self.color = _check_color(color)
        self.description = f"video {self.path} ({self._count} frames" + (f", {self.fps:g} fps)" if self.fps else ")")

    def __len__(self) -> int:
        return self._count

    def __iter__(self) -> Iterator[SourceFrame]:
        import cv2

        geometry = ImageGeometry(spacing=self.spacing)
        capture = cv2.VideoCapture(str(self.path))
        try:
            index = 0
            while True:
                ok, image = capture.read()
                if not ok:
                    return
                yield SourceFrame(_colour(image, self.color, f"{self.path.name}#{index}"), geometry,
                                  f"{self.path.name}#{index}")
                index += 1
        finally:
            capture.release()


_SPACE_KINDS = ("domain", "space")
_COLOR_KINDS = ("rgb-color", "3-color", "rgba-color", "4-color", "vector", "3-vector", "4-vector")


class SequenceFileSource:
    """A 2D+t NRRD: a Slicer volume sequence (``.seq.nrrd``, one ``list`` axis) or a 3D NRRD whose last axis is time.

    The two spatial axes of size > 1 become i and j; a third spatial axis must have size 1. Spacing, directions and
    origin come from ``space directions`` / ``space origin`` (LPS turned into RAS); ``spacing_mm`` overrides the
    spacing. ``fps`` comes from the time axis' index values when the file has them (Slicer writes
    ``axis N index values``). Raises ValueError naming the file and the field that does not fit.
    """

    def __init__(self, path: Union[str, Path], spacing_mm=None, color: str = "grey"):
        import nrrd

        self.path = Path(path)
        if not self.path.is_file():
            raise FileNotFoundError(f"sequence file {self.path} does not exist")
        data, header = nrrd.read(str(self.path), index_order="F")  # array axes in the file's axis order
        self.color = _check_color(color)
        self._frames, self.geometry, self.fps = self._interpret(data, header, spacing_mm)
        self.description = (f"sequence {self.path} ({len(self._frames)} frames of "
                            f"{self._frames.shape[2]}x{self._frames.shape[1]}" +
                            (f", {self.fps:g} fps)" if self.fps else ")"))

    def _interpret(self, data: np.ndarray, header: dict, spacing_mm):
        name = str(self.path)
        ndim = data.ndim
        kinds = [str(k).lower() for k in header.get("kinds", [])] or None
        if kinds is not None and len(kinds) != ndim:
            raise ValueError(f"{name}: field 'kinds' has {len(kinds)} entries for {ndim} axes")
        if kinds is None:
            if ndim != 3:
                raise ValueError(f"{name}: without a 'kinds' field only a 3D NRRD (i, j, time) is understood; "
                                 f"this one has {ndim} axes")
            kinds = ["domain", "domain", "list"]
        list_axes = [a for a, k in enumerate(kinds) if k == "list"]
        color_axes = [a for a, k in enumerate(kinds) if k in _COLOR_KINDS]
        space_axes = [a for a, k in enumerate(kinds) if k in _SPACE_KINDS]
        if len(list_axes) + len(color_axes) + len(space_axes) != ndim:
            raise ValueError(f"{name}: field 'kinds' {kinds} has kinds other than list, domain/space and colour")
        if not list_axes and ndim == 3 and len(space_axes) == 3:
            list_axes, space_axes = [2], space_axes[:2]  # a plain 3D volume: its slices are the frames
        if len(list_axes) != 1:
            raise ValueError(f"{name}: expected one frame axis (kind 'list'), found kinds {kinds}")
        if len(color_axes) > 1:
            raise ValueError(f"{name}: more than one colour axis in kinds {kinds}")
        time_axis = list_axes[0]
        big = [a for a in space_axes if data.shape[a] > 1]
        if len(big) != 2 or len(space_axes) > 3:
            raise ValueError(f"{name}: each item must be a 2D frame; spatial axes {space_axes} have sizes "
                             f"{[data.shape[a] for a in space_axes]}")
        i_axis, j_axis = big
        flat = [a for a in space_axes if a not in big]

        # Geometry from the header (directions rows are per axis, None/NaN for non-spatial axes).
        directions_field = header.get("space directions")
        space = str(header.get("space", "right-anterior-superior")).lower()
        lps = space in ("left-posterior-superior", "lps")
        if space not in ("left-posterior-superior", "lps", "right-anterior-superior", "ras"):
            raise ValueError(f"{name}: field 'space' is {space!r}; expected RAS or LPS")
        if directions_field is not None:
            rows = np.asarray(directions_field, dtype=float)
            spatial_rows = rows if rows.shape[0] == ndim else None
            if spatial_rows is None:
                raise ValueError(f"{name}: field 'space directions' has {rows.shape[0]} entries for {ndim} axes")
            axis_i, axis_j = spatial_rows[i_axis], spatial_rows[j_axis]
            axis_k = spatial_rows[flat[0]] if flat else np.full(3, np.nan)
        else:
            axis_i, axis_j, axis_k = np.eye(3)
        if not (np.all(np.isfinite(axis_i)) and np.all(np.isfinite(axis_j))):
            raise ValueError(f"{name}: field 'space directions' has no vector for the image axes {i_axis}, {j_axis}")
        origin = np.asarray(header.get("space origin", np.zeros(3)), dtype=float)
        if origin.shape != (3,) or not np.all(np.isfinite(origin)):
            origin = np.zeros(3)
        axes = np.stack([axis_i, axis_j, axis_k], axis=1)
        if lps:
            axes[:2, :] *= -1.0
            origin[:2] *= -1.0
        spacing = np.linalg.norm(axes[:, :2], axis=0)
        directions = np.zeros((3, 3))
        directions[:, :2] = axes[:, :2] / spacing
        k_len = np.linalg.norm(axes[:, 2]) if np.all(np.isfinite(axes[:, 2])) else 0.0
        if k_len > 0:
            directions[:, 2] = axes[:, 2] / k_len
        else:
            normal = np.cross(directions[:, 0], directions[:, 1])
            directions[:, 2] = normal / max(np.linalg.norm(normal), 1e-12)
            k_len = 1.0
        spacing_xyz = _spacing_xyz(spacing_mm, (float(spacing[0]), float(spacing[1]), float(k_len)))
        geometry = ImageGeometry(spacing=spacing_xyz, origin=tuple(float(v) for v in origin),
                                 directions=tuple(tuple(float(v) for v in row) for row in directions))

        order = [time_axis, *flat, j_axis, i_axis] + color_axes
        frames = np.transpose(data, order)
        frames = frames.reshape(frames.shape[0], frames.shape[1 + len(flat)], frames.shape[2 + len(flat)],
                                *frames.shape[3 + len(flat):])  # drop the size-1 spatial axis
        if frames.dtype == np.float64:
            frames = frames.astype(np.float32)
        if frames.ndim == 4 and frames.shape[3] not in (3, 4):
            raise ValueError(f"{name}: colour axis of size {frames.shape[3]}; expected 3 (RGB) or 4 (RGBA)")

        fps = None
        values = str(header.get(f"axis {time_axis} index values", "")).split()
        try:
            times = np.asarray([float(v) for v in values])
        except ValueError:
            times = np.zeros(0)
        units = header.get("units")
        unit = str(units[time_axis]).strip('"').lower() if units is not None and len(units) == ndim else ""
        if times.size >= 2 and unit in ("s", "ms", ""):
            steps = np.diff(times)
            step = float(np.median(steps)) * (0.001 if unit == "ms" else 1.0)
            if step > 0:
                fps = 1.0 / step
        return np.ascontiguousarray(frames), geometry, fps

    def __len__(self) -> int:
        return int(self._frames.shape[0])

    def __iter__(self) -> Iterator[SourceFrame]:
        for index in range(len(self)):
            image = self._frames[index]
            if image.ndim == 3:
                image = image[:, :, :3] if self.color == "rgb" else to_grey(image)
            yield SourceFrame(image, self.geometry, f"{self.path.name}#{index}")


def open_source(path: Union[str, Path], spacing_mm=None, color: str = "grey") -> FrameSource:
    """The right source for ``path``: a folder with sample.json, an image folder, a NRRD sequence or a video.

    Raises FileNotFoundError for a missing path and ValueError for a file of a kind not listed above.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"replay source {path} does not exist")
    if path.is_dir():
        description = path / "sample.json"
        if description.is_file():
            return sample_source(path, spacing_mm=spacing_mm, color=color)
        return ImageFolderSource(path, spacing_mm=spacing_mm, color=color)
    name = path.name.lower()
    if name.endswith(".nrrd") or name.endswith(".nhdr"):
        return SequenceFileSource(path, spacing_mm=spacing_mm, color=color)
    if path.suffix.lower() in VIDEO_SUFFIXES:
        return VideoSource(path, spacing_mm=spacing_mm, color=color)
    raise ValueError(f"replay source {path}: unknown kind; give an image folder, a video "
                     f"({', '.join(VIDEO_SUFFIXES)}) or a sequence file (.seq.nrrd)")


def sample_source(folder: Union[str, Path, None] = None, spacing_mm=None, color: str = "grey") -> ImageFolderSource:
    """The bundled sample (Resources/Sample by default): its images with the spacing and rate of its sample.json."""
    if folder is None:
        folder = sample_dir()
    folder = Path(folder)
    description_path = folder / "sample.json"
    try:
        description = json.loads(description_path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise ValueError(f"cannot read {description_path}: {exc}") from None
    images = folder / str(description.get("images", "images"))
    spacing = spacing_mm if spacing_mm is not None else description.get("spacing_mm")
    if spacing is None:
        raise ValueError(f"{description_path}: field 'spacing_mm' missing (expected [i, j, k] in mm)")
    fps = description.get("fps")
    source = ImageFolderSource(images, spacing_mm=spacing, color=color, fps=float(fps) if fps else None)
    source.description = f"sample {folder.name} ({len(source)} images, spacing {source.spacing} mm)"
    return source
