"""Copy an annotation store into a new one, whatever the engines: an SQLite file onto a PostgreSQL server (a team
outgrowing one machine), or back into a file (:func:`backup` of a PostgreSQL store).

Everything is copied as it is: frames (pixels, source, subject, geometry, metadata, time), masks, every version with
its id, parent, author, time, origin, model, status, comment and uncertainty, the prompts of "prompt" versions and the
embedding cache. Ids are kept, so frame and version numbers that people wrote down still name the same things.

All of it is one write transaction on the target, checked before it commits: the row count of every table equals the
source's, every mask decodes to the pixels its sha256 names, frames, versions, prompts and embeddings equal the
source's byte for byte. A failure anywhere (a check, a lost connection, a kill) leaves nothing half written: the
target keeps no row (an SQLite file this call created is removed). The source is read in one snapshot, so other
annotators may go on saving to it meanwhile (what they save after the snapshot is not copied: migrate when the team
has stopped, and point everyone at the new store).
"""

from __future__ import annotations

import hashlib
import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, List, Optional, Union

from .location import is_url, parse_postgres_url
from .database import AnnotationStore, StoreError, _unpng, pixel_sha256, utc_now

log = logging.getLogger(__name__)

#: Tables in the order rows are copied (each one's references come before it), with their columns and key.
TABLES = (
    ("frames", ("id", "sha256", "source", "idx", "subject", "width", "height", "dtype", "geometry", "metadata",
                "created", "png"), ("id",)),
    ("masks", ("sha256", "width", "height", "png"), ("sha256",)),
    ("versions", ("id", "frame_id", "parent_id", "mask_sha256", "classes", "author", "created", "origin",
                  "model_name", "model_sha256", "status", "comment", "uncertainty"), ("id",)),
    ("version_prompts", ("version_id", "prompts"), ("version_id",)),
    ("embeddings", ("frame_id", "model_sha256", "shape", "data", "created"), ("frame_id", "model_sha256")),
)
_BATCH = 200


class MigrateError(StoreError):
    """The copy could not be made or did not check out; nothing was written to the target."""


@dataclass
class MigrateReport:
    source: str
    target: str
    counts: Dict[str, int] = field(default_factory=dict)
    masks_verified: int = 0
    seconds: float = 0.0

    def summary(self) -> str:
        c = self.counts
        return (f"copied {c.get('frames', 0)} frames, {c.get('masks', 0)} masks, {c.get('versions', 0)} versions, "
                f"{c.get('version_prompts', 0)} prompt records and {c.get('embeddings', 0)} cached embeddings from "
                f"{self.source} to {self.target} in {self.seconds:.1f} s; every table's row count equals the "
                f"source's, {self.masks_verified} mask checksums verified (decoded pixels' sha256), frames, versions, "
                f"prompts and embeddings equal byte for byte")


def _digest(row) -> bytes:
    """A digest of one row's values, the same whichever engine returned them."""
    h = hashlib.sha256()
    for value in row:
        if value is None:
            h.update(b"\x00N")
        elif isinstance(value, (bytes, bytearray, memoryview)):
            h.update(b"\x00B" + hashlib.sha256(bytes(value)).digest())
        elif isinstance(value, float):
            h.update(b"\x00F" + repr(value).encode())
        elif isinstance(value, int):
            h.update(b"\x00I" + str(value).encode())
        else:
            h.update(b"\x00S" + str(value).encode("utf-8"))
    return h.digest()


def _pages(conn, table: str, columns, key) -> "iter":
    """The table's rows in key order, a batch at a time (a PostgreSQL cursor would otherwise hold all of them)."""
    select = f"SELECT {', '.join(columns)} FROM {table}"
    positions = [columns.index(k) for k in key]
    last = None
    while True:
        if last is None:
            sql, params = f"{select} ORDER BY {', '.join(key)} LIMIT {_BATCH}", ()
        elif len(key) == 1:
            sql, params = f"{select} WHERE {key[0]} > ? ORDER BY {key[0]} LIMIT {_BATCH}", (last[0],)
        else:
            sql = (f"{select} WHERE {key[0]} > ? OR ({key[0]} = ? AND {key[1]} > ?) ORDER BY {', '.join(key)} "
                   f"LIMIT {_BATCH}")
            params = (last[0], last[0], last[1])
        rows = conn.execute(sql, params).fetchall()
        if not rows:
            return
        yield from rows
        last = tuple(rows[-1][p] for p in positions)


