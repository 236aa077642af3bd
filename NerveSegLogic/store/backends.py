"""Where an annotation store lives: the small interface the store's operations are written against, and SQLite's.

:class:`~NerveSegLogic.store.database.AnnotationStore` holds the schema and every operation once, in SQL that both
engines run. What differs per engine is only this (one :class:`Backend` each; SQLite | PostgreSQL):

- where: one file (``project.nsdb``) | ``postgresql://USER@HOST[:PORT]/DB``
- connection: ``sqlite3``, WAL, ``synchronous=FULL`` | psycopg 3, autocommit between transactions, opened again
  after a lost connection (a server restart) before the next operation
- write transaction: ``BEGIN IMMEDIATE`` (the file's write lock) | ``BEGIN`` (read committed), and inside it a save
  first takes its frame's row lock (``SELECT ... FOR NO KEY UPDATE``) before its conflict check
- read transaction: ``BEGIN`` (a WAL snapshot) | ``BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY``
- placeholders: ``?`` | ``?`` rewritten to ``%s``
- column types ``{id} {int} {blob} {real}``: INTEGER PRIMARY KEY, INTEGER, BLOB, REAL | BIGINT identity, BIGINT,
  BYTEA, DOUBLE PRECISION
- append-only guard: ``RAISE(ABORT, ...)`` triggers | triggers calling one PL/pgSQL function (TRUNCATE refused too),
  SQLSTATE 23000; both an IntegrityError in their driver
- new row id: ``cursor.lastrowid`` | ``RETURNING id``
- schema creation and upgrades: inside ``BEGIN IMMEDIATE`` | inside a transaction-level advisory lock
- widening the origins CHECK when :data:`~.store.ORIGINS` grows: rewriting the table's SQL (writable_schema) |
  ``ALTER TABLE ... DROP/ADD CONSTRAINT``

Content-addressed rows (frames, masks, embeddings) are inserted with ``ON CONFLICT DO NOTHING`` on both engines.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import List, Sequence, Set, Tuple

from .errors import APPLICATION_ID, NotAStoreError, StoreError

class Backend:
    """What one database engine supplies to the store. Connections take ``?`` placeholders and ``execute`` returns a
    DB-API cursor (``fetchone``, ``fetchall``, ``rowcount``)."""

    #: "sqlite" or "postgresql"
    engine = ""
    #: Column types for the schema's ``{id}`` (the integer primary key), ``{int}``, ``{blob}``, ``{real}``.
    types: dict = {}
    #: Appended to the SELECT of a frame's row inside a save: the lock that serialises saves of one frame.
    row_lock = ""
    #: The driver's exception base classes (what ``except`` around a statement must name).
    errors: Tuple[type, ...] = ()
    #: Errors that mean "no such table" in a store older than a table (read-only SQLite stores).
    missing_table_errors: Tuple[type, ...] = ()

    def describe(self) -> str:
        raise NotImplementedError

    def inspect(self, conn) -> Set[str]:
        """The store's tables; NotAStoreError when the file or database holds something else."""
        raise NotImplementedError

    def connect(self, read_only: bool = False, immutable: bool = False):
        raise NotImplementedError

    def ensure(self, conn):
        """``conn``, or a new connection when it was lost (and no transaction is open on it)."""
        return conn

    def prepare(self, conn, read_only: bool) -> None:
        """Per-connection settings once the store is known to be a store (journal, sync, timeouts)."""

    def begin_write(self, conn) -> None:
        raise NotImplementedError

    def begin_read(self, conn) -> None:
        conn.execute("BEGIN")

    def commit(self, conn) -> None:
        conn.execute("COMMIT")

    def rollback(self, conn) -> None:
        """Roll back the open transaction; quiet when there is none, or when the connection is gone."""
        raise NotImplementedError

    def schema_lock(self, conn) -> None:
        """Inside a write transaction: serialise schema creation and upgrades between processes."""

    def tables(self, conn) -> Set[str]:
        raise NotImplementedError

    def has_trigger(self, conn, name: str, table: str) -> bool:
        raise NotImplementedError

    def guard_ddl(self, name: str, table: str, event: str, message: str) -> List[str]:
        """Statements creating a trigger ``name`` that refuses ``event`` (UPDATE or DELETE) on ``table`` with
        ``message`` (an integrity error)."""
        raise NotImplementedError

    def on_create(self, conn) -> None:
        """Engine marks written once when a store is created (SQLite's application_id)."""

    def insert_id(self, conn, sql: str, params: Sequence) -> int:
        raise NotImplementedError

    def origins_allowed(self, conn) -> List[str]:
        """The origins the versions table's CHECK lists now."""
        raise NotImplementedError

    def widen_origins(self, conn, origins: Sequence[str]) -> None:
        """Let the versions table take ``origins`` (a superset of what it takes: no stored row is invalidated)."""
        raise NotImplementedError

    def reset_ids(self, conn, table: str) -> None:
        """After rows were inserted with explicit ids: the next generated id follows the largest."""

    def lost(self, conn, error: BaseException) -> bool:
        """Whether ``error`` means the connection to the database is gone (a server restart, a cut network)."""
        return False

    def lost_message(self, error: BaseException, phase: str) -> str:
        raise NotImplementedError

    def integrity_check(self, conn) -> List[str]:
        """The engine's own check of its files: problems found, or [] (when it has none to run, [])."""
        return []

    def close(self, conn) -> None:
        conn.close()


