"""The annotation store: one SQLite file per project, append-only, safe for several annotators and processes.

What it keeps:
- frames: each image once, keyed by the sha256 of its pixels, with where it came from (source, index), the subject
  it belongs to, its geometry and free metadata. The pixels are PNG bytes (lossless, uint8 or uint16).
- masks: each distinct labelmap once, keyed by the sha256 of its pixels, as PNG bytes.
- versions: every save of a frame's mask is a new row (author, UTC time, origin, model name and card sha256,
  parent version, status, comment, uncertainty). A frame's current version is its newest row.

Guarantees, and how they are kept:
- Append-only: triggers in the database refuse UPDATE and DELETE on frames, masks and versions, so not even a
  stray SQL statement from another tool can rewrite history. Restoring an old mask is a new version.
- Optimistic concurrency: a save names the version it was based on (``parent_id``). Inside one
  ``BEGIN IMMEDIATE`` transaction (which takes SQLite's write lock, so two processes cannot both pass the check)
  the store compares it with the frame's current version and refuses a stale save with :class:`ConflictError`
  naming who saved the newer version and when. A unique index on (frame, parent) backs this up: two versions can
  never share a parent, so a frame's history is always one line.
- Durability: WAL journal with ``synchronous=FULL``. WAL alone already keeps the file consistent when a process is
  killed mid-save (an uncommitted transaction is simply not in the log). FULL also fsyncs the log at every commit,
  so a save that returned survives a power cut or OS crash too; NORMAL could lose the last saves there. A save is a
  person's minutes of work and saves come at human pace, so one fsync per save (a few ms) is the right price.
- Several processes may open the same file (each with its own :class:`AnnotationStore`); readers never block the
  writer in WAL mode. WAL needs a local file system (not a network share), as SQLite documents.
"""

from __future__ import annotations

import getpass
import hashlib
import json
import logging
import os
import sqlite3
import threading
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Dict, Iterable, Iterator, List, Mapping, Optional, Sequence, Union

import cv2
import numpy as np

from NerveSegLogic.frame import ImageGeometry

STATUSES = ("draft", "accepted", "rejected", "needs-review")
ORIGINS = ("model", "manual", "corrected", "prompt")
#: Pseudo-status for :meth:`AnnotationStore.frames`: frames with no version yet.
UNLABELLED = "unlabelled"

#: Written into the file header (PRAGMA application_id) and the meta table so a NerveSeg store is recognisable.
APPLICATION_ID = 0x4E534547  # "NSEG"
APPLICATION_NAME = "nerveseg-annotation-store"
SCHEMA_VERSION = 1

logger = logging.getLogger(__name__)

_BUSY_TIMEOUT_S = 30.0  # how long a writer waits for another process's write lock before giving up


class StoreError(Exception):
    """Base class of the store's own errors."""


class NotAStoreError(StoreError):
    """The file exists but is not a NerveSeg annotation store (or was written by a newer NerveSeg)."""


class ConflictError(StoreError):
    """A save was based on a version that is no longer the frame's current one; nothing was written.

    Attributes: frame_id; based_on (the parent_id the caller gave); current_id, current_author, current_created,
    current_status (the version that got there first); mask (the refused mask, so the caller can re-apply it).
    """

    def __init__(self, frame_id: int, based_on: Optional[int], current_id: Optional[int],
                 current_author: Optional[str], current_created: Optional[str], current_status: Optional[str],
                 mask: Optional[np.ndarray] = None):
        self.frame_id = frame_id
        self.based_on = based_on
        self.current_id = current_id
        self.current_author = current_author
        self.current_created = current_created
        self.current_status = current_status
        self.mask = mask
        base = "no version (a first save)" if based_on is None else f"version {based_on}"
        if current_id is None:
            newer = "the frame has no version at all"
        else:
            newer = (f"{current_author} saved version {current_id} ({current_status}) at {current_created}")
        super().__init__(
            f"conflict on frame {frame_id}: this save was based on {base}, but {newer}. Nothing was saved; "
            f"reload the frame (current version {current_id}) and apply the edit again.")


@dataclass(frozen=True)
class FrameRecord:
    """One stored frame. ``geometry`` is None when the pixel spacing is unknown; ``created`` is ISO 8601 UTC."""

    id: int
    sha256: str
    source: str
    index: int
    subject: Optional[str]
    width: int
    height: int
    geometry: Optional[ImageGeometry]
    metadata: dict
    created: str


@dataclass(frozen=True)
class VersionSummary:
    """A version without its mask pixels (cheap to list for thousands of frames)."""

    id: int
    frame_id: int
    classes: Dict[int, str]
    author: str
    created: str
    origin: str
    model_name: Optional[str]
    model_sha256: Optional[str]
    parent_id: Optional[int]
    status: str
    comment: Optional[str]
    uncertainty: Optional[float]
    mask_sha256: str


