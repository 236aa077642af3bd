"""Putting a finished folder in place with no moment at which a reader sees half of it, or nothing.

An export is written into a hidden staging folder beside its target, ``.NAME.partial-XXXXXXXX``, then moved into
place. What this module adds to a plain rename:

- **Ownership marker.** Before the staging folder is created, a sibling file ``.NAME.partial-XXXXXXXX.nerveseg``
  records the process (host, pid, start time). A folder is recognised as a leftover of this program only by its name
  AND its marker, so nothing else in the parent folder is ever removed. The marker is removed last.
- **Leftovers of killed runs** (:func:`clean_leftovers`): staging folders whose marker names a process of this host
  that no longer runs are removed; an old export moved aside by a replacement that was killed before it finished is
  put back when the target is missing (it was the last complete export), else removed.
- **Durability** (:func:`fsync_tree`): every file and folder of the staging folder is fsynced before the rename, and
  the parent folder after it, so a power cut cannot leave a renamed folder of empty files.
- **Replacement without a gap** (:func:`move_into_place`): where the kernel can swap two paths atomically (Linux
  ``renameat2(RENAME_EXCHANGE)``), the new folder and the old one trade places in one step. Elsewhere the old
  folder is renamed aside only after the new one is complete, the new one renamed in at once, and the old one put
  back if that fails.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import json
import logging
import os
import shutil
import socket
import time
import uuid
from pathlib import Path
from typing import List, Optional

log = logging.getLogger(__name__)

MARKER_SUFFIX = ".nerveseg"
_RENAME_EXCHANGE = 2  # linux/fs.h
_AT_FDCWD = -100


def staging_path(out: Path, kind: str = "partial") -> Path:
    """A fresh hidden sibling of ``out``: ``.NAME.partial-XXXXXXXX`` (or ``.replaced-``)."""
    return out.parent / f".{out.name}.{kind}-{uuid.uuid4().hex[:8]}"


def marker_of(folder: Path) -> Path:
    return folder.parent / (folder.name + MARKER_SUFFIX)


def _host_tag() -> str:
    import hashlib

    return hashlib.sha256(socket.gethostname().encode("utf-8")).hexdigest()[:8]


def _marker_draft(target: Path) -> Path:
    """Where a marker is written before it is renamed into place: named after this host and process, so a draft
    left by a run killed while writing it is recognised as ours and removed (:func:`clean_leftovers`)."""
    return target.parent / f".{target.name}.marker-{_host_tag()}-{os.getpid()}.tmp"


def write_marker(folder: Path, target: Path, kind: str) -> Path:
    """Write (and fsync) the ownership marker of ``folder`` before the folder itself is created.

    Written to a draft and renamed into place, so a marker is either absent or complete: a run killed while
    writing it leaves only the draft, whose name says which process wrote it."""
    marker = marker_of(folder)
    content = {"program": "nerveseg export", "kind": kind, "target": target.name, "host": socket.gethostname(),
               "pid": os.getpid(), "started": time.time()}
    draft = _marker_draft(target)
    with open(draft, "w", encoding="utf-8") as handle:
        json.dump(content, handle)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(draft, marker)
    return marker


def _pid_gone(pid: int) -> bool:
    if pid == os.getpid():
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except OSError:  # exists, owned by someone else
        return False
    return False


def _read_marker(marker: Path) -> Optional[dict]:
    try:
        content = json.loads(marker.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return content if isinstance(content, dict) and content.get("program") == "nerveseg export" else None


def _owner_gone(content: dict) -> bool:
    """True when the marker's process is certainly not running (same host, no such pid)."""
    if content.get("host") != socket.gethostname():
        return False  # another machine's run on a shared folder: not ours to judge
    try:
        pid = int(content.get("pid"))
    except (TypeError, ValueError):
        return False
    return _pid_gone(pid)


