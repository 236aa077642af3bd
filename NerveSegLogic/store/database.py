"""The annotation store: append-only, safe for several annotators and processes. One SQLite file per project (the
embedded default), or the same store on a PostgreSQL server (``postgresql://USER@HOST[:PORT]/DB``) for a team.

What it keeps:
- frames: each image once, keyed by the sha256 of its pixels, with where it came from (source, index), the subject
  it belongs to, its geometry and free metadata. The pixels are PNG bytes (lossless, uint8 or uint16).
- masks: each distinct labelmap once, keyed by the sha256 of its pixels, as PNG bytes.
- versions: every save of a frame's mask is a new row (author, UTC time, origin, model name and card sha256,
  parent version, status, comment, uncertainty). A frame's current version is its newest row.

One schema and one set of operations, written here once; the engine is a detail (:mod:`.backends` says what differs:
connection, how a transaction takes its lock, placeholders, column types, the append-only triggers).

Guarantees, and how they are kept (on both engines):
- Append-only: triggers in the database refuse UPDATE and DELETE on frames, masks and versions (and TRUNCATE on
  PostgreSQL), so not even a stray SQL statement from another tool can rewrite history. Restoring an old mask is a
  new version.
- Optimistic concurrency: a save names the version it was based on (``parent_id``). Inside the save's transaction,
  after taking the lock that serialises saves of the frame (SQLite: ``BEGIN IMMEDIATE``, the file's write lock;
  PostgreSQL: ``SELECT ... FOR NO KEY UPDATE`` on the frame's row), the store compares it with the frame's current
  version and refuses a stale save with :class:`ConflictError` naming who saved the newer version and when; two
  annotators cannot both pass the check. A unique index on (frame, parent) backs this up: two versions can never
  share a parent, so a frame's history is always one line.
- Durability. SQLite: WAL journal with ``synchronous=FULL``. WAL alone already keeps the file consistent when a
  process is killed mid-save (an uncommitted transaction is simply not in the log). FULL also fsyncs the log at every
  commit, so a save that returned survives a power cut or OS crash too; NORMAL could lose the last saves there. A
  save is a person's minutes of work and saves come at human pace, so one fsync per save (a few ms) is the right
  price. PostgreSQL: a save returns after the server's commit (its WAL, flushed as the server is configured); a
  client killed mid-save leaves nothing, the server rolls its transaction back.
- Several processes may open the same store (each with its own :class:`AnnotationStore`); readers never block the
  writer. SQLite's WAL needs a local file system (not a network share), as SQLite documents: a team on several
  machines uses PostgreSQL (``nerveseg annotate migrate`` copies a file store there).
"""

from __future__ import annotations

import getpass
import hashlib
import json
import logging
import os
import sys
import threading
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Dict, Iterable, List, Mapping, Optional, Sequence, Tuple, Union

import cv2
import numpy as np

from ..frame import ImageGeometry
from .backends import Backend, SqliteBackend
# The store's errors are raised here and callers import them from here too.
from .errors import (APPLICATION_ID, APPLICATION_NAME, ConflictError, NotAStoreError,  # noqa: F401
                     StoreConnectionError, StoreError)
from .location import POSTGRES_SCHEMES, STORE_URL_FORM, LocationError, is_url, parse_postgres_url
from .postgres import PostgresBackend

STATUSES = ("draft", "accepted", "rejected", "needs-review")
ORIGINS = ("model", "manual", "corrected", "prompt", "propagated", "consensus")
#: Pseudo-status for :meth:`AnnotationStore.frames`: frames with no version yet.
UNLABELLED = "unlabelled"

#: The schema's version, kept in the meta table (APPLICATION_ID and APPLICATION_NAME, in errors.py, mark the store).
SCHEMA_VERSION = 1

logger = logging.getLogger(__name__)


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

def open_backend(location) -> "Backend":
    """The backend for a store location: a ``postgresql://`` URL opens PostgreSQL, a path SQLite."""
    if is_url(location):
        scheme = location.strip().split("://", 1)[0].lower()
        if scheme not in POSTGRES_SCHEMES:
            raise LocationError(f"{location}: an annotation store is a file path or {STORE_URL_FORM} (scheme "
                                f"{scheme!r} is not supported)")
        return PostgresBackend(parse_postgres_url(location))
    return SqliteBackend(Path(location))


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
# Schema: one for both engines. {id}, {int}, {blob} and {real} are the backend's column types
# (backends.Backend.types); everything else is SQL that SQLite and PostgreSQL read alike.

