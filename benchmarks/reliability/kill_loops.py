"""SIGKILL loops, longer than the tests run them: saves to the annotation store and exports, killed at random
moments; counts kills, acknowledged saves, saves lost, and exports seen half-written at the target.

- saves: a forked child saves mask versions as fast as it can and reports each one after save_mask returned; it is
  killed 0..20 ms after its first acknowledged save. Afterwards every acknowledged version must be in the store with
  its exact pixels (sha256), the parent chain intact, SQLite's integrity check "ok".
- exports: a forked child exports with --force in a loop and is killed 50..400 ms in; after each kill the target is
  either absent or passes verify_manifest (every file present with its sha256, nothing extra); a final export
  must leave no leftovers beside the target.

Run:  .venv/bin/python benchmarks/reliability/kill_loops.py --saves 300 --exports 40 [--report kill_loops.json]
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import platform
import random
import select
import signal
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


def save_loop(kills: int, seed: int) -> dict:
    import numpy as np

    from NerveSegLogic.testing.killed_children import SAVE_SHAPE, save_until_killed
    from NerveSegLogic.store.database import AnnotationStore, pixel_sha256

    H, W = SAVE_SHAPE

    context = multiprocessing.get_context("fork")
    rng = random.Random(seed)
    with tempfile.TemporaryDirectory() as tmp:
        db = Path(tmp) / "store.nsdb"
        with AnnotationStore(db) as store:
            frame_id = store.add_frame(np.zeros((H, W), np.uint8), "scan", 0).id
            store.save_mask(frame_id, np.zeros((H, W), np.uint8), {1: "nerve"}, "parent", "manual", None)
        acknowledged = {}
        for kill in range(kills):
            read_fd, write_fd = os.pipe()
            child = context.Process(target=save_until_killed, args=(db, frame_id, seed * 100000 + kill, write_fd),
                                    daemon=True)
            child.start()
            os.close(write_fd)
            select.select([read_fd], [], [], 10.0)
            time.sleep(rng.uniform(0.0, 0.02))
            os.kill(child.pid, signal.SIGKILL)
            child.join(10)
            data = b""
            while True:
                chunk = os.read(read_fd, 65536)
                if not chunk:
                    break
                data += chunk
            os.close(read_fd)
            for line in data.decode().splitlines():
                version_id, sha = line.split()
                acknowledged[int(version_id)] = sha
        with AnnotationStore(db) as store:
            integrity = store.integrity_check()
            lost = sum(1 for vid, sha in acknowledged.items() if pixel_sha256(store.version(vid).mask) != sha)
            history = store.history(frame_id)
            chain_ok = [v.parent_id for v in history[1:]] == [v.id for v in history[:-1]]
    return {"kills": kills, "acknowledged_saves": len(acknowledged), "saves_lost": lost, "integrity": integrity,
            "parent_chain_intact": chain_ok}


def export_loop(kills: int, seed: int) -> dict:
    from NerveSegLogic.testing.killed_children import EXPORT_SHAPE, export_options, export_until_killed
    from NerveSegLogic.store.database import AnnotationStore
    from NerveSegLogic.datasets.export import export_cohort, frames_from_store
    from NerveSegLogic.datasets.manifest import verify_manifest
    from NerveSegLogic.datasets.synthetic import fill_store

    H, W = EXPORT_SHAPE
    context = multiprocessing.get_context("fork")
    rng = random.Random(seed)
    half, complete, absent, leftovers_seen = 0, 0, 0, 0
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        store_path = tmp / "s.db"
        with AnnotationStore(store_path) as store:
            fill_store(store, n_frames=12, n_subjects=4, height=H, width=W)
        out = tmp / "cohort"
        for _ in range(kills):
            ready = context.Event()
            child = context.Process(target=export_until_killed, args=(store_path, out, ready), daemon=True)
            child.start()
            ready.wait(10)
            time.sleep(rng.uniform(0.05, 0.4))
            os.kill(child.pid, signal.SIGKILL)
            child.join(10)
            leftovers_seen += sum(1 for p in tmp.iterdir() if p.name.startswith(".cohort."))
            if not out.exists():
                absent += 1
            elif verify_manifest(out):
                half += 1
            else:
                complete += 1
        with AnnotationStore(store_path) as store:
            export_cohort(frames_from_store(store, ["accepted"]), out, export_options(force=True))
        left_after = [p.name for p in tmp.iterdir() if p.name.startswith(".cohort.")]
    return {"kills": kills, "target_complete_after_kill": complete, "target_absent_after_kill": absent,
            "target_half_written_after_kill": half, "leftover_entries_seen_after_kills": leftovers_seen,
            "leftovers_after_next_export": len(left_after)}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--saves", type=int, default=300, help="SIGKILLs during saves (default %(default)s)")
    parser.add_argument("--exports", type=int, default=40, help="SIGKILLs during exports (default %(default)s)")
    parser.add_argument("--seed", type=int, default=14)
    parser.add_argument("--report", default=None)
    args = parser.parse_args(argv)
    started = time.time()
    saves = save_loop(args.saves, args.seed)
    print("saves:", saves, flush=True)
    exports = export_loop(args.exports, args.seed)
    print("exports:", exports, flush=True)
    report = {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "machine": platform.platform(),
              "cpus": os.cpu_count(), "seconds": round(time.time() - started, 1),
              "command": "benchmarks/reliability/kill_loops.py " + " ".join(argv if argv is not None else sys.argv[1:]),
              "saves": saves, "exports": exports}
    if args.report:
        Path(args.report).write_text(json.dumps(report, indent=1) + "\n", encoding="utf-8")
    bad = saves["saves_lost"] or saves["integrity"] != "ok" or exports["target_half_written_after_kill"] or \
        exports["leftovers_after_next_export"]
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