_ORIGIN_CHECK = re.compile(r"origin\s+IN\s*\(([^)]*)\)", re.IGNORECASE)


def quoted_names(text: str) -> List[str]:
    return re.findall(r"'([^']*)'", text)


class SqliteBackend(Backend):
    """One SQLite file, WAL journal, ``synchronous=FULL``; the write lock is ``BEGIN IMMEDIATE``."""

    engine = "sqlite"
    types = {"id": "INTEGER PRIMARY KEY", "int": "INTEGER", "blob": "BLOB", "real": "REAL"}
    row_lock = ""  # BEGIN IMMEDIATE already holds the whole file's write lock

    def __init__(self, path: Path, busy_timeout_s: float = 30.0):
        import sqlite3

        self.path = Path(path)
        self.busy_timeout_s = busy_timeout_s
        self._sqlite3 = sqlite3
        self.errors = (sqlite3.Error,)
        self.missing_table_errors = (sqlite3.OperationalError,)

    def describe(self) -> str:
        return str(self.path)

    def connect(self, read_only: bool = False, immutable: bool = False):
        sqlite3 = self._sqlite3
        if read_only:
            query = "mode=ro" + ("&immutable=1" if immutable else "")
            return sqlite3.connect(f"{self.path.resolve().as_uri()}?{query}", uri=True, timeout=self.busy_timeout_s,
                                   isolation_level=None, check_same_thread=False)
        return sqlite3.connect(str(self.path), timeout=self.busy_timeout_s, isolation_level=None,
                               check_same_thread=False)

    def prepare(self, conn, read_only: bool) -> None:
        if not read_only:
            mode = conn.execute("PRAGMA journal_mode=WAL").fetchone()[0]
            if str(mode).lower() != "wal":
                raise StoreError(f"{self.path}: could not switch to WAL journal mode (got {mode!r}); "
                                 "is it on a network file system?")
            conn.execute("PRAGMA synchronous=FULL")
        conn.execute("PRAGMA foreign_keys=ON")

    def inspect(self, conn) -> Set[str]:
        try:
            app_id = conn.execute("PRAGMA application_id").fetchone()[0]
            tables = self.tables(conn)
        except self._sqlite3.DatabaseError as exc:
            if looks_like_sqlite(self.path):  # an SQLite file SQLite could not open: say why, not "not a store"
                raise StoreError(f"annotation store {self.path} could not be opened: {exc}") from None
            raise NotAStoreError(f"{self.path} is not a NerveSeg annotation store (not an SQLite file: {exc})") \
                from None
        if tables and app_id != APPLICATION_ID:
            raise NotAStoreError(f"{self.path} is an SQLite file but not a NerveSeg annotation store "
                                 f"(application_id {app_id:#x}, expected {APPLICATION_ID:#x}; tables: "
                                 f"{', '.join(sorted(tables))})")
        return tables

    def begin_write(self, conn) -> None:
        conn.execute("BEGIN IMMEDIATE")

    def rollback(self, conn) -> None:
        if conn.in_transaction:  # SQLite may have rolled back itself (a full disk): nothing left to undo
            conn.execute("ROLLBACK")

    def commit(self, conn) -> None:
        try:
            conn.execute("COMMIT")
        except BaseException:
            self.rollback(conn)
            raise

    def tables(self, conn) -> Set[str]:
        return {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}

    def has_trigger(self, conn, name: str, table: str) -> bool:
        return conn.execute("SELECT count(*) FROM sqlite_master WHERE type = 'trigger' AND name = ?",
                            (name,)).fetchone()[0] > 0

    def guard_ddl(self, name: str, table: str, event: str, message: str) -> List[str]:
        return [f"CREATE TRIGGER IF NOT EXISTS {name} BEFORE {event} ON {table} "
                f"BEGIN SELECT RAISE(ABORT, {_literal(message)}); END"]

    def on_create(self, conn) -> None:
        conn.execute(f"PRAGMA application_id = {APPLICATION_ID}")

    def insert_id(self, conn, sql: str, params: Sequence) -> int:
        return int(conn.execute(sql, params).lastrowid)

    def _versions_sql(self, conn) -> str:
        return conn.execute("SELECT sql FROM sqlite_master WHERE type = 'table' AND name = 'versions'").fetchone()[0]

    def origins_allowed(self, conn) -> List[str]:
        found = _ORIGIN_CHECK.search(self._versions_sql(conn))
        return quoted_names(found.group(1)) if found else []

    def widen_origins(self, conn, origins: Sequence[str]) -> None:
        sql = self._versions_sql(conn)
        found = _ORIGIN_CHECK.search(sql)
        if found is None:
            raise StoreError(f"{self.path}: cannot add origins {list(origins)}: unexpected versions table {sql!r}")
        widened = sql[:found.start(1)] + ", ".join(_literal(o) for o in origins) + sql[found.end(1):]
        # Widening a CHECK constraint (every stored row already satisfies the new one) is the schema edit SQLite
        # documents for writable_schema (ALTER TABLE, "other kinds of table schema changes").
        schema_cookie = conn.execute("PRAGMA schema_version").fetchone()[0]
        conn.execute("PRAGMA writable_schema = ON")
        try:
            conn.execute("UPDATE sqlite_master SET sql = ? WHERE type = 'table' AND name = 'versions'", (widened,))
            conn.execute(f"PRAGMA schema_version = {int(schema_cookie) + 1}")
        finally:
            conn.execute("PRAGMA writable_schema = OFF")

    def integrity_check(self, conn) -> List[str]:
        lines = [r[0] for r in conn.execute("PRAGMA integrity_check")]
        return [] if lines == ["ok"] else lines

    def backup(self, conn, target: Path) -> None:
        """SQLite's online backup into a new file: a consistent snapshot even while other processes save."""
        destination = self._sqlite3.connect(str(target))
        try:
            conn.backup(destination)
        finally:
            destination.close()


def _literal(text: str) -> str:
    """An SQL string literal (both engines: single quotes, doubled inside)."""
    return "'" + str(text).replace("'", "''") + "'"



def looks_like_sqlite(path: Path) -> bool:
    try:
        with open(path, "rb") as handle:
            return handle.read(16) == b"SQLite format 3\x00"
    except OSError:
        return False
