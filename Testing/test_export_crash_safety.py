"""Export under faults: what killed runs leave is cleaned (only ours), every file is on disk before the rename,
``--force`` never leaves the target missing, one sector-check picture, and SIGKILLs at random moments never leave a
half data set at the target."""

import json
import multiprocessing
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from NerveSegLogic.testing.killed_children import EXPORT_SHAPE, export_options as _options
from NerveSegLogic.testing.killed_children import export_until_killed as _export_forever
from NerveSegLogic.store.database import AnnotationStore
from NerveSegLogic.datasets import atomic_dir
from NerveSegLogic.datasets.export import check_picture_path, export_cohort, frames_from_store
from NerveSegLogic.datasets.manifest import verify_manifest
from NerveSegLogic.datasets.synthetic import fill_store

H, W = EXPORT_SHAPE


@pytest.fixture(scope="module")
def frames(tmp_path_factory):
    path = tmp_path_factory.mktemp("store") / "annotations.db"
    with AnnotationStore(path) as store:
        fill_store(store, n_frames=12, n_subjects=6, height=H, width=W)
        yield frames_from_store(store, ["accepted"])


def _dead_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def _leftover(parent: Path, target: str, kind: str, pid: int, marker=True) -> Path:
    folder = parent / f".{target}.{kind}-{os.urandom(4).hex()}"
    folder.mkdir(parents=True)
    (folder / "big.bin").write_bytes(b"\0" * 1000)
    if marker:
        (parent / (folder.name + ".nerveseg")).write_text(json.dumps({
            "program": "nerveseg export", "kind": kind, "target": target, "host": os.uname().nodename, "pid": pid,
            "started": 0}))
    return folder


def test_leftovers_of_killed_runs_are_removed_but_nothing_that_is_not_ours(frames, tmp_path):
    dead = _dead_pid()
    killed = _leftover(tmp_path, "cohort", "partial", dead)
    foreign = _leftover(tmp_path, "cohort", "partial", dead, marker=False)  # same name pattern, no marker
    running = _leftover(tmp_path, "cohort", "partial", os.getppid())  # a run still in progress
    other_target = _leftover(tmp_path, "other", "partial", dead)
    export_cohort(frames, tmp_path / "cohort", _options())
    assert not killed.exists() and not (tmp_path / (killed.name + ".nerveseg")).exists()
    assert foreign.exists() and running.exists() and other_target.exists()
    assert verify_manifest(tmp_path / "cohort") == []


def test_an_old_export_moved_aside_by_a_killed_replacement_is_put_back(frames, tmp_path):
    aside = _leftover(tmp_path, "cohort", "replaced", _dead_pid())
    (aside / "manifest.json").write_text("{}")
    atomic_dir.clean_leftovers(tmp_path / "cohort")
    assert (tmp_path / "cohort" / "manifest.json").is_file() and not aside.exists()


def test_every_file_and_folder_is_fsynced_before_the_rename(frames, tmp_path, monkeypatch):
    synced, at_move = set(), {}
    real_fsync, real_move = os.fsync, atomic_dir.move_into_place

    def fsync(fd):
        synced.add(os.path.realpath(f"/proc/self/fd/{fd}"))
        return real_fsync(fd)

    def move(staged, out, replace):
        at_move["files"] = {os.path.realpath(p) for p in staged.rglob("*")} | {os.path.realpath(staged)}
        at_move["synced"] = set(synced)
        return real_move(staged, out, replace)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr("NerveSegLogic.datasets.export.move_into_place", move)
    export_cohort(frames, tmp_path / "cohort", _options())
    assert at_move["files"] and at_move["files"] <= at_move["synced"]
    assert os.path.realpath(tmp_path) in synced  # the parent folder, after the rename


@pytest.mark.parametrize("exchange", [True, False], ids=["atomic-swap", "rename-aside"])
def test_force_replacement_never_leaves_the_target_missing(frames, tmp_path, monkeypatch, exchange):
    out = tmp_path / "cohort"
    export_cohort(frames, out, _options())
    if not exchange:
        monkeypatch.setattr(atomic_dir, "_exchange", lambda a, b: False)
    states, real_rename = [], os.rename

    def rename(src, dst):  # after every rename of the replacement: is there an export at the target?
        real_rename(src, dst)
        states.append((Path(src).name, Path(dst).name, (out / "manifest.json").exists()))

    monkeypatch.setattr(os, "rename", rename)
    export_cohort(frames, out, _options(force=True))
    if exchange:  # one system call swaps them: no rename ever leaves the target without its export
        assert all(present for _, _, present in states), states
    else:  # the old one goes aside only when the new one is complete, and the next step puts the new one in
        assert [present for _, _, present in states] == [False, True], states
    assert verify_manifest(out) == []
    assert [p.name for p in tmp_path.iterdir()] == ["cohort"]


