"""Where a data set's parts and side files are: split subfolders, class files, a NerveSeg manifest.

Exports write one subfolder per split (``train/``, ``val/``, ``test/``) for the folder-shaped formats; readers take
either such a root (all splits, each frame's ``metadata["split"]`` set) or one part directly.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Dict, List, Optional, Tuple

from .dataset import DatasetError

#: Split folder names, in the order their frames are listed.
SPLIT_NAMES = ("train", "val", "test")
#: Other spellings of split folders that readers accept.
SPLIT_ALIASES = {"training": "train", "validation": "val", "valid": "val", "testing": "test"}

MANIFEST = "manifest.json"


def split_parts(root: Path, has_data) -> List[Tuple[Optional[str], Path]]:
    """``[(split or None, folder)]``: the root itself when ``has_data(root)``, else its split subfolders that hold
    data. Raises DatasetError when neither does."""
    if has_data(root):
        return [(None, root)]
    parts = []
    for child in sorted(p for p in root.iterdir() if p.is_dir()) if root.is_dir() else []:
        split = SPLIT_ALIASES.get(child.name.lower(), child.name.lower())
        if split in SPLIT_NAMES and has_data(child):
            parts.append((split, child))
    parts.sort(key=lambda part: SPLIT_NAMES.index(part[0]))
    return parts


def manifest_frames(root: Path) -> Dict[str, dict]:
    """Per-case provenance from a NerveSeg ``manifest.json`` at ``root`` (``{case: frame entry}``), or {}.

    Readers take the subject, spacing, split and metadata of exported frames from it."""
    path = Path(root) / MANIFEST
    if not path.is_file():
        return {}
    try:
        content = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        raise DatasetError(f"{path}: not readable JSON ({error})") from None
    frames = content.get("frames") if isinstance(content, dict) else None
    if not isinstance(frames, list):
        return {}
    return {str(f["case"]): f for f in frames if isinstance(f, dict) and "case" in f}


def frame_extras(info: Optional[dict]) -> Tuple[Optional[str], Optional[Tuple[float, float]], dict]:
    """(subject, spacing (x, y) mm, metadata) from one manifest frame entry (or nothing)."""
    if not info:
        return None, None, {}
    spacing = info.get("spacing_mm")
    spacing_xy = (float(spacing[0]), float(spacing[1])) if isinstance(spacing, (list, tuple)) and spacing else None
    metadata = dict(info.get("metadata") or {})
    for key in ("split", "frame_id", "version_id", "status"):
        if key in info:
            metadata[key] = info[key]
    subject = info.get("subject")
    return (str(subject) if subject is not None else None), spacing_xy, metadata