@dataclass(frozen=True, eq=False)
class Version:
    """One saved mask of a frame. ``mask`` is (H, W) uint8, ``classes`` maps label value -> class key,
    ``created`` is ISO 8601 UTC, ``uncertainty`` is the model's mean per-pixel entropy in nats (None if unknown)."""

    id: int
    frame_id: int
    mask: np.ndarray
    classes: Dict[int, str]
    author: str
    created: str
    origin: str
    model_name: Optional[str]
    model_sha256: Optional[str]
    parent_id: Optional[int]
    status: str
    comment: Optional[str]
    uncertainty: Optional[float]
    mask_sha256: str = field(default="")


# ----------------------------------------------------------------------------------------------------------------
# Encoding helpers

def utc_now() -> str:
    """Current time as ISO 8601 UTC with microseconds (sorts as text in time order)."""
    return datetime.now(timezone.utc).isoformat(timespec="microseconds")


def pixel_sha256(array: np.ndarray) -> str:
    """sha256 of an image's pixels: dtype, shape and raw C-order bytes (so equal pixels give equal hashes whatever
    the file format they came from, and two blank frames of different sizes do not collide)."""
    a = np.ascontiguousarray(array)
    h = hashlib.sha256(f"{a.dtype.str}:{'x'.join(str(s) for s in a.shape)}:".encode())
    h.update(a.tobytes())
    return h.hexdigest()


def _png(array: np.ndarray) -> bytes:
    ok, buf = cv2.imencode(".png", array)
    if not ok:
        raise ValueError(f"could not PNG-encode an array of shape {array.shape} and dtype {array.dtype}")
    return buf.tobytes()


def _unpng(blob: bytes, what: str) -> np.ndarray:
    array = cv2.imdecode(np.frombuffer(blob, dtype=np.uint8), cv2.IMREAD_UNCHANGED)
    if array is None:
        raise StoreError(f"stored {what} could not be decoded (corrupt PNG bytes)")
    return array


def _geometry_json(geometry: Optional[ImageGeometry]) -> Optional[str]:
    if geometry is None:
        return None
    if not isinstance(geometry, ImageGeometry):
        raise TypeError(f"geometry must be an ImageGeometry or None, got {type(geometry).__name__}")
    return json.dumps({"spacing": list(geometry.spacing), "origin": list(geometry.origin),
                       "directions": [list(r) for r in geometry.directions]})


def _geometry_from_json(text: Optional[str]) -> Optional[ImageGeometry]:
    if text is None:
        return None
    d = json.loads(text)
    return ImageGeometry(spacing=tuple(d["spacing"]), origin=tuple(d["origin"]),
                         directions=tuple(tuple(r) for r in d["directions"]))


def _classes_json(classes: Mapping[int, str]) -> str:
    if not isinstance(classes, Mapping):
        raise TypeError(f"classes must be a mapping {{label value: class key}}, got {type(classes).__name__}")
    clean = {}
    for label, key in classes.items():
        if isinstance(label, bool) or not isinstance(label, (int, np.integer)) or not 1 <= int(label) <= 255:
            raise ValueError(f"classes: label value {label!r} must be an integer 1..255 (0 is background)")
        if not isinstance(key, str) or not key.strip():
            raise ValueError(f"classes: label {label} needs a non-empty class key, got {key!r}")
        clean[str(int(label))] = key
    return json.dumps(clean, sort_keys=True)


def _classes_from_json(text: str) -> Dict[int, str]:
    return {int(k): v for k, v in json.loads(text).items()}


def _check_choice(value: str, choices: Sequence[str], what: str) -> str:
    if value not in choices:
        raise ValueError(f"{what} {value!r} unknown; expected one of {', '.join(choices)}")
    return value


def default_author() -> str:
    """$NERVESEG_AUTHOR, else the login name."""
    author = os.environ.get("NERVESEG_AUTHOR", "").strip()
    if author:
        return author
    try:
        return getpass.getuser()
    except Exception:  # no login name (some containers): still a usable, honest default
        return "unknown"


# ----------------------------------------------------------------------------------------------------------------
# Schema

_SCHEMA = """
CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE schema_version (version INTEGER NOT NULL, applied TEXT NOT NULL);
CREATE TABLE frames (
    id INTEGER PRIMARY KEY,
    sha256 TEXT NOT NULL UNIQUE,
    source TEXT NOT NULL,
    idx INTEGER NOT NULL,
    subject TEXT,
    width INTEGER NOT NULL,
    height INTEGER NOT NULL,
    dtype TEXT NOT NULL,
    geometry TEXT,
    metadata TEXT NOT NULL,
    created TEXT NOT NULL,
    png BLOB NOT NULL
);
CREATE INDEX frames_subject ON frames(subject);
CREATE TABLE masks (
    sha256 TEXT PRIMARY KEY,
    width INTEGER NOT NULL,
    height INTEGER NOT NULL,
    png BLOB NOT NULL
);
CREATE TABLE versions (
    id INTEGER PRIMARY KEY,
    frame_id INTEGER NOT NULL REFERENCES frames(id),
    parent_id INTEGER REFERENCES versions(id),
    mask_sha256 TEXT NOT NULL REFERENCES masks(sha256),
    classes TEXT NOT NULL,
    author TEXT NOT NULL,
    created TEXT NOT NULL,
    origin TEXT NOT NULL CHECK (origin IN ('model', 'manual', 'corrected', 'prompt')),
    model_name TEXT,
    model_sha256 TEXT,
    status TEXT NOT NULL CHECK (status IN ('draft', 'accepted', 'rejected', 'needs-review')),
    comment TEXT,
    uncertainty REAL
);
CREATE INDEX versions_frame ON versions(frame_id, id);
-- One line of history per frame: no two versions share a parent (the first version's parent is NULL -> 0).
CREATE UNIQUE INDEX versions_one_child ON versions(frame_id, IFNULL(parent_id, 0));
"""

