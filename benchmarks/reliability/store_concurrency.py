"""The annotation store under a team's load, on both engines: 8 annotator processes saving and accepting on
overlapping frames, clients SIGKILLed mid-save, and (PostgreSQL) a server restart in the middle.

Each annotator is a forked process with its own store connection. In a loop it picks one of a few shared frames at
random, reads its current version and, based on it, either saves a new corrected mask (70 %) or accepts it (30 %,
a status version). It reports on a pipe, in lines shorter than PIPE_BUF (atomic): ``B`` before each save, ``A``
after the save returned (version id, frame, parent, kind, mask sha256, seconds), ``C`` for a save refused as a
conflict (frame, the version it was based on, the current version and its author the refusal named), ``U`` for a
save that failed because the server was away. Every 0.2-0.6 s the parent SIGKILLs a random annotator (most are
inside a save: the report says how many) and starts a new one. On PostgreSQL, when half the saves are in, the
server is restarted in immediate mode (as after a crash: recovery from its WAL) while the annotators keep going.

Afterwards, from the store:
- acknowledged saves lost: every ``A`` must be a version of its frame with its parent, author and mask sha256, and
  its mask must decode to pixels with that sha256;
- versions sharing a parent (frame, parent) and frames whose history is not one line: must be 0;
- conflicts refused as the rule says: each refusal named a newer version of the same frame, by the author the store
  has for it, that replaced the version the save was based on;
- committed without acknowledgement: versions of a save whose client was killed (or lost the server) after the commit
  reached the database and before the reply reached the client (allowed: nothing acknowledged is missing).
Saves per second (acknowledged saves over the run's wall time, kills and restart included) and save times (p50,
p99 of save_mask/set_status calls that returned) per engine.

Both engines commit durably: SQLite WAL with synchronous=FULL; PostgreSQL with fsync on (a throwaway cluster like
the tests', NerveSegLogic/testing/postgres.py TempPostgres, durable=True).

Run:  nice -n 5 .venv/bin/python benchmarks/reliability/store_concurrency.py [--saves 3000] [--engines sqlite,postgresql]
"""

from __future__ import annotations

import argparse
import logging
import multiprocessing
import os
import platform
import random
import select
import signal
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional

HERE = Path(__file__).resolve().parent

import numpy as np  # noqa: E402

from NerveSegLogic.store.database import AnnotationStore, ConflictError, StoreConnectionError, pixel_sha256

SHAPE = (96, 96)
CLASSES = {1: "nerve"}


def annotator(location: str, frames: List[int], name: str, seed: int, fd: int) -> None:
    """Child: save and accept until killed, reporting on ``fd``."""
    logging.getLogger("NerveSegLogic.store.database").setLevel(logging.ERROR)  # "connected again": counted as U
    rng = random.Random(seed)
    pixels = np.random.default_rng(seed)
    store: Optional[AnnotationStore] = None

    def say(line: str) -> None:
        os.write(fd, (line + "\n").encode())

    while True:
        frame = rng.choice(frames)
        try:
            if store is None:
                store = AnnotationStore(location)
            current = store.current(frame)
            accept = current is not None and rng.random() < 0.3
            mask = None if accept else (pixels.random(SHAPE) < 0.3).astype(np.uint8)
            say(f"B {frame}")
            started = time.perf_counter()
            if accept:
                version = store.set_status(frame, "accepted", name, current.id)
            else:
                version = store.save_mask(frame, mask, CLASSES, name, "corrected",
                                          current.id if current else None)
            seconds = time.perf_counter() - started
            say(f"A {version.id} {frame} {version.parent_id} {'accept' if accept else 'save'} {name} "
                f"{version.mask_sha256} {seconds:.6f}")
        except ConflictError as error:
            say(f"C {frame} {error.based_on} {error.current_id} {error.current_author}")
        except StoreConnectionError:
            say("U")
            time.sleep(0.05)