def clean_leftovers(out: Path) -> List[str]:
    """Remove what killed exports to ``out`` left beside it (see the module docstring); returns what was done."""
    done: List[str] = []
    parent = out.parent
    if not parent.is_dir():
        return done
    prefix = f".{out.name}."
    for marker in sorted(parent.glob(f"{glob_escape(prefix)}*{MARKER_SUFFIX}")):
        folder = marker.parent / marker.name[:-len(MARKER_SUFFIX)]
        rest = folder.name[len(prefix):]
        kind = rest.split("-", 1)[0]
        if kind not in ("partial", "replaced"):
            continue
        content = _read_marker(marker)
        if content is None or content.get("target") != out.name or not _owner_gone(content):
            continue
        if folder.is_dir() and kind == "replaced" and not out.exists():
            os.rename(folder, out)  # the previous export, moved aside by a replacement that never finished
            fsync_dir(parent)
            done.append(f"restored {out.name} from {folder.name}")
        elif folder.exists():
            shutil.rmtree(folder, ignore_errors=True)
            done.append(f"removed {folder.name}")
        marker.unlink(missing_ok=True)
    draft_prefix = f".{out.name}.marker-{_host_tag()}-"
    for draft in sorted(parent.glob(f"{glob_escape(draft_prefix)}*.tmp")):
        pid_text = draft.name[len(draft_prefix):-len(".tmp")]
        if pid_text.isdigit() and _pid_gone(int(pid_text)):
            draft.unlink(missing_ok=True)
            done.append(f"removed {draft.name}")
    for line in done:
        log.warning("export leftovers of a killed run: %s", line)
    return done


def glob_escape(text: str) -> str:
    return "".join(f"[{c}]" if c in "*?[]" else c for c in text)


def fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:  # Windows cannot open folders; its renames are journalled anyway
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def fsync_tree(root: Path) -> int:
    """fsync every file under ``root``, then every folder bottom-up (root last). Returns the number of files."""
    count = 0
    for folder, _subfolders, files in os.walk(root, topdown=False):
        for name in files:
            fd = os.open(os.path.join(folder, name), os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
            count += 1
        fsync_dir(Path(folder))
    return count


def _exchange(a: Path, b: Path) -> bool:
    """Atomically swap paths ``a`` and ``b`` (both must exist); False where the system cannot."""
    if not hasattr(os, "uname") or os.uname().sysname != "Linux":
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        renameat2 = libc.renameat2
    except (OSError, AttributeError):
        return False
    renameat2.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    result = renameat2(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE)
    if result == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP, getattr(errno, "ENOTSUP", errno.EOPNOTSUPP)):
        return False  # this file system or kernel cannot exchange
    raise OSError(err, f"cannot swap {a} and {b}: {os.strerror(err)}")


def move_into_place(staged: Path, out: Path, replace: bool) -> None:
    """Make the complete folder ``staged`` appear at ``out``; ``out`` must not exist unless ``replace``.

    With ``replace``, ``out`` is never missing: swapped atomically where possible, else the old folder is renamed
    aside (after ``staged`` is complete, so the gap is one rename long) and restored if the second rename fails.
    The old folder is removed afterwards; then the staging marker.
    """
    parent = out.parent
    if not out.exists():
        os.rename(staged, out)
        fsync_dir(parent)
        marker_of(staged).unlink(missing_ok=True)
        return
    if not replace:
        raise FileExistsError(errno.EEXIST, f"{out} exists", str(out))
    if _exchange(staged, out):
        fsync_dir(parent)
        # ``staged`` now holds the previous export, still under its marker until it is gone.
        shutil.rmtree(staged, ignore_errors=True)
        marker_of(staged).unlink(missing_ok=True)
        return
    aside = staging_path(out, "replaced")
    write_marker(aside, out, "replaced")
    os.rename(out, aside)
    try:
        os.rename(staged, out)
    except BaseException:
        os.rename(aside, out)  # put the previous export back
        marker_of(aside).unlink(missing_ok=True)
        raise
    fsync_dir(parent)
    marker_of(staged).unlink(missing_ok=True)
    shutil.rmtree(aside, ignore_errors=True)
    marker_of(aside).unlink(missing_ok=True)