# Issue 15, added to every store when it is opened for writing (IF NOT EXISTS: old stores gain them, nothing else
# changes). embeddings is a cache (float16, keyed by the model's weights sha256): rows are never updated, and may be
# deleted to reclaim space; version_prompts is history like versions.
_PROMPT_SCHEMA = """
CREATE TABLE IF NOT EXISTS embeddings (
    frame_id INTEGER NOT NULL REFERENCES frames(id),
    model_sha256 TEXT NOT NULL,
    shape TEXT NOT NULL,
    data BLOB NOT NULL,
    created TEXT NOT NULL,
    PRIMARY KEY (frame_id, model_sha256)
);
CREATE TABLE IF NOT EXISTS version_prompts (
    version_id INTEGER PRIMARY KEY REFERENCES versions(id),
    prompts TEXT NOT NULL
);
CREATE TRIGGER IF NOT EXISTS embeddings_no_update BEFORE UPDATE ON embeddings
BEGIN SELECT RAISE(ABORT, 'the embedding cache is never updated: a new model has a new key'); END;
CREATE TRIGGER IF NOT EXISTS version_prompts_no_update BEFORE UPDATE ON version_prompts
BEGIN SELECT RAISE(ABORT, 'the annotation store is append-only: UPDATE on version_prompts is refused'); END;
CREATE TRIGGER IF NOT EXISTS version_prompts_no_delete BEFORE DELETE ON version_prompts
BEGIN SELECT RAISE(ABORT, 'the annotation store is append-only: DELETE on version_prompts is refused'); END;
"""

_APPEND_ONLY_TABLES = ("frames", "masks", "versions", "schema_version", "meta")


def _append_only_triggers() -> str:
    out = []
    for table in _APPEND_ONLY_TABLES:
        for event in ("UPDATE", "DELETE"):
            out.append(
                f"CREATE TRIGGER {table}_no_{event.lower()} BEFORE {event} ON {table} "
                f"BEGIN SELECT RAISE(ABORT, 'the annotation store is append-only: {event} on {table} is refused'); "
                f"END;")
    return "\n".join(out)


# ----------------------------------------------------------------------------------------------------------------

def _writable(path: Path) -> bool:
    """Whether this process may write ``path`` (False on read-only media, also for root)."""
    return os.access(path, os.W_OK)


def _looks_like_sqlite(path: Path) -> bool:
    try:
        with open(path, "rb") as handle:
            return handle.read(16) == b"SQLite format 3\x00"
    except OSError:
        return False


