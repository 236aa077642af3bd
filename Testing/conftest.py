"""Shared test fixtures: paths of the repository and the bundled sample."""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile
from pathlib import Path
from typing import Optional

import pytest

REPO = Path(__file__).resolve().parent.parent

# Tests share two cores with each other's threads; one torch thread keeps timings and CPU use predictable.
os.environ.setdefault("OMP_NUM_THREADS", "1")

# Tests never read or write the user's own models folder (fetched weights, site models): they get an empty one, so
# a run sees what the repository ships, as CI does, whatever this machine has fetched. A release check that must see
# fetched models names the folder in NERVESEG_TEST_MODELS_DIR (benchmarks/release/release_weights.py check).
if os.environ.get("NERVESEG_TEST_MODELS_DIR"):
    os.environ["NERVESEG_MODELS_DIR"] = os.environ["NERVESEG_TEST_MODELS_DIR"]
else:
    _EMPTY_MODELS_DIR = tempfile.mkdtemp(prefix="nerveseg-test-models-")
    os.environ["NERVESEG_MODELS_DIR"] = _EMPTY_MODELS_DIR
    atexit.register(shutil.rmtree, _EMPTY_MODELS_DIR, ignore_errors=True)


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return REPO


@pytest.fixture(scope="session")
def sample_dir() -> Path:
    return REPO / "Resources" / "Sample"


@pytest.fixture
def resources_without_weights(tmp_path, monkeypatch) -> Path:
    """A Resources folder (NERVESEG_RESOURCES) whose model cards ship no weights, for the refusals that only a
    weightless card triggers; the real cards are copied with ``"weights": null``, the sample is linked."""
    import json

    root = tmp_path / "Resources"
    (root / "Models").mkdir(parents=True)
    for card in (REPO / "Resources" / "Models").glob("*.json"):
        data = json.loads(card.read_text(encoding="utf-8"))
        data["weights"] = None
        (root / "Models" / card.name).write_text(json.dumps(data), encoding="utf-8")
    (root / "Sample").symlink_to(REPO / "Resources" / "Sample")
    monkeypatch.setenv("NERVESEG_RESOURCES", str(root))
    return root


@pytest.fixture(scope="session")
def unet_random() -> str:
    """The name of a site model with ``unet``'s card and random weights, registered in the tests' own models folder.

    Only the default model's weights ship in the repository (the others are release downloads), and a test of the
    live path's plumbing needs a quick model with weights, not a trained one: the same card (128x128 input, nerve and
    vessel) with seeded random weights, added as a site model the way a user adds one (``models add``), so workers
    started by the tests find it by name too."""
    import json

    import torch

    from NerveSegLogic.models import registry, sites

    name = "unet-random"
    if name in registry.names():
        return name
    run = Path(tempfile.mkdtemp(prefix="nerveseg-test-run-"))
    try:
        torch.manual_seed(0)
        card = registry.card("unet")
        sha = registry.save_weights(registry.build_from_card(card), run / "unet.safetensors", dtype="float16")
        data = card.to_json()
        data["weights"] = {"file": "unet.safetensors", "sha256": sha, "dtype": "float16"}
        for measured in ("metrics", "int8", "speed"):  # they describe the trained weights, not these
            data.pop(measured, None)
        data["summary"] = "unet's architecture with seeded random weights (tests only)"
        (run / "card.json").write_text(json.dumps(data), encoding="utf-8")
        sites.add(run, name)
    finally:
        shutil.rmtree(run, ignore_errors=True)
    return name


# ---- PostgreSQL: a throwaway server for the annotation store's server engine (issue 28) --------------------------
#
# `make test` installs Debian's postgresql (Makefile: test-debs) and psycopg (the `team` extra). The server refuses to
# run as root, and the tests run as root: the cluster is made and run by an unprivileged user (`postgres`, which
# Debian's package creates, else `nobody`) through runuser, in a temporary folder, on a free TCP port of 127.0.0.1,
# and stopped at the end of the session. The tests that need it skip only where PostgreSQL cannot be installed: its
# binaries are missing AND there is no apt-get, outside CI. Anywhere else a missing server or psycopg fails them.


def postgres_bindir() -> Optional[Path]:
    """The folder of initdb and pg_ctl: $NERVESEG_PG_BINDIR, else Debian's newest /usr/lib/postgresql/N/bin, else
    the folder of an initdb on PATH; None when there is none."""
    wanted = os.environ.get("NERVESEG_PG_BINDIR")
    if wanted:
        return Path(wanted) if (Path(wanted) / "initdb").exists() else None
    debian = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"), key=lambda p: int(p.parent.parent.name)
                    if p.parent.parent.name.isdigit() else 0)
    if debian:
        return debian[-1].parent
    found = shutil.which("initdb")
    return Path(found).parent if found else None


def in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no")


def postgres_skip_reason() -> str:
    """Why the PostgreSQL tests may skip here, or "" when they must run (and fail if they cannot). The one accepted
    reason: the server's binaries are missing and this machine has no apt-get to install them, outside CI."""
    if postgres_bindir() is not None or in_ci():
        return ""
    if shutil.which("apt-get"):
        return ""  # installable: `make test-debs` installs it, so a missing server is a failure, not a skip
    return ("PostgreSQL's server (initdb, pg_ctl) is not installed and this machine has no apt-get to install it; "
            "install PostgreSQL 13+ or set NERVESEG_PG_BINDIR to run the annotation store's PostgreSQL tests")