@dataclass
class Ack:
    version: int
    frame: int
    parent: Optional[int]
    kind: str
    author: str
    sha: str
    seconds: float


@dataclass
class Child:
    process: multiprocessing.Process
    fd: int
    name: str
    buffer: bytes = b""
    last: str = ""


@dataclass
class Run:
    engine: str
    acks: List[Ack] = field(default_factory=list)
    conflicts: List[tuple] = field(default_factory=list)
    unavailable: int = 0
    kills: int = 0
    kills_mid_save: int = 0
    restarts: int = 0
    restart_seconds: float = 0.0
    seconds: float = 0.0


def _parse(run: Run, child: Child, data: bytes) -> None:
    child.buffer += data
    *lines, child.buffer = child.buffer.split(b"\n")
    for raw in lines:
        parts = raw.decode().split()
        if not parts:
            continue
        child.last = parts[0]
        if parts[0] == "A":
            run.acks.append(Ack(int(parts[1]), int(parts[2]), None if parts[3] == "None" else int(parts[3]),
                                parts[4], parts[5], parts[6], float(parts[7])))
        elif parts[0] == "C":
            run.conflicts.append((int(parts[1]), None if parts[2] == "None" else int(parts[2]),
                                  None if parts[3] == "None" else int(parts[3]), parts[4]))
        elif parts[0] == "U":
            run.unavailable += 1


def _drain(run: Run, child: Child) -> None:
    """After the child died: read what it wrote up to its end."""
    while True:
        data = os.read(child.fd, 65536)
        if not data:
            break
        _parse(run, child, data)
    os.close(child.fd)


def run_engine(engine: str, location: str, saves: int, clients: int, n_frames: int, seed: int,
               restart=None) -> Run:
    context = multiprocessing.get_context("fork")
    rng = random.Random(seed)
    with AnnotationStore(location) as store:
        frames = []
        for i in range(n_frames):
            record = store.add_frame(np.full(SHAPE, i, np.uint8), "shared", i)
            store.save_mask(record.id, np.zeros(SHAPE, np.uint8), CLASSES, "model", "model", None, model_name="m")
            frames.append(record.id)
    run = Run(engine)
    children: Dict[int, Child] = {}
    counter = [0]

    def spawn() -> None:
        counter[0] += 1
        read_fd, write_fd = os.pipe()
        name = f"annotator{counter[0]}"
        process = context.Process(target=annotator, args=(location, frames, name, seed * 1000 + counter[0],
                                                          write_fd), daemon=True)
        process.start()
        os.close(write_fd)
        children[read_fd] = Child(process, read_fd, name)

    for _ in range(clients):
        spawn()
    started = time.perf_counter()
    next_kill = started + rng.uniform(0.2, 0.6)
    restarted = restart is None
    while len(run.acks) < saves:
        ready, _, _ = select.select(list(children), [], [], 0.05)
        for fd in ready:
            data = os.read(fd, 65536)
            if data:
                _parse(run, children[fd], data)
        now = time.perf_counter()
        if now >= next_kill:
            fd = rng.choice(list(children))
            victim = children.pop(fd)
            os.kill(victim.process.pid, signal.SIGKILL)
            victim.process.join(10)
            _drain(run, victim)
            run.kills += 1
            run.kills_mid_save += victim.last == "B"
            spawn()
            next_kill = time.perf_counter() + rng.uniform(0.2, 0.6)
        if not restarted and len(run.acks) >= saves // 2:
            t = time.perf_counter()
            restart()
            run.restart_seconds = time.perf_counter() - t
            run.restarts += 1
            restarted = True
    run.seconds = time.perf_counter() - started
    for fd, child in list(children.items()):
        os.kill(child.process.pid, signal.SIGKILL)
        child.process.join(10)
        _drain(run, child)
    return run