class AnnotationStore:
    """An append-only annotation store in one SQLite file (created if missing). Use as a context manager or call
    :meth:`close`. Thread-safe (one lock per instance); open one instance per process.

    Raises NotAStoreError when ``path`` exists but is not a NerveSeg store (or has a newer schema).

    A store that this process cannot write (read-only media, a read-only file) is opened read-only: ``read_only`` is
    True, reading works, and every write raises StoreError saying so. On a read-only folder SQLite cannot create
    the WAL's shared-memory file, so the store is then opened as immutable (what a closed store copied onto a DVD
    or a read-only share is).
    """

    def __init__(self, path: Union[str, os.PathLike]):
        self.path = Path(path)
        self._lock = threading.RLock()
        if self.path.is_dir():
            raise NotAStoreError(f"{self.path} is a folder; an annotation store is one file (e.g. project.nsdb)")
        if self.path.parent and not self.path.parent.exists():
            raise FileNotFoundError(f"folder of the annotation store {self.path} does not exist")
        self.read_only = False
        self._read_only_reason = ""
        if self.path.exists():
            file_ok, folder_ok = _writable(self.path), _writable(self.path.parent)
            if not (file_ok and folder_ok):
                self.read_only = True
                self._read_only_reason = ("the file is read-only" if not file_ok else
                                          "its folder is read-only")
        elif not _writable(self.path.parent):
            raise StoreError(f"cannot create annotation store {self.path}: its folder is read-only")
        if self.read_only:
            query = "mode=ro" + ("" if _writable(self.path.parent) else "&immutable=1")
            self._conn = sqlite3.connect(f"{self.path.resolve().as_uri()}?{query}", uri=True,
                                         timeout=_BUSY_TIMEOUT_S, isolation_level=None, check_same_thread=False)
        else:
            self._conn = sqlite3.connect(str(self.path), timeout=_BUSY_TIMEOUT_S, isolation_level=None,
                                         check_same_thread=False)
        try:
            self._open()
        except BaseException:
            self._conn.close()
            raise

    # -- opening -------------------------------------------------------------------------------------------------

    def _open(self) -> None:
        conn = self._conn
        try:
            app_id = conn.execute("PRAGMA application_id").fetchone()[0]
            tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        except sqlite3.DatabaseError as exc:
            if _looks_like_sqlite(self.path):  # an SQLite file SQLite could not open: say why, not "not a store"
                raise StoreError(f"annotation store {self.path} could not be opened: {exc}") from None
            raise NotAStoreError(f"{self.path} is not a NerveSeg annotation store (not an SQLite file: {exc})") \
                from None
        if tables and app_id != APPLICATION_ID:
            raise NotAStoreError(f"{self.path} is an SQLite file but not a NerveSeg annotation store "
                                 f"(application_id {app_id:#x}, expected {APPLICATION_ID:#x}; tables: "
                                 f"{', '.join(sorted(tables))})")
        if self.read_only:
            if not tables:
                raise NotAStoreError(f"{self.path} is empty and read-only ({self._read_only_reason}): not a NerveSeg "
                                     "annotation store")
            conn.execute("PRAGMA foreign_keys=ON")
            self._check_schema()
            logger.info("annotation store %s opened read-only: %s", self.path, self._read_only_reason)
            return
        mode = conn.execute("PRAGMA journal_mode=WAL").fetchone()[0]
        if str(mode).lower() != "wal":
            raise StoreError(f"{self.path}: could not switch to WAL journal mode (got {mode!r}); "
                             "is it on a network file system?")
        conn.execute("PRAGMA synchronous=FULL")
        conn.execute("PRAGMA foreign_keys=ON")
        if not tables:
            self._create_schema()
        self._check_schema()
        self._add_prompt_tables()

    def _create_schema(self) -> None:
        with self._write() as conn:
            # Another process may have created it between our look and our write lock.
            if conn.execute("SELECT count(*) FROM sqlite_master WHERE name = 'meta'").fetchone()[0]:
                return
            conn.execute(f"PRAGMA application_id = {APPLICATION_ID}")
            for statement in (_SCHEMA + _append_only_triggers()).split(";\n"):
                if statement.strip():
                    conn.execute(statement)
            conn.execute("INSERT INTO meta VALUES ('application', ?)", (APPLICATION_NAME,))
            conn.execute("INSERT INTO schema_version VALUES (?, ?)", (SCHEMA_VERSION, utc_now()))

    def _check_schema(self) -> None:
        try:
            app = self._conn.execute("SELECT value FROM meta WHERE key = 'application'").fetchone()
            version = self._conn.execute("SELECT max(version) FROM schema_version").fetchone()[0]
        except sqlite3.DatabaseError as exc:
            raise NotAStoreError(f"{self.path} is not a NerveSeg annotation store ({exc})") from None
        if not app or app[0] != APPLICATION_NAME:
            raise NotAStoreError(f"{self.path} is not a NerveSeg annotation store (meta.application = {app})")
        if version is None or version > SCHEMA_VERSION:
            raise NotAStoreError(f"{self.path} has annotation store schema {version}; this NerveSeg reads "
                                 f"schema {SCHEMA_VERSION} (update NerveSeg)")

    @contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        """One write transaction holding SQLite's write lock from its first statement (BEGIN IMMEDIATE)."""
        if self.read_only:
            raise StoreError(f"annotation store {self.path} is opened read-only ({self._read_only_reason}); nothing "
                             "can be saved to it (copy it to a writable folder to edit)")
        with self._lock:
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                yield self._conn
            except BaseException:
                self._conn.execute("ROLLBACK")
                raise
            self._conn.execute("COMMIT")

    @contextmanager
    def _read(self) -> Iterator[sqlite3.Connection]:
        """A read transaction: every statement inside sees the same snapshot."""
        with self._lock:
            self._conn.execute("BEGIN")
            try:
                yield self._conn
            finally:
                self._conn.execute("COMMIT")

    def close(self) -> None:
        with self._lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None  # type: ignore[assignment]

    def __enter__(self) -> "AnnotationStore":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"AnnotationStore({str(self.path)!r})"

    def backup(self, target: Union[str, os.PathLike]) -> Path:
        """Copy the whole store to ``target`` (a new file) with SQLite's online backup: a consistent snapshot even
        while other processes save (copying the file alone could miss saves still in its -wal file).
        Raises FileExistsError rather than overwrite."""
        target = Path(target)
        if target.exists():
            raise FileExistsError(f"backup target {target} exists; choose a new file")
        destination = sqlite3.connect(str(target))
        try:
            with self._lock:
                self._conn.backup(destination)
        finally:
            destination.close()
        return target

    def integrity_check(self) -> str:
        """SQLite's own integrity check: ``"ok"`` or a description of the damage."""
        with self._lock:
            return "\n".join(r[0] for r in self._conn.execute("PRAGMA integrity_check"))

    # -- frames ---------------------------------------------------------------------------------------------------

    def add_frame(self, image: np.ndarray, source: str, index: int, subject: Optional[str] = None,
                  geometry: Optional[ImageGeometry] = None, metadata: Optional[dict] = None) -> FrameRecord:
        """Store a grey frame (H, W) uint8/uint16 once per pixel content; adding the same pixels again returns the
        record already stored (with its first source, index and subject). Raises ValueError/TypeError on bad input."""
        if not isinstance(image, np.ndarray) or image.ndim != 2:
            raise ValueError(f"frame image from {source!r} index {index} must be a grey (H, W) array, got shape "
                             f"{getattr(image, 'shape', type(image).__name__)} (convert colour with to_grey)")
        if image.dtype not in (np.uint8, np.uint16):
            raise ValueError(f"frame image from {source!r} index {index} must be uint8 or uint16, got {image.dtype}")
        if image.size == 0:
            raise ValueError(f"frame image from {source!r} index {index} is empty (shape {image.shape})")
        metadata_text = json.dumps(metadata or {}, sort_keys=True)  # TypeError names the value that is not JSON
        geometry_text = _geometry_json(geometry)
        sha = pixel_sha256(image)
        png = _png(np.ascontiguousarray(image))
        with self._write() as conn:
            conn.execute(
                "INSERT OR IGNORE INTO frames (sha256, source, idx, subject, width, height, dtype, geometry, "
                "metadata, created, png) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (sha, str(source), int(index), subject, int(image.shape[1]), int(image.shape[0]), image.dtype.name,
                 geometry_text, metadata_text, utc_now(), png))
            row = conn.execute(f"SELECT {_FRAME_COLUMNS} FROM frames WHERE sha256 = ?", (sha,)).fetchone()
        return _frame_record(row)

    def frame(self, frame_id: int) -> FrameRecord:
        """The frame's record; KeyError if there is no such frame."""
        with self._lock:
            row = self._conn.execute(f"SELECT {_FRAME_COLUMNS} FROM frames WHERE id = ?", (int(frame_id),)).fetchone()
        if row is None:
            raise KeyError(f"no frame {frame_id} in annotation store {self.path}")
        return _frame_record(row)

    def frame_by_sha256(self, sha256: str) -> Optional[FrameRecord]:
        with self._lock:
            row = self._conn.execute(f"SELECT {_FRAME_COLUMNS} FROM frames WHERE sha256 = ?", (sha256,)).fetchone()
        return None if row is None else _frame_record(row)

    def image(self, frame_id: int) -> np.ndarray:
        """The frame's pixels, (H, W) uint8 or uint16 as stored; KeyError if there is no such frame."""
        with self._lock:
            row = self._conn.execute("SELECT png FROM frames WHERE id = ?", (int(frame_id),)).fetchone()
        if row is None:
            raise KeyError(f"no frame {frame_id} in annotation store {self.path}")
        return _unpng(row[0], f"image of frame {frame_id}")

    def frames(self, statuses: Optional[Iterable[str]] = None, subject: Optional[str] = None) -> List[FrameRecord]:
        """Frames in id order, optionally only those whose CURRENT version has one of ``statuses`` (the
        pseudo-status ``"unlabelled"`` selects frames with no version) and/or of one subject."""
        where, params = [], []
        if statuses is not None:
            wanted = [_check_choice(s, STATUSES + (UNLABELLED,), "status") for s in statuses]
            real = [s for s in wanted if s != UNLABELLED]
            clauses = []
            if real:
                clauses.append(f"v.status IN ({', '.join('?' * len(real))})")
                params.extend(real)
            if UNLABELLED in wanted:
                clauses.append("v.id IS NULL")
            where.append("(" + " OR ".join(clauses) + ")" if clauses else "0")
        if subject is not None:
            where.append("f.subject = ?")
            params.append(subject)
        sql = (f"SELECT {_FRAME_COLUMNS_F} FROM frames f "
               "LEFT JOIN (SELECT frame_id, max(id) AS head FROM versions GROUP BY frame_id) h ON h.frame_id = f.id "
               "LEFT JOIN versions v ON v.id = h.head")
        if where:
            sql += " WHERE " + " AND ".join(where)
        sql += " ORDER BY f.id"
        with self._lock:
            rows = self._conn.execute(sql, params).fetchall()
        return [_frame_record(r) for r in rows]

    def frame_count(self) -> int:
        with self._lock:
            return int(self._conn.execute("SELECT count(*) FROM frames").fetchone()[0])

    # -- versions -------------------------------------------------------------------------------------------------

    def current(self, frame_id: int) -> Optional[Version]:
        """The frame's newest version, or None if it has none; KeyError if there is no such frame."""
        with self._read() as conn:
            self._require_frame(conn, frame_id)
            row = conn.execute(f"SELECT {_VERSION_COLUMNS_WITH_MASK} WHERE v.frame_id = ? ORDER BY v.id DESC LIMIT 1",
                               (int(frame_id),)).fetchone()
        return None if row is None else _version(row)

    def history(self, frame_id: int) -> List[Version]:
        """Every version of the frame, oldest first; KeyError if there is no such frame."""
        with self._read() as conn:
            self._require_frame(conn, frame_id)
            rows = conn.execute(f"SELECT {_VERSION_COLUMNS} FROM versions v WHERE v.frame_id = ? ORDER BY v.id",
                                (int(frame_id),)).fetchall()
            summaries = [_summary(r) for r in rows]
            masks = {}
            for s in summaries:  # status and restore versions share masks: decode each distinct one once
                if s.mask_sha256 not in masks:
                    png = conn.execute("SELECT png FROM masks WHERE sha256 = ?", (s.mask_sha256,)).fetchone()[0]
                    masks[s.mask_sha256] = _unpng(png, f"mask of version {s.id}")
        return [_with_mask(s, masks[s.mask_sha256].copy()) for s in summaries]

    def version(self, version_id: int) -> Version:
        """One version by id; KeyError if there is none."""
        with self._lock:
            row = self._conn.execute(f"SELECT {_VERSION_COLUMNS_WITH_MASK} WHERE v.id = ?",
                                     (int(version_id),)).fetchone()
        if row is None:
            raise KeyError(f"no version {version_id} in annotation store {self.path}")
        return _version(row)

    def summaries(self, frame_id: Optional[int] = None, current_only: bool = False) -> List[VersionSummary]:
        """Versions without their mask pixels, in id order: all of them, one frame's, or only each frame's current
        one (``current_only``). For listings over many frames (status, queue, agreement)."""
        sql = f"SELECT {_VERSION_COLUMNS} FROM versions v"
        where, params = [], []
        if current_only:
            where.append("v.id IN (SELECT max(id) FROM versions GROUP BY frame_id)")
        if frame_id is not None:
            where.append("v.frame_id = ?")
            params.append(int(frame_id))
        if where:
            sql += " WHERE " + " AND ".join(where)
        sql += " ORDER BY v.id"
        with self._lock:
            rows = self._conn.execute(sql, params).fetchall()
        return [_summary(r) for r in rows]

    def mask(self, mask_sha256: str) -> np.ndarray:
        """A stored mask by its sha256 (see :attr:`Version.mask_sha256`); KeyError if absent."""
        with self._lock:
            row = self._conn.execute("SELECT png FROM masks WHERE sha256 = ?", (mask_sha256,)).fetchone()
        if row is None:
            raise KeyError(f"no mask {mask_sha256} in annotation store {self.path}")
        return _unpng(row[0], f"mask {mask_sha256[:12]}")

    # -- prompt model support (issue 15): embedding cache and the prompts of "prompt" versions ----------------------

    def _add_prompt_tables(self) -> None:
        """Create the embedding cache and the prompt table if missing, and let the versions table take origin
        'prompt' in a store made before it existed. Additive: old readers ignore the new tables."""
        with self._write() as conn:
            for statement in _PROMPT_SCHEMA.split(";\n"):
                if statement.strip():
                    conn.execute(statement)
            sql = conn.execute("SELECT sql FROM sqlite_master WHERE type = 'table' AND name = 'versions'").fetchone()[0]
            if "'prompt'" not in sql:
                # Widening a CHECK constraint (every stored row already satisfies the new one) is the schema edit
                # SQLite documents for writable_schema (ALTER TABLE, "other kinds of table schema changes").
                widened = sql.replace("'corrected')", "'corrected', 'prompt')")
                if widened == sql:
                    raise StoreError(f"{self.path}: cannot add origin 'prompt': unexpected versions table {sql!r}")
                schema_cookie = conn.execute("PRAGMA schema_version").fetchone()[0]
                conn.execute("PRAGMA writable_schema = ON")
                try:
                    conn.execute("UPDATE sqlite_master SET sql = ? WHERE type = 'table' AND name = 'versions'",
                                 (widened,))
                    conn.execute(f"PRAGMA schema_version = {int(schema_cookie) + 1}")
                finally:
                    conn.execute("PRAGMA writable_schema = OFF")

    def embedding(self, frame_id: int, model_sha256: str) -> Optional[np.ndarray]:
        """The cached image embedding (float16) of a frame for the model whose weights have ``model_sha256``, or
        None when there is none (or the store predates the cache and is read-only)."""
        with self._lock:
            try:
                row = self._conn.execute("SELECT shape, data FROM embeddings WHERE frame_id = ? AND model_sha256 = ?",
                                         (int(frame_id), str(model_sha256))).fetchone()
            except sqlite3.OperationalError:  # no such table: a read-only store made before the cache existed
                return None
        if row is None:
            return None
        return np.frombuffer(row[1], dtype=np.float16).reshape(json.loads(row[0])).copy()

    def save_embedding(self, frame_id: int, model_sha256: str, embedding: np.ndarray) -> bool:
        """Cache ``embedding`` (stored as float16) for the frame and model; False (nothing written) when one is
        already cached, so two processes embedding the same frame keep the first. KeyError for an unknown frame."""
        if not isinstance(model_sha256, str) or not model_sha256:
            raise ValueError(f"model_sha256 must name the model's weights, got {model_sha256!r}")
        array = np.ascontiguousarray(embedding, dtype=np.float16)
        if not np.isfinite(array).all():
            raise ValueError(f"embedding of frame {frame_id} has values that are not finite in float16")
        with self._write() as conn:
            self._require_frame(conn, frame_id)
            cur = conn.execute("INSERT OR IGNORE INTO embeddings (frame_id, model_sha256, shape, data, created) "
                               "VALUES (?, ?, ?, ?, ?)", (int(frame_id), model_sha256, json.dumps(list(array.shape)),
                                                          array.tobytes(), utc_now()))
        return cur.rowcount == 1

    def prompts(self, version_id: int) -> Optional[dict]:
        """The prompts a "prompt" version was made from (as saved with it), or None for other versions."""
        with self._lock:
            try:
                row = self._conn.execute("SELECT prompts FROM version_prompts WHERE version_id = ?",
                                         (int(version_id),)).fetchone()
            except sqlite3.OperationalError:
                return None
        return None if row is None else json.loads(row[0])

    def save_mask(self, frame_id: int, mask: np.ndarray, classes: Mapping[int, str], author: str, origin: str,
                  parent_id: Optional[int], status: str = "draft", comment: Optional[str] = None,
                  model_name: Optional[str] = None, model_sha256: Optional[str] = None,
                  uncertainty: Optional[float] = None, prompts: Optional[Mapping] = None) -> Version:
        """Save a new version of the frame's mask and return it.

        mask: (H, W) labelmap of the frame's size with values 0 (background) or a label of ``classes``
        ({label value: class key}). parent_id: the version this edit started from, which must still be the frame's
        current version (None for the first save). origin "model" needs ``model_name``; origin "prompt" needs
        ``prompts`` (what the prompt model was given: JSON-ready), kept with the version (see :meth:`prompts`).
        Raises ConflictError (nothing written) if another save came first; KeyError for an unknown frame;
        ValueError for a bad mask, classes, origin or status.
        """
        origin = _check_choice(origin, ORIGINS, "origin")
        status = _check_choice(status, STATUSES, "status")
        if not isinstance(author, str) or not author.strip():
            raise ValueError(f"author must be a non-empty name, got {author!r}")
        if origin == "model" and not model_name:
            raise ValueError("a version with origin 'model' must name its model (model_name)")
        if (origin == "prompt") != (prompts is not None):
            raise ValueError("prompts are saved with, and only with, a version of origin 'prompt'")
        prompts_text = None if prompts is None else json.dumps(prompts, sort_keys=True)
        if uncertainty is not None:
            uncertainty = float(uncertainty)
            if not np.isfinite(uncertainty):
                raise ValueError(f"uncertainty must be finite, got {uncertainty}")
        classes_text = _classes_json(classes)
        mask = _check_mask(mask, classes)
        mask_sha = pixel_sha256(mask)
        png = _png(mask)  # encoded before taking the write lock, to hold it briefly
        with self._write() as conn:
            frame = self._require_frame(conn, frame_id)
            if (frame[1], frame[0]) != mask.shape:
                raise ValueError(f"mask shape {mask.shape} differs from frame {frame_id}'s image "
                                 f"(height {frame[1]}, width {frame[0]})")
            self._check_parent(conn, frame_id, parent_id, mask)
            conn.execute("INSERT OR IGNORE INTO masks (sha256, width, height, png) VALUES (?, ?, ?, ?)",
                         (mask_sha, int(mask.shape[1]), int(mask.shape[0]), png))
            version_id, created = self._insert_version(conn, frame_id, parent_id, mask_sha, classes_text, author,
                                                       origin, model_name, model_sha256, status, comment, uncertainty)
            if prompts_text is not None:
                conn.execute("INSERT INTO version_prompts (version_id, prompts) VALUES (?, ?)",
                             (version_id, prompts_text))
        return Version(id=version_id, frame_id=int(frame_id), mask=mask, classes=_classes_from_json(classes_text),
                       author=author, created=created, origin=origin, model_name=model_name,
                       model_sha256=model_sha256, parent_id=parent_id, status=status, comment=comment,
                       uncertainty=uncertainty, mask_sha256=mask_sha)

    def set_status(self, frame_id: int, status: str, author: str, parent_id: int,
                   comment: Optional[str] = None) -> Version:
        """A new version with the parent's mask, classes, origin, model and uncertainty and a new status/author.
        Raises ConflictError if ``parent_id`` is not current, ValueError if the frame has no version yet."""
        status = _check_choice(status, STATUSES, "status")
        return self._copy_version(frame_id, parent_id, parent_id, author, status, comment)

    def restore(self, frame_id: int, version_id: int, author: str, parent_id: int) -> Version:
        """A new version that copies version ``version_id`` of this frame (mask, classes, origin, model, status);
        its comment records what was restored. Raises ConflictError if ``parent_id`` is not current, KeyError if
        ``version_id`` is not a version of this frame."""
        return self._copy_version(frame_id, version_id, parent_id, author, None, f"restored version {version_id}")

    def _copy_version(self, frame_id: int, source_id: Optional[int], parent_id: Optional[int], author: str,
                      status: Optional[str], comment: Optional[str]) -> Version:
        if not isinstance(author, str) or not author.strip():
            raise ValueError(f"author must be a non-empty name, got {author!r}")
        with self._write() as conn:
            self._require_frame(conn, frame_id)
            self._check_parent(conn, frame_id, parent_id, None)
            if source_id is None:
                raise ValueError(f"frame {frame_id} has no mask yet: save one before changing its status")
            source = conn.execute(f"SELECT {_VERSION_COLUMNS} FROM versions v WHERE v.id = ? AND v.frame_id = ?",
                                  (int(source_id), int(frame_id))).fetchone()
            if source is None:
                raise KeyError(f"version {source_id} is not a version of frame {frame_id} in {self.path}")
            src = _summary(source)
            new_status = src.status if status is None else status
            version_id, _ = self._insert_version(conn, frame_id, parent_id, src.mask_sha256,
                                                 _classes_json(src.classes), author, src.origin, src.model_name,
                                                 src.model_sha256, new_status, comment, src.uncertainty)
        return self.version(version_id)

    def _insert_version(self, conn, frame_id, parent_id, mask_sha, classes_text, author, origin, model_name,
                        model_sha256, status, comment, uncertainty):
        """Insert one version row; returns (id, created)."""
        created = utc_now()
        cur = conn.execute(
            "INSERT INTO versions (frame_id, parent_id, mask_sha256, classes, author, created, origin, model_name, "
            "model_sha256, status, comment, uncertainty) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (int(frame_id), parent_id, mask_sha, classes_text, author, created, origin, model_name, model_sha256,
             status, comment, uncertainty))
        return int(cur.lastrowid), created

    def _require_frame(self, conn, frame_id: int):
        row = conn.execute("SELECT width, height FROM frames WHERE id = ?", (int(frame_id),)).fetchone()
        if row is None:
            raise KeyError(f"no frame {frame_id} in annotation store {self.path}")
        return row

    def _check_parent(self, conn, frame_id: int, parent_id: Optional[int], mask: Optional[np.ndarray]) -> None:
        head = conn.execute("SELECT id, author, created, status FROM versions WHERE frame_id = ? "
                            "ORDER BY id DESC LIMIT 1", (int(frame_id),)).fetchone()
        head_id = None if head is None else int(head[0])
        if (None if parent_id is None else int(parent_id)) != head_id:
            if head is None:
                raise ConflictError(int(frame_id), parent_id, None, None, None, None, mask)
            raise ConflictError(int(frame_id), parent_id, head_id, head[1], head[2], head[3], mask)