def _origins_sql(origins: Sequence[str] = ORIGINS) -> str:
    return ", ".join(f"'{o}'" for o in origins)


_SCHEMA = """
CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE schema_version (version {int} NOT NULL, applied TEXT NOT NULL);
CREATE TABLE frames (
    id {id},
    sha256 TEXT NOT NULL UNIQUE,
    source TEXT NOT NULL,
    idx {int} NOT NULL,
    subject TEXT,
    width {int} NOT NULL,
    height {int} NOT NULL,
    dtype TEXT NOT NULL,
    geometry TEXT,
    metadata TEXT NOT NULL,
    created TEXT NOT NULL,
    png {blob} NOT NULL
);
CREATE INDEX frames_subject ON frames(subject);
CREATE TABLE masks (
    sha256 TEXT PRIMARY KEY,
    width {int} NOT NULL,
    height {int} NOT NULL,
    png {blob} NOT NULL
);
CREATE TABLE versions (
    id {id},
    frame_id {int} NOT NULL REFERENCES frames(id),
    parent_id {int} REFERENCES versions(id),
    mask_sha256 TEXT NOT NULL REFERENCES masks(sha256),
    classes TEXT NOT NULL,
    author TEXT NOT NULL,
    created TEXT NOT NULL,
    origin TEXT NOT NULL CHECK (origin IN (ORIGIN_LIST)),
    model_name TEXT,
    model_sha256 TEXT,
    status TEXT NOT NULL CHECK (status IN ('draft', 'accepted', 'rejected', 'needs-review')),
    comment TEXT,
    uncertainty {real}
);
CREATE INDEX versions_frame ON versions(frame_id, id);
-- One line of history per frame: no two versions share a parent (the first version's parent is NULL -> 0).
CREATE UNIQUE INDEX versions_one_child ON versions(frame_id, COALESCE(parent_id, 0))
""".replace("ORIGIN_LIST", _origins_sql())

# Issue 15, added to every store when it is opened for writing (IF NOT EXISTS: old stores gain them, nothing else
# changes). embeddings is a cache (float16, keyed by the model's weights sha256): rows are never updated, and may be
# deleted to reclaim space; version_prompts is history like versions.
_PROMPT_SCHEMA = """
CREATE TABLE IF NOT EXISTS embeddings (
    frame_id {int} NOT NULL REFERENCES frames(id),
    model_sha256 TEXT NOT NULL,
    shape TEXT NOT NULL,
    data {blob} NOT NULL,
    created TEXT NOT NULL,
    PRIMARY KEY (frame_id, model_sha256)
);
CREATE TABLE IF NOT EXISTS version_prompts (
    version_id {int} PRIMARY KEY REFERENCES versions(id),
    prompts TEXT NOT NULL
)
"""

_APPEND_ONLY_TABLES = ("frames", "masks", "versions", "schema_version", "meta")


def _refusal(table: str, event: str) -> Tuple[str, str, str, str]:
    return (f"{table}_no_{event.lower()}", table, event,
            f"the annotation store is append-only: {event} on {table} is refused")


#: (trigger name, table, event, message): the append-only guard, as triggers in both engines.
_GUARDS = tuple(_refusal(table, event) for table in _APPEND_ONLY_TABLES for event in ("UPDATE", "DELETE"))
_PROMPT_GUARDS = (("embeddings_no_update", "embeddings", "UPDATE",
                   "the embedding cache is never updated: a new model has a new key"),
                  _refusal("version_prompts", "UPDATE"), _refusal("version_prompts", "DELETE"))


# ----------------------------------------------------------------------------------------------------------------

def _writable(path: Path) -> bool:
    """Whether this process may write ``path`` (False on read-only media, also for root)."""
    return os.access(path, os.W_OK)