def verify(run: Run, location: str, n_frames: int) -> dict:
    with AnnotationStore(location) as store:
        versions = {v.id: v for v in store.summaries()}
        lost = []
        for ack in run.acks:
            v = versions.get(ack.version)
            if v is None or (v.frame_id, v.parent_id, v.author, v.mask_sha256) != (ack.frame, ack.parent, ack.author,
                                                                                  ack.sha):
                lost.append(ack.version)
        masks_checked = 0
        for sha in {a.sha for a in run.acks}:
            if pixel_sha256(store.mask(sha)) != sha:
                lost.append(sha)
            masks_checked += 1
        by_frame: Dict[int, List] = {}
        for v in versions.values():
            by_frame.setdefault(v.frame_id, []).append(v)
        shared_parent = sum(len(vs) - len({v.parent_id for v in vs}) for vs in by_frame.values())
        not_a_line = sum(1 for vs in by_frame.values()
                         if [v.parent_id for v in sorted(vs, key=lambda v: v.id)[1:]] !=
                         [v.id for v in sorted(vs, key=lambda v: v.id)[:-1]])
        wrong_refusals = 0
        for frame, based_on, current_id, author in run.conflicts:
            v = versions.get(current_id)
            ok = (v is not None and v.frame_id == frame and v.author == author and current_id != based_on
                  and (based_on is None or (based_on in versions and versions[based_on].frame_id == frame
                                            and based_on < current_id)))
            wrong_refusals += not ok
        integrity = store.integrity_check()
    times = sorted(a.seconds for a in run.acks)
    return {"engine": run.engine, "acknowledged": len(run.acks), "load": os.getloadavg()[0],
            "accepts": sum(a.kind == "accept" for a in run.acks), "conflicts": len(run.conflicts),
            "wrong_refusals": wrong_refusals, "kills": run.kills, "kills_mid_save": run.kills_mid_save,
            "restarts": run.restarts, "restart_seconds": run.restart_seconds, "unavailable": run.unavailable,
            "lost": len(lost), "shared_parent": shared_parent, "not_a_line": not_a_line,
            "unacknowledged_committed": len(versions) - n_frames - len(run.acks), "masks_checked": masks_checked,
            "integrity": integrity, "seconds": run.seconds, "saves_per_s": len(run.acks) / run.seconds,
            "p50_ms": 1000 * statistics.median(times), "p99_ms": 1000 * times[int(0.99 * (len(times) - 1))]}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--saves", type=int, default=3000, help="acknowledged saves per engine (default %(default)s)")
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--frames", type=int, default=16, help="shared frames the clients overlap on")
    parser.add_argument("--engines", default="sqlite,postgresql")
    parser.add_argument("--seed", type=int, default=28)
    parser.add_argument("--report", default=str(HERE / "store_concurrency.md"))
    args = parser.parse_args(argv)
    results = []
    server_version = ""
    for engine in args.engines.split(","):
        with tempfile.TemporaryDirectory(prefix="nerveseg-bench-") as tmp:
            if engine == "sqlite":
                location = str(Path(tmp) / "team.nsdb")
                run = run_engine(engine, location, args.saves, args.clients, args.frames, args.seed)
                results.append(verify(run, location, args.frames))
            else:
                from NerveSegLogic.testing.postgres import TempPostgres, postgres_bindir

                cluster = TempPostgres(postgres_bindir(), durable=True)
                try:
                    location = cluster.new_database("bench")
                    import psycopg

                    with psycopg.connect(location) as conn:
                        server_version = conn.execute("SHOW server_version").fetchone()[0]
                    run = run_engine(engine, location, args.saves, args.clients, args.frames, args.seed,
                                     restart=lambda: cluster.restart("immediate"))
                    results.append(verify(run, location, args.frames))
                finally:
                    cluster.stop()
        print(results[-1], flush=True)
    write_report(Path(args.report), results, args, server_version)
    bad = [r for r in results if r["lost"] or r["shared_parent"] or r["not_a_line"] or r["wrong_refusals"]
           or r["integrity"] != "ok"]
    return 1 if bad else 0