# ----------------------------------------------------------------------------------------------------------------
# Row mapping

_FRAME_NAMES = ("id", "sha256", "source", "idx", "subject", "width", "height", "geometry", "metadata", "created")
_FRAME_COLUMNS = ", ".join(_FRAME_NAMES)
_FRAME_COLUMNS_F = ", ".join(f"f.{c}" for c in _FRAME_NAMES)
_VERSION_NAMES = ("id", "frame_id", "classes", "author", "created", "origin", "model_name", "model_sha256",
                  "parent_id", "status", "comment", "uncertainty", "mask_sha256")
_VERSION_COLUMNS = ", ".join(f"v.{c}" for c in _VERSION_NAMES)
_VERSION_COLUMNS_WITH_MASK = f"{_VERSION_COLUMNS}, m.png FROM versions v JOIN masks m ON m.sha256 = v.mask_sha256"


def _frame_record(row) -> FrameRecord:
    return FrameRecord(id=int(row[0]), sha256=row[1], source=row[2], index=int(row[3]), subject=row[4],
                       width=int(row[5]), height=int(row[6]), geometry=_geometry_from_json(row[7]),
                       metadata=json.loads(row[8]), created=row[9])


def _summary(row) -> VersionSummary:
    return VersionSummary(id=int(row[0]), frame_id=int(row[1]), classes=_classes_from_json(row[2]), author=row[3],
                          created=row[4], origin=row[5], model_name=row[6], model_sha256=row[7],
                          parent_id=None if row[8] is None else int(row[8]), status=row[9], comment=row[10],
                          uncertainty=row[11], mask_sha256=row[12])


