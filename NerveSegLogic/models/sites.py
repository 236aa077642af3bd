"""Site models: a model a site trained on its own corrected frames, registered so that it is picked by name.

``nerveseg models add RUN_DIR [--name NAME]`` copies a training run (its ``card.json`` and weights, as ``nerveseg
train`` writes them) into the user models folder (:mod:`.user_models`, ``sites/<name>/``); from then on the
registry lists it beside the shipped models, so the Slicer panel, ``serve``, ``demo``, ``predict``, ``evaluate``,
``calibrate`` and ``annotate prelabel`` accept the name. Shipped models are never modified, and a site model never
takes a shipped model's name.

The card records where the model came from (``site``: the run folder, when it was added and by whom, the base model
and its sha256 from the run's ``training.init``), and the weights' sha256 is checked when it is added and every time
it is loaded. :func:`status` says, per site model, whether its files are intact, so that ``models list`` can name a
site model whose files were changed or removed while the others still load.
"""

from __future__ import annotations

import getpass
import json
import os
import re
import shutil
import tempfile
from datetime import datetime, timezone
from pathlib import Path
from typing import Dict, List, Optional

from ..checksums import sha256_file
from .card import ModelCard, load_card
from .user_models import SITE_CARD_FILE, site_card_files, sites_dir
from .weights import WeightsError

_NAME = re.compile(r"^[a-z0-9][a-z0-9+\-]*$")


class SiteModelError(ValueError):
    """A run that cannot be added, or a site model that cannot be removed; the message says why."""


def _run_card(run_dir: Path) -> Path:
    card = run_dir / SITE_CARD_FILE
    if not run_dir.is_dir():
        raise SiteModelError(f"{run_dir} is not a folder (expected a training run: card.json and its weights)")
    if not card.is_file():
        raise SiteModelError(f"{run_dir} holds no card.json: is it a 'nerveseg train' output folder?")
    return card


def default_name(run_dir: Path) -> str:
    """A registry name from the run folder's name: lower case, other characters replaced by '-'."""
    name = re.sub(r"[^a-z0-9+\-]+", "-", run_dir.resolve().name.lower()).strip("-")
    return name or "site-model"


def add(run_dir: os.PathLike, name: Optional[str] = None, shipped_names: Optional[List[str]] = None,
        replace: bool = False) -> Path:
    """Register the run in ``run_dir`` as site model ``name``; return its folder.

    Refused (SiteModelError) when the run is not a training output, its weights are missing or differ from its
    card's sha256, the name is not valid or is a shipped model's (``shipped_names``), or a site model of that name
    exists (unless ``replace``). The folder is written under a temporary name and renamed, so a failed add leaves
    nothing behind and a replaced model is swapped whole.
    """
    run_dir = Path(run_dir)
    card_path = _run_card(run_dir)
    try:
        data = json.loads(card_path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        raise SiteModelError(f"{card_path}: cannot read the run's card ({error})") from None
    weights = data.get("weights") if isinstance(data, dict) else None
    if not isinstance(weights, dict) or not weights.get("file"):
        raise SiteModelError(f"{card_path}: field 'weights': the run lists no weights file (did training finish?)")
    source_weights = run_dir / weights["file"]
    if not source_weights.is_file():
        raise SiteModelError(f"{run_dir}: weights file {weights['file']} named by card.json is missing")
    actual = sha256_file(source_weights)
    if actual != weights.get("sha256"):
        raise SiteModelError(f"{source_weights}: sha256 {actual} differs from card.json's {weights.get('sha256')} "
                             f"(file changed after training?)")
    name = name or default_name(run_dir)
    if not _NAME.match(name):
        raise SiteModelError(f"model name {name!r}: expected lower-case letters, digits, '-' or '+'")
    if name in (shipped_names or []):
        raise SiteModelError(f"model name {name!r} is a shipped model's; choose another (--name)")
    target = sites_dir() / name
    if target.exists() and not replace:
        raise SiteModelError(f"a site model named {name!r} exists ({target}); remove it first or pass --replace")

    init = (data.get("training") or {}).get("init") or {}
    data["site"] = {"run": str(run_dir.resolve()), "added": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                    "added_by": _user(), "trained_as": data.get("name"),
                    "base_model": init.get("model") or init.get("name"), "base_sha256": init.get("sha256")}
    data["name"] = name
    data["default"] = False
    sites_dir().mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{name}.", dir=sites_dir()))
    try:
        shutil.copyfile(source_weights, staging / weights["file"])
        if sha256_file(staging / weights["file"]) != actual:
            raise SiteModelError(f"copying {source_weights} changed it (disk error?); nothing added")
        _write_staged_card(data, staging, name)
        if target.exists():
            trash = Path(tempfile.mkdtemp(prefix=f".{name}.removed.", dir=sites_dir()))
            os.replace(target, trash / name)
            os.replace(staging, target)
            shutil.rmtree(trash, ignore_errors=True)
        else:
            os.replace(staging, target)
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)
    return target


def _write_staged_card(data: Dict, staging: Path, name: str) -> Path:
    """Write the card into the staging folder after validating it under its final path (a site card's folder name
    must be the model name, which the staging folder's is not yet); ValueError names the bad field."""
    ModelCard.from_dict(data, sites_dir() / name / SITE_CARD_FILE)  # raises ValueError naming the field
    text = json.dumps(data, indent=2, ensure_ascii=False) + "\n"
    path = staging / SITE_CARD_FILE
    path.write_text(text, encoding="utf-8")
    return path


def _user() -> str:
    try:
        return getpass.getuser()
    except Exception:  # noqa: BLE001 - no user name on some systems; not worth failing an add
        return "unknown"


def remove(name: str) -> Path:
    """Remove site model ``name`` (its whole folder); SiteModelError when there is no such site model."""
    files = site_card_files()
    if name not in files:
        raise SiteModelError(f"no site model named {name!r} (site models: {', '.join(files) or 'none'}); shipped "
                             f"models cannot be removed")
    folder = files[name].parent
    trash = Path(tempfile.mkdtemp(prefix=f".{name}.removed.", dir=folder.parent))
    os.replace(folder, trash / name)
    shutil.rmtree(trash, ignore_errors=True)
    return folder


def status() -> Dict[str, str]:
    """{site model name: "ok" or what is wrong}: unreadable card, weights missing, or weights changed."""
    out = {}
    for name, path in site_card_files().items():
        try:
            card = load_card(path)
        except ValueError as error:
            out[name] = f"card unreadable: {error}"
            continue
        if not card.weights:
            out[name] = "card lists no weights"
            continue
        weights = path.parent / card.weights["file"]
        if not weights.is_file():
            out[name] = f"weights file {weights.name} missing"
            continue
        try:
            actual = sha256_file(weights)
        except OSError as error:
            out[name] = f"weights unreadable ({error})"
            continue
        out[name] = "ok" if actual == card.weights["sha256"] else \
            f"weights changed (sha256 {actual[:12]}..., card says {card.weights['sha256'][:12]}...)"
    return out


__all__ = ["SiteModelError", "WeightsError", "add", "remove", "status", "default_name"]