def test_a_replacement_whose_final_rename_fails_restores_the_old_export(frames, tmp_path, monkeypatch):
    out = tmp_path / "cohort"
    export_cohort(frames, out, _options())
    before = (out / "manifest.json").read_bytes()
    monkeypatch.setattr(atomic_dir, "_exchange", lambda a, b: False)
    real_rename = os.rename

    def rename(src, dst):
        if Path(src).name.startswith(".cohort.partial-") and Path(dst) == out:
            raise OSError(28, "No space left on device")
        return real_rename(src, dst)

    monkeypatch.setattr(atomic_dir.os, "rename", rename)
    with pytest.raises(OSError, match="No space"):
        export_cohort(frames, out, _options(force=True))
    assert (out / "manifest.json").read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["cohort"]


def test_forced_sector_reruns_keep_exactly_one_check_picture(frames, tmp_path):
    out = tmp_path / "share" / "cohort"
    options = dict(deidentify=True, salt_file=tmp_path / "keys" / "salt", sector="blank")
    out.parent.mkdir(parents=True)
    (out.parent / "cohort.sector-check-2.png").write_bytes(b"old page")  # what older versions left
    for force in (False, True, True):
        result = export_cohort(frames, out, _options(force=force, **options))
    pictures = sorted(p.name for p in out.parent.iterdir() if "sector-check" in p.name)
    assert pictures == ["cohort.sector-check.png"] and result.check_pictures == [check_picture_path(out)]


def test_sigkill_during_export_never_leaves_a_half_data_set_and_the_next_run_cleans_up(frames, tmp_path):
    store_path = tmp_path / "s.db"
    with AnnotationStore(store_path) as store:
        fill_store(store, n_frames=6, n_subjects=3, height=H, width=W)
    out = tmp_path / "cohort"
    context = multiprocessing.get_context("fork")
    rng = random.Random(14)
    kills, seen_complete = 0, 0
    for _ in range(8):
        ready = context.Event()
        child = context.Process(target=_export_forever, args=(store_path, out, ready), daemon=True)
        child.start()
        assert ready.wait(10)
        time.sleep(rng.uniform(0.05, 0.4))
        os.kill(child.pid, signal.SIGKILL)
        child.join(10)
        kills += 1
        if out.exists():  # complete or absent, never half
            assert verify_manifest(out) == []
            seen_complete += 1
    assert kills == 8 and seen_complete >= 1
    with AnnotationStore(store_path) as store:
        export_cohort(frames_from_store(store, ["accepted"]), out, _options(force=True))
    assert verify_manifest(out) == []
    assert [p.name for p in tmp_path.iterdir() if not p.name.startswith("s.db")] == ["cohort"]


def test_a_marker_draft_left_by_a_run_killed_while_writing_it_is_removed_and_a_live_ones_kept(tmp_path):
    """The marker is written to a draft named after its host and process, then renamed: a run killed in between
    leaves the draft (never a half marker), which the next run removes once that process is gone."""
    import subprocess
    import sys

    from NerveSegLogic.datasets import atomic_dir

    out = tmp_path / "cohort"
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                          text=True, check=True)
    dead_pid = int(dead.stdout)
    tag = atomic_dir._host_tag()
    left = tmp_path / f".cohort.marker-{tag}-{dead_pid}.tmp"
    left.write_text('{"program": "nerv')  # killed mid-write
    mine = atomic_dir._marker_draft(out)
    mine.write_text("")
    other_host = tmp_path / f".cohort.marker-00000000-{dead_pid}.tmp"
    other_host.write_text("")
    done = atomic_dir.clean_leftovers(out)
    assert not left.exists() and mine.exists() and other_host.exists()
    assert done == [f"removed {left.name}"]
    folder = atomic_dir.staging_path(out)
    marker = atomic_dir.write_marker(folder, out, "partial")
    assert json.loads(marker.read_text())["pid"] == os.getpid() and not mine.exists()  # the draft was renamed