def _version(row) -> Version:
    s = _summary(row)
    return _with_mask(s, _unpng(row[13], f"mask of version {s.id}"))


def _with_mask(s: VersionSummary, mask: np.ndarray) -> Version:
    return Version(id=s.id, frame_id=s.frame_id, mask=mask, classes=s.classes, author=s.author, created=s.created,
                   origin=s.origin, model_name=s.model_name, model_sha256=s.model_sha256, parent_id=s.parent_id,
                   status=s.status, comment=s.comment, uncertainty=s.uncertainty, mask_sha256=s.mask_sha256)


def _check_mask(mask: np.ndarray, classes: Mapping[int, str]) -> np.ndarray:
    if not isinstance(mask, np.ndarray) or mask.ndim != 2:
        raise ValueError(f"mask must be an (H, W) labelmap, got shape {getattr(mask, 'shape', type(mask).__name__)}")
    if mask.dtype == np.bool_:
        mask = mask.astype(np.uint8)
    if not np.issubdtype(mask.dtype, np.integer):
        raise ValueError(f"mask must hold integer label values, got dtype {mask.dtype}")
    values = np.unique(mask)
    if values.size and (values[0] < 0 or values[-1] > 255):
        raise ValueError(f"mask label values must be 0..255, found {values[0]}..{values[-1]}")
    unknown = sorted(set(int(v) for v in values) - {0} - {int(k) for k in classes})
    if unknown:
        raise ValueError(f"mask has label values {unknown} that classes {dict(classes)} do not name")
    return np.ascontiguousarray(mask, dtype=np.uint8)
