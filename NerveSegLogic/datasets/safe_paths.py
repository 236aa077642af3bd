"""Paths written inside data files (Labelme ``imagePath``, COCO ``file_name``, a scene's ``fileName``) are followed
only inside the data set's own folder.

A data file is input like any other: an entry that is absolute (``/etc/passwd``, ``C:\\x``, ``\\\\server\\share``) or
climbs out of the data set with ``..`` (with ``/`` or ``\\`` separators) would make ``export``, ``evaluate`` and
``train`` read any image the user can read and copy it into an export. Such an entry is refused with a message naming
the file, the entry and the field. ``..`` that stays inside the data set (Labelme's ``../images/a.png`` from a
``labels/`` folder) is fine. The check is on the text of the entry: symbolic links that the folder's owner placed in
it are followed as usual.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Union

from .dataset import DatasetError

PathLike = Union[str, Path]
_DRIVE = re.compile(r"^[A-Za-z]:")


def resolve_inside(root: PathLike, base: PathLike, value: object, where: str) -> Path:
    """``base / value`` (``\\`` read as ``/``), normalised, when it lies inside ``root``.

    DatasetError naming ``where`` (which file, entry and field the value came from) when the value is empty, holds a
    NUL, is absolute or on a drive, or leads outside ``root``.
    """
    text = str(value) if value is not None else ""
    if not text.strip():
        raise DatasetError(f"{where} is empty; expected a path relative to its data file")
    if "\0" in text:
        raise DatasetError(f"{where} {text!r} contains a NUL character; expected a relative path")
    posix = text.replace("\\", "/")
    if posix.startswith("/") or _DRIVE.match(posix):
        raise DatasetError(f"{where} {text!r} is an absolute path; expected a path relative to its data file, "
                           f"inside the data set folder {root} (entries are never followed outside it)")
    top = os.path.abspath(root)
    target = os.path.normpath(os.path.join(os.path.abspath(base), posix))
    if os.path.commonpath([top, target]) != top:
        raise DatasetError(f"{where} {text!r} climbs out of the data set folder {root} with '..'; expected a path "
                           "inside it (entries are never followed outside it)")
    return Path(target)


def is_inside(root: PathLike, path: PathLike) -> bool:
    """Whether ``path`` lies in ``root`` (or is it), compared after normalising both (no link resolution)."""
    top = os.path.abspath(root)
    return os.path.commonpath([top, os.path.abspath(path)]) == top