HEADER = ("| engine | saves acknowledged | conflicts refused | refusals not as the rule says | SIGKILLs (mid-save) | "
          "server restarts | acknowledged saves lost | versions sharing a parent / frames not one line | committed, "
          "not acknowledged | integrity | saves/s | p50 save ms | p99 save ms |\n" + "|---" * 13 + "|")


def write_report(path: Path, results: List[dict], args, server_version: str) -> None:
    import sqlite3

    rows = []
    for r in results:
        engine = ("SQLite " + sqlite3.sqlite_version + " (WAL, synchronous=FULL)" if r["engine"] == "sqlite"
                  else f"PostgreSQL {server_version.split()[0]} (fsync on), psycopg 3")
        restart = f"{r['restarts']} ({r['restart_seconds']:.1f} s)" if r["restarts"] else "-"
        rows.append(f"| {engine} | {r['acknowledged']} ({r['accepts']} accepts) | {r['conflicts']} | "
                    f"{r['wrong_refusals']} | {r['kills']} ({r['kills_mid_save']}) | {restart} | **{r['lost']}** | "
                    f"{r['shared_parent']} / {r['not_a_line']} | {r['unacknowledged_committed']} | {r['integrity']} | "
                    f"{r['saves_per_s']:.0f} | {r['p50_ms']:.1f} | {r['p99_ms']:.1f} |")
    restart_note = "".join(f" ({r['acknowledged'] / (r['seconds'] - r['restart_seconds']):.0f}/s on {r['engine']} "
                           "outside the restart)" for r in results if r["restarts"])
    text = f"""# Annotation store under a team's load: SQLite and PostgreSQL

{args.clients} annotator processes save and accept on {args.frames} shared frames (each loop: read the frame's
current version, then save a corrected {SHAPE[0]}x{SHAPE[1]} mask on it, 70 %, or accept it, 30 %), while the
parent SIGKILLs a random annotator every 0.2-0.6 s and starts a new one; on PostgreSQL the server is restarted in
immediate mode (as after a crash) when half the saves are in. The annotators keep going through the restart: a
call that finds the server away fails with one line ("lost the connection ..."), the next one connects again.

{HEADER}
{chr(10).join(rows)}

- **Acknowledged saves lost 0**: every save whose call returned is in the store afterwards as a version of its
  frame with its parent, author and mask sha256, and each of its masks decodes to pixels with that sha256.
- **Conflicts refused as the rule says**: each refusal named a newer version of the same frame, by the author the
  store has for it, which had replaced the version the save was based on; no two versions share a parent and every
  frame's history is one line (parent = the version before): no stale save got through, no save replaced another
  unseen. PostgreSQL refuses more because its saves take longer, so more frames change between an annotator's read
  and save.
- *Committed, not acknowledged*: saves whose client was killed, or lost the server, after the commit reached the
  database and before the answer reached the client. They are whole versions like any other (nothing half
  written); the annotator who made them sees them when the frame is reloaded.
- Saves per second are acknowledged saves over the whole run's wall time, kills and restart
  included{restart_note}; save times are the save_mask / set_status calls that returned (the lock wait under
  contention included). The annotators save as fast as they can, with no think time: a human team saves a few
  times a minute each.
- Both engines commit durably (one fsync per save). The PostgreSQL server shares the machine's cores with the 8
  annotators and the parent.

Machine: {platform.platform()}, {os.cpu_count()} CPU cores shared with other work (1-minute load average after the
runs: {", ".join(f"{r['engine']} {r['load']:.1f}" for r in results)}), Python {platform.python_version()}.
Date: {time.strftime("%Y-%m-%d", time.gmtime())}.

Command: `nice -n 5 .venv/bin/python benchmarks/reliability/store_concurrency.py --saves {args.saves} --clients {args.clients}
--frames {args.frames} --seed {args.seed}`
"""
    path.write_text(text, encoding="utf-8")
    print(f"wrote {path}")


if __name__ == "__main__":
    sys.exit(main())