def copy_store(source: AnnotationStore, target: AnnotationStore,
               progress: Optional[Callable[[str, int], None]] = None) -> MigrateReport:
    """Copy every row of ``source`` into ``target``, which must hold no frame and no version, in one checked
    transaction (see the module docstring). MigrateError when the target is not empty or a check fails."""
    started = time.perf_counter()
    report = MigrateReport(source=str(source.path), target=str(target.path))
    with source._read() as src, target._write() as dst:
        target._backend.schema_lock(dst)  # two migrations into one target: the second waits, then finds it full
        held = {t: int(dst.execute(f"SELECT count(*) FROM {t}").fetchone()[0]) for t in ("frames", "versions")}
        if any(held.values()):
            raise MigrateError(f"{target.path} already holds {held['frames']} frames and {held['versions']} versions; "
                               "migrate copies into a new, empty store")
        source_tables = source._backend.tables(src)
        digests: Dict[str, Dict[tuple, bytes]] = {}
        for table, columns, key in TABLES:
            if table not in source_tables:  # a read-only store made before the prompt tables existed
                report.counts[table] = 0
                digests[table] = {}
                continue
            insert = f"INSERT INTO {table} ({', '.join(columns)}) VALUES ({', '.join('?' * len(columns))})"
            positions = [columns.index(k) for k in key]
            seen: Dict[tuple, bytes] = {}
            for row in _pages(src, table, columns, key):
                dst.execute(insert, tuple(row))
                seen[tuple(row[p] for p in positions)] = _digest(row)
                if progress and len(seen) % 500 == 0:
                    progress(table, len(seen))
            digests[table] = seen
            report.counts[table] = len(seen)
            if progress:
                progress(table, len(seen))
        for table in ("frames", "versions"):
            target._backend.reset_ids(dst, table)
        for key_, value in (("migrated_from", str(source.path)), ("migrated_at", utc_now())):
            dst.execute("INSERT INTO meta (key, value) VALUES (?, ?) ON CONFLICT DO NOTHING", (key_, value))
        report.masks_verified = _verify(source, src, dst, digests, report)
    report.seconds = time.perf_counter() - started
    return report


def _verify(source, src, dst, digests, report) -> int:
    """Inside the target's transaction: counts, mask checksums, every row equal. Returns the masks verified."""
    problems: List[str] = []
    for table, columns, key in TABLES:
        if table in source._backend.tables(src):
            in_source = int(src.execute(f"SELECT count(*) FROM {table}").fetchone()[0])
        else:
            in_source = 0
        in_target = int(dst.execute(f"SELECT count(*) FROM {table}").fetchone()[0])
        if not in_source == in_target == report.counts[table]:
            problems.append(f"{table}: {in_source} rows in the source, {report.counts[table]} copied, {in_target} in "
                            "the target")
        positions = [columns.index(k) for k in key]
        expected = digests[table]
        for row in _pages(dst, table, columns, key):
            name = tuple(row[p] for p in positions)
            if expected.get(name) != _digest(row):
                problems.append(f"{table} {name[0] if len(name) == 1 else name}: differs from the source")
            if len(problems) > 10:
                break
    verified = 0
    for sha, png in _pages(dst, "masks", ("sha256", "png"), ("sha256",)):
        try:
            pixels = _unpng(png, f"mask {sha[:12]}")
        except StoreError as error:
            problems.append(str(error))
            continue
        if pixel_sha256(pixels) != sha:
            problems.append(f"mask {sha[:12]}: its pixels' sha256 is {pixel_sha256(pixels)[:12]} in the target")
        else:
            verified += 1
    if problems:
        raise MigrateError(f"the copy from {source.path} did not check out, nothing was written: "
                           + "; ".join(problems[:10]))
    return verified


def _same_place(source: AnnotationStore, target) -> bool:
    if is_url(str(target)):
        return source.engine == "postgresql" and str(source.path) == parse_postgres_url(str(target)).display
    return source.engine == "sqlite" and Path(target).exists() and Path(target).resolve() == Path(source.path).resolve()


def migrate(source: Union[str, os.PathLike, AnnotationStore], target: Union[str, os.PathLike],
            progress: Optional[Callable[[str, int], None]] = None) -> MigrateReport:
    """Copy the store at ``source`` (a file or a ``postgresql://`` URL, or an open store) into a new store at
    ``target`` (a new file, or an empty PostgreSQL database). The source is opened first: an unreachable or newer
    source leaves the target untouched. An SQLite target file this call created is removed again on failure."""
    created_file: Optional[Path] = None
    if not is_url(str(target)):
        path = Path(target)
        if not path.exists():
            created_file = path
    own_source = not isinstance(source, AnnotationStore)
    src = AnnotationStore(source) if own_source else source
    try:
        if _same_place(src, target):
            raise MigrateError(f"--from and --to are the same store ({src.path})")
        try:
            with AnnotationStore(target) as dst:
                report = copy_store(src, dst, progress)
        except BaseException:
            if created_file is not None:
                for suffix in ("", "-wal", "-shm", "-journal"):
                    leftover = Path(str(created_file) + suffix)
                    if leftover.exists():
                        leftover.unlink()
            raise
    finally:
        if own_source:
            src.close()
    log.info("%s", report.summary())
    return report


def backup(store: AnnotationStore, target: Union[str, os.PathLike]) -> Path:
    """Copy the whole store to ``target`` (a new SQLite file), whatever its engine: SQLite's online backup of an
    SQLite store (:meth:`AnnotationStore.online_backup`), a verified copy (:func:`copy_store`, through
    :func:`migrate`) of a PostgreSQL one; a consistent snapshot even while other processes save. Raises
    FileExistsError rather than overwrite."""
    target = Path(target)
    if target.exists():
        raise FileExistsError(f"backup target {target} exists; choose a new file")
    if store.engine == "sqlite":
        return store.online_backup(target)
    migrate(store, target)
    return target
