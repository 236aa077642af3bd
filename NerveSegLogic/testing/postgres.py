"""A throwaway PostgreSQL cluster for the annotation store's PostgreSQL engine: the tests' fixture server
(Testing/conftest.py) and benchmarks/reliability/store_concurrency.py's, which restarts it under load.

Runs initdb and pg_ctl (:func:`postgres_bindir`) in a temporary folder, on a free TCP port of 127.0.0.1, as an
unprivileged user when this process is root; nothing here is used by the store itself.
"""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile
from pathlib import Path
from typing import Optional


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
