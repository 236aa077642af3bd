"""The user models folder: weights fetched for shipped cards, and the site models a user trained and added.

The installed package (``Resources/Models``) is never written to: it may be read-only (a Slicer extension, a
system-wide pip install), and shipped models must stay what was released. Everything a user adds lives here:

    <user models folder>/
        weights/<stem>-<sha256[:12]>.safetensors   weights of a shipped card, fetched or installed from a file
        sites/<name>/                               a site model (``nerveseg models add``): card and weights

The folder is ``NERVESEG_MODELS_DIR`` when that is set, else the platform's per-user data folder:
``%LOCALAPPDATA%\\NerveSeg\\models`` on Windows, ``~/Library/Application Support/NerveSeg/models`` on macOS,
``$XDG_DATA_HOME/NerveSeg/models`` (default ``~/.local/share/NerveSeg/models``) elsewhere.

Fetched weights carry the start of their sha256 in the file name, so a card that moves to new weights never picks
up the old file, and two versions can sit side by side.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

#: A site model's folder holds its card under this name, beside its weights.
SITE_CARD_FILE = "card.json"

#: Overrides the user models folder (tests, shared installations, a hospital's managed folder).
ENVIRONMENT_VARIABLE = "NERVESEG_MODELS_DIR"


def user_models_dir() -> Path:
    """The user models folder (not created here)."""
    configured = os.environ.get(ENVIRONMENT_VARIABLE)
    if configured:
        return Path(configured).expanduser()
    home = Path.home()
    if os.name == "nt":
        base = Path(os.environ.get("LOCALAPPDATA") or home / "AppData" / "Local")
    elif sys.platform == "darwin":
        base = home / "Library" / "Application Support"
    else:
        base = Path(os.environ.get("XDG_DATA_HOME") or home / ".local" / "share")
    return base / "NerveSeg" / "models"


def fetched_weights_dir() -> Path:
    """Where ``nerveseg models fetch`` puts the weights of shipped cards."""
    return user_models_dir() / "weights"


def sites_dir() -> Path:
    """Where ``nerveseg models add`` registers site models, one folder each."""
    return user_models_dir() / "sites"


def fetched_weights_name(file_name: str, sha256: str) -> str:
    """The file name fetched weights get: the card's file name with the start of the sha256 before the suffix."""
    stem, dot, suffix = file_name.rpartition(".")
    return f"{stem}-{sha256[:12]}.{suffix}" if dot else f"{file_name}-{sha256[:12]}"


def fetched_weights_path(file_name: str, sha256: str) -> Path:
    return fetched_weights_dir() / fetched_weights_name(file_name, sha256)


def site_card_files() -> dict:
    """{name: card file} of the site models in the user models folder (folders holding a card.json), sorted."""
    folder = sites_dir()
    if not folder.is_dir():
        return {}
    return {entry.name: entry / SITE_CARD_FILE for entry in sorted(folder.iterdir())
            if entry.is_dir() and not entry.name.startswith(".") and (entry / SITE_CARD_FILE).is_file()}
