"""Shared test fixtures: paths of the repository and the bundled sample."""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile
from pathlib import Path

import pytest

from NerveSegLogic.testing.postgres import TempPostgres, postgres_bindir

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