def database_errors() -> Tuple[type, ...]:
    """The database drivers' error base classes loaded in this process (sqlite3's, and psycopg's once a PostgreSQL
    store was opened): what a command catches to print one line instead of a traceback."""
    import sqlite3

    psycopg = sys.modules.get("psycopg")
    return (sqlite3.Error,) + ((psycopg.Error,) if psycopg is not None else ())


class AnnotationStore:
    """An append-only annotation store (created if missing): one SQLite file, or a PostgreSQL database when
    ``path`` is a ``postgresql://USER@HOST[:PORT]/DB`` URL. Same schema, same operations, same guarantees on both
    (the engine is a :class:`~NerveSegLogic.store.backends.Backend`). Use as a context manager or call
    :meth:`close`. Thread-safe (one lock per instance); open one instance per process.

    Raises NotAStoreError when ``path`` exists but is not a NerveSeg store (or has a newer schema); StoreError for a
    URL without a database (with an example) and, as :class:`StoreConnectionError`, for a server that cannot be
    reached (one line naming the host and the reason).

    A store file that this process cannot write (read-only media, a read-only file) is opened read-only:
    ``read_only`` is True, reading works, and every write raises StoreError saying so. On a read-only folder SQLite
    cannot create the WAL's shared-memory file, so the store is then opened as immutable (what a closed store copied
    onto a DVD or a read-only share is).

    ``path`` is the file's Path, or for PostgreSQL the URL without its password; ``engine`` is "sqlite" or
    "postgresql".
    """

    def __init__(self, path: Union[str, os.PathLike]):
        self._lock = threading.RLock()
        self._conn = None
        self.read_only = False
        self._read_only_reason = ""
        try:
            self._backend = open_backend(path)
        except LocationError as error:
            raise StoreError(str(error)) from None
        immutable = False
        if self._backend.engine == "sqlite":
            self.path = Path(path)
            if self.path.is_dir():
                raise NotAStoreError(f"{self.path} is a folder; an annotation store is one file (e.g. project.nsdb)")
            if self.path.parent and not self.path.parent.exists():
                raise FileNotFoundError(f"folder of the annotation store {self.path} does not exist")
            if self.path.exists():
                file_ok, folder_ok = _writable(self.path), _writable(self.path.parent)
                if not (file_ok and folder_ok):
                    self.read_only = True
                    self._read_only_reason = ("the file is read-only" if not file_ok else
                                              "its folder is read-only")
            elif not _writable(self.path.parent):
                raise StoreError(f"cannot create annotation store {self.path}: its folder is read-only")
            immutable = self.read_only and not _writable(self.path.parent)
        else:
            self.path = self._backend.describe()  # type: ignore[assignment]
        self._conn = self._backend.connect(read_only=self.read_only, immutable=immutable)
        try:
            self._open()
        except BaseException:
            self._backend.close(self._conn)
            self._conn = None
            raise

    @property
    def engine(self) -> str:
        """The database engine: "sqlite" or "postgresql"."""
        return self._backend.engine

    # -- opening -------------------------------------------------------------------------------------------------

    def _open(self) -> None:
        tables = self._backend.inspect(self._conn)
        if self.read_only:
            if not tables:
                raise NotAStoreError(f"{self.path} is empty and read-only ({self._read_only_reason}): not a NerveSeg "
                                     "annotation store")
            self._backend.prepare(self._conn, read_only=True)
            self._check_schema()
            logger.info("annotation store %s opened read-only: %s", self.path, self._read_only_reason)
            return
        self._backend.prepare(self._conn, read_only=False)
        if not tables:
            self._create_schema()
        self._check_schema()
        self._add_prompt_tables()

    def _ddl(self, schema: str) -> List[str]:
        text = schema.format(**self._backend.types)
        return [s for s in text.split(";\n") if s.strip()]

    def _guard(self, conn, name: str, table: str, event: str, message: str) -> None:
        if not self._backend.has_trigger(conn, name, table):
            for statement in self._backend.guard_ddl(name, table, event, message):
                conn.execute(statement)

    def _create_schema(self) -> None:
        with self._write() as conn:
            self._backend.schema_lock(conn)
            # Another process may have created it between our look and our write lock.
            if "meta" in self._backend.tables(conn):
                return
            self._backend.on_create(conn)
            for statement in self._ddl(_SCHEMA):
                conn.execute(statement)
            for guard in _GUARDS:
                self._guard(conn, *guard)
            conn.execute("INSERT INTO meta VALUES ('application', ?)", (APPLICATION_NAME,))
            conn.execute("INSERT INTO schema_version VALUES (?, ?)", (SCHEMA_VERSION, utc_now()))

    def _check_schema(self) -> None:
        try:
            app = self._one("SELECT value FROM meta WHERE key = 'application'")
            version = self._one("SELECT max(version) FROM schema_version")[0]
        except self._backend.errors as exc:
            raise NotAStoreError(f"{self.path} is not a NerveSeg annotation store ({exc})") from None
        if not app or app[0] != APPLICATION_NAME:
            raise NotAStoreError(f"{self.path} is not a NerveSeg annotation store (meta.application = {app})")
        if version is None or version > SCHEMA_VERSION:
            raise NotAStoreError(f"{self.path} has annotation store schema {version}; this NerveSeg reads "
                                 f"schema {SCHEMA_VERSION} (update NerveSeg)")

    # -- connections and transactions ----------------------------------------------------------------------------

    def _live(self):
        """The connection (caller holds the lock); a PostgreSQL connection lost since the last call is opened again
        here, between operations, never inside a transaction."""
        if self._conn is None:
            raise StoreError(f"annotation store {self.path} is closed")
        conn = self._backend.ensure(self._conn)
        if conn is not self._conn:
            logger.warning("annotation store %s: connected again after a lost connection", self.path)
            self._conn = conn
        return conn

    def _lost(self, conn, error: BaseException, phase: str) -> None:
        if self._backend.lost(conn, error):
            raise StoreConnectionError(self._backend.lost_message(error, phase)) from None

    def _first(self, step, phase: str):
        """Run ``step(conn)``, the first statement of an operation (caller holds the lock). When the connection
        turns out to be lost (a PostgreSQL server restarted since the last call) nothing has happened yet: connect
        again and run it once more; a second loss is a StoreConnectionError."""
        conn = self._live()
        try:
            return conn, step(conn)
        except self._backend.errors as error:
            if not self._backend.lost(conn, error):
                raise
        conn = self._live()
        try:
            return conn, step(conn)
        except self._backend.errors as error:
            self._lost(conn, error, phase)
            raise

    def _one(self, sql: str, params: Sequence = ()):
        """One row of a read outside a transaction (a read is safe to repeat after a lost connection)."""
        with self._lock:
            return self._first(lambda conn: conn.execute(sql, params).fetchone(), "read")[1]

    def _all(self, sql: str, params: Sequence = ()) -> list:
        with self._lock:
            return self._first(lambda conn: conn.execute(sql, params).fetchall(), "read")[1]

    @contextmanager
    def _write(self):
        """One write transaction. SQLite: ``BEGIN IMMEDIATE`` holds the file's write lock from the first statement.
        PostgreSQL: a read-committed transaction in which a save first locks its frame's row
        (:meth:`_require_frame` with ``lock``), so its conflict check sees every save that committed before it."""
        if self.read_only:
            raise StoreError(f"annotation store {self.path} is opened read-only ({self._read_only_reason}); nothing "
                             "can be saved to it (copy it to a writable folder to edit)")
        backend = self._backend
        with self._lock:
            conn, _ = self._first(backend.begin_write, "write")
            try:
                yield conn
            except BaseException as error:
                backend.rollback(conn)
                if isinstance(error, backend.errors):
                    self._lost(conn, error, "write")
                raise
            try:
                backend.commit(conn)
            except backend.errors as error:
                self._lost(conn, error, "commit")
                raise

    @contextmanager
    def _read(self):
        """A read transaction: every statement inside sees the same snapshot."""
        backend = self._backend
        with self._lock:
            conn, _ = self._first(backend.begin_read, "read")
            try:
                yield conn
            except BaseException as error:
                backend.rollback(conn)
                if isinstance(error, backend.errors):
                    self._lost(conn, error, "read")
                raise
            try:
                backend.commit(conn)
            except backend.errors as error:
                self._lost(conn, error, "read")
                raise

    def close(self) -> None:
        with self._lock:
            if self._conn is not None:
                try:
                    self._backend.close(self._conn)
                finally:
                    self._conn = None

    def __enter__(self) -> "AnnotationStore":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"AnnotationStore({str(self.path)!r})"

    def online_backup(self, target: Union[str, os.PathLike]) -> Path:
        """Copy an SQLite store to ``target`` (a new file) with SQLite's online backup: a consistent snapshot even
        while other processes save. For any engine use :func:`NerveSegLogic.store.migrate.backup`, which calls this
        for SQLite and copies a PostgreSQL store with a verified migration. Raises FileExistsError rather than
        overwrite, StoreError for a store that is not an SQLite file."""
        target = Path(target)
        if target.exists():
            raise FileExistsError(f"backup target {target} exists; choose a new file")
        if self._backend.engine != "sqlite":
            raise StoreError(f"{self}: SQLite's online backup copies SQLite files only; this store runs on "
                             f"{self._backend.engine} (use NerveSegLogic.store.migrate.backup)")
        with self._lock:
            self._backend.backup(self._live(), target)
        return target

    def integrity_check(self) -> str:
        """``"ok"``, or a description of the damage: the engine's own check (SQLite's integrity_check) and the
        history's shape (each parent an older version of the same frame, no two versions of one parent, every
        version's mask present)."""
        with self._read() as conn:
            problems = list(self._backend.integrity_check(conn))
            checks = (
                ("versions whose parent is not an older version of the same frame",
                 "SELECT count(*) FROM versions v JOIN versions p ON p.id = v.parent_id "
                 "WHERE p.frame_id <> v.frame_id OR p.id >= v.id"),
                ("parents with more than one child version",
                 "SELECT count(*) FROM (SELECT frame_id FROM versions GROUP BY frame_id, COALESCE(parent_id, 0) "
                 "HAVING count(*) > 1) forks"),
                ("versions whose mask is missing",
                 "SELECT count(*) FROM versions v LEFT JOIN masks m ON m.sha256 = v.mask_sha256 "
                 "WHERE m.sha256 IS NULL"))
            for what, sql in checks:
                found = int(conn.execute(sql).fetchone()[0])
                if found:
                    problems.append(f"{found} {what}")
        return "\n".join(problems) or "ok"

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
                "INSERT INTO frames (sha256, source, idx, subject, width, height, dtype, geometry, metadata, created, "
                "png) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT DO NOTHING",
                (sha, str(source), int(index), subject, int(image.shape[1]), int(image.shape[0]), image.dtype.name,
                 geometry_text, metadata_text, utc_now(), png))
            row = conn.execute(f"SELECT {_FRAME_COLUMNS} FROM frames WHERE sha256 = ?", (sha,)).fetchone()
        return _frame_record(row)

    def frame(self, frame_id: int) -> FrameRecord:
        """The frame's record; KeyError if there is no such frame."""
        row = self._one(f"SELECT {_FRAME_COLUMNS} FROM frames WHERE id = ?", (int(frame_id),))
        if row is None:
            raise KeyError(f"no frame {frame_id} in annotation store {self.path}")
        return _frame_record(row)

    def frame_by_sha256(self, sha256: str) -> Optional[FrameRecord]:
        row = self._one(f"SELECT {_FRAME_COLUMNS} FROM frames WHERE sha256 = ?", (sha256,))
        return None if row is None else _frame_record(row)

    def image(self, frame_id: int) -> np.ndarray:
        """The frame's pixels, (H, W) uint8 or uint16 as stored; KeyError if there is no such frame."""
        row = self._one("SELECT png FROM frames WHERE id = ?", (int(frame_id),))
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
            where.append("(" + " OR ".join(clauses) + ")" if clauses else "1 = 0")
        if subject is not None:
            where.append("f.subject = ?")
            params.append(subject)
        sql = (f"SELECT {_FRAME_COLUMNS_F} FROM frames f "
               "LEFT JOIN (SELECT frame_id, max(id) AS head FROM versions GROUP BY frame_id) h ON h.frame_id = f.id "
               "LEFT JOIN versions v ON v.id = h.head")
        if where:
            sql += " WHERE " + " AND ".join(where)
        sql += " ORDER BY f.id"
        return [_frame_record(r) for r in self._all(sql, params)]

    def frame_count(self) -> int:
        return int(self._one("SELECT count(*) FROM frames")[0])

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
        row = self._one(f"SELECT {_VERSION_COLUMNS_WITH_MASK} WHERE v.id = ?", (int(version_id),))
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
        return [_summary(r) for r in self._all(sql, params)]

    def mask(self, mask_sha256: str) -> np.ndarray:
        """A stored mask by its sha256 (see :attr:`Version.mask_sha256`); KeyError if absent."""
        row = self._one("SELECT png FROM masks WHERE sha256 = ?", (mask_sha256,))
        if row is None:
            raise KeyError(f"no mask {mask_sha256} in annotation store {self.path}")
        return _unpng(row[0], f"mask {mask_sha256[:12]}")

    # -- prompt model support (issue 15): embedding cache and the prompts of "prompt" versions ----------------------

    def _add_prompt_tables(self) -> None:
        """Create the embedding cache and the prompt table if missing, and let the versions table take every origin
        of :data:`ORIGINS` in a store made before one existed. Additive: old readers ignore the new tables."""
        backend = self._backend
        with self._write() as conn:
            backend.schema_lock(conn)
            if not {"embeddings", "version_prompts"} <= backend.tables(conn):
                for statement in self._ddl(_PROMPT_SCHEMA):
                    conn.execute(statement)
            for guard in _PROMPT_GUARDS:
                self._guard(conn, *guard)
            allowed = backend.origins_allowed(conn)
            missing = [o for o in ORIGINS if o not in allowed]
            if missing:
                backend.widen_origins(conn, list(allowed) + missing)

    def embedding(self, frame_id: int, model_sha256: str) -> Optional[np.ndarray]:
        """The cached image embedding (float16) of a frame for the model whose weights have ``model_sha256``, or
        None when there is none (or the store predates the cache and is read-only)."""
        try:
            row = self._one("SELECT shape, data FROM embeddings WHERE frame_id = ? AND model_sha256 = ?",
                            (int(frame_id), str(model_sha256)))
        except self._backend.missing_table_errors:  # no such table: a read-only store made before the cache existed
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
            cur = conn.execute("INSERT INTO embeddings (frame_id, model_sha256, shape, data, created) "
                               "VALUES (?, ?, ?, ?, ?) ON CONFLICT DO NOTHING",
                               (int(frame_id), model_sha256, json.dumps(list(array.shape)), array.tobytes(),
                                utc_now()))
            inserted = cur.rowcount == 1
        return inserted

    def prompts(self, version_id: int) -> Optional[dict]:
        """The prompts a "prompt" version was made from (as saved with it), or None for other versions."""
        try:
            row = self._one("SELECT prompts FROM version_prompts WHERE version_id = ?", (int(version_id),))
        except self._backend.missing_table_errors:
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
            frame = self._require_frame(conn, frame_id, lock=True)
            if (frame[1], frame[0]) != mask.shape:
                raise ValueError(f"mask shape {mask.shape} differs from frame {frame_id}'s image "
                                 f"(height {frame[1]}, width {frame[0]})")
            self._check_parent(conn, frame_id, parent_id, mask)
            conn.execute("INSERT INTO masks (sha256, width, height, png) VALUES (?, ?, ?, ?) ON CONFLICT DO NOTHING",
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
            self._require_frame(conn, frame_id, lock=True)
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
        version_id = self._backend.insert_id(
            conn,
            "INSERT INTO versions (frame_id, parent_id, mask_sha256, classes, author, created, origin, model_name, "
            "model_sha256, status, comment, uncertainty) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (int(frame_id), None if parent_id is None else int(parent_id), mask_sha, classes_text, author, created,
             origin, model_name, model_sha256, status, comment, uncertainty))
        return version_id, created

    def _require_frame(self, conn, frame_id: int, lock: bool = False):
        """The frame's (width, height); KeyError if there is none. ``lock`` (inside a write transaction): take the
        lock that serialises saves of this frame before the conflict check (PostgreSQL: the frame's row lock;
        SQLite: BEGIN IMMEDIATE already holds the whole file's)."""
        row = conn.execute("SELECT width, height FROM frames WHERE id = ?" + (self._backend.row_lock if lock else ""),
                           (int(frame_id),)).fetchone()
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