class TempPostgres:
    """A throwaway PostgreSQL cluster: initdb in a temporary folder, started on a free port of 127.0.0.1, run by an
    unprivileged user when this process is root. ``url(database)``; ``new_database()``; ``restart(mode)``;
    ``stop()`` (also at exit). ``durable=False`` turns fsync off (tests: nothing here survives a power cut anyway;
    commits still reach the OS before they return, so a server crash or ``restart("immediate")`` loses none)."""

    def __init__(self, bindir: Path, durable: bool = False, user: str = "nerveseg"):
        import socket
        import subprocess

        self.bindir, self.user, self._subprocess = bindir, user, subprocess
        self.folder = Path(tempfile.mkdtemp(prefix="nerveseg-pg-"))
        self.data = self.folder / "data"
        self.log = self.folder / "server.log"
        self.run_as = None
        if hasattr(os, "geteuid") and os.geteuid() == 0:
            import pwd

            for name in ("postgres", "nobody"):
                try:
                    entry = pwd.getpwnam(name)
                except KeyError:
                    continue
                self.run_as = name
                os.chown(self.folder, entry.pw_uid, entry.pw_gid)
                break
            if self.run_as is None:
                raise RuntimeError("running as root and no unprivileged user (postgres, nobody) to run PostgreSQL")
        self._run("initdb", "-D", str(self.data), "-A", "trust", "-U", user, "-E", "UTF8", "--no-locale",
                  "--no-sync")
        settings = ["listen_addresses=127.0.0.1", f"unix_socket_directories={self.folder}", "max_connections=60",
                    "shared_buffers=32MB"]
        if not durable:  # a commit still reaches the OS before it returns (synchronous_commit stays on), so a
            settings += ["fsync=off"]  # crash of the server keeps it; only an OS crash would not
        with socket.socket() as probe:  # a free port now; initdb took the time, start right away
            probe.bind(("127.0.0.1", 0))
            self.port = probe.getsockname()[1]
        settings.append(f"port={self.port}")
        with open(self.data / "postgresql.auto.conf", "a") as conf:
            conf.write("".join(f"{s.split('=')[0]} = '{s.split('=', 1)[1]}'\n" for s in settings))
        atexit.register(self.stop)
        self.start()

    def _run(self, tool: str, *args: str, check: bool = True):
        command = [str(self.bindir / tool), *args]
        if self.run_as:
            command = ["runuser", "-u", self.run_as, "--", *command]
        return self._subprocess.run(command, cwd=str(self.folder), capture_output=True, text=True, check=check,
                                    timeout=120)

    def start(self) -> None:
        done = self._run("pg_ctl", "-D", str(self.data), "-l", str(self.log), "-w", "-t", "60", "start", check=False)
        if done.returncode != 0:
            tail = self.log.read_text(errors="replace")[-2000:] if self.log.exists() else ""
            raise RuntimeError(f"PostgreSQL did not start: {done.stdout}{done.stderr}{tail}")

    def restart(self, mode: str = "fast") -> None:
        """Stop (``fast``: clients cut; ``immediate``: as a crash, recovery on start) and start again."""
        self._run("pg_ctl", "-D", str(self.data), "-m", mode, "-w", "stop", check=False)
        self.start()

    def stop(self) -> None:
        if self.data.exists():
            self._run("pg_ctl", "-D", str(self.data), "-m", "immediate", "-w", "stop", check=False)
        shutil.rmtree(self.folder, ignore_errors=True)

    def url(self, database: str) -> str:
        return f"postgresql://{self.user}@127.0.0.1:{self.port}/{database}"

    def new_database(self, prefix: str = "store") -> str:
        """A new empty database; its URL."""
        import uuid

        import psycopg

        name = f"{prefix}_{uuid.uuid4().hex[:12]}"
        with psycopg.connect(self.url("postgres"), autocommit=True) as admin:
            admin.execute(f"CREATE DATABASE {name}")
        return self.url(name)

    def new_schema(self, prefix: str = "store") -> str:
        """A new empty schema in the database ``nerveseg``, as a store URL whose search_path names it (a store lives
        in its connection's current schema; a schema costs milliseconds where CREATE DATABASE costs a second)."""
        import uuid

        import psycopg

        name = f"{prefix}_{uuid.uuid4().hex[:12]}"
        with psycopg.connect(self.url(self.user), autocommit=True) as admin:
            admin.execute(f"CREATE SCHEMA {name}")
        return f"{self.url(self.user)}?options=-c%20search_path%3D{name}"


@pytest.fixture(scope="session")
def postgres_cluster():
    """The session's throwaway PostgreSQL server (see :class:`TempPostgres`)."""
    reason = postgres_skip_reason()
    if reason:
        pytest.skip(reason)
    bindir = postgres_bindir()
    if bindir is None:
        pytest.fail("PostgreSQL's server is not installed: run `make test-debs` (apt-get install postgresql)")
    try:
        import psycopg  # noqa: F401
    except ImportError:
        pytest.fail("psycopg is not installed: pip install -e '.[team]' (make test's setup does)")
    cluster = TempPostgres(bindir)
    import psycopg

    with psycopg.connect(cluster.url("postgres"), autocommit=True) as admin:
        admin.execute(f"CREATE DATABASE {cluster.user}")
    yield cluster
    cluster.stop()


@pytest.fixture
def postgres_url(postgres_cluster) -> str:
    """A new, empty database on the session's server, as a store URL."""
    return postgres_cluster.new_database()


@pytest.fixture(params=["sqlite", "postgresql"])
def store_location(request, tmp_path) -> str:
    """Where a new annotation store goes, once per engine: an SQLite file, then a PostgreSQL database."""
    if request.param == "sqlite":
        return str(tmp_path / "project.nsdb")
    return request.getfixturevalue("postgres_cluster").new_schema()
