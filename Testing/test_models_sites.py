"""Site models (``nerveseg models add / list / remove``): a trained run registered in the user models folder is
picked by name everywhere, shipped models are never touched, and a damaged site model is named while the others
still load."""

from __future__ import annotations

import json
import shutil

import pytest

from NerveSegLogic import cli
from NerveSegLogic.models import registry, sites
from NerveSegLogic.models.weights import WeightsError


@pytest.fixture()
def run_dir(tmp_path, unet_random):
    """A training run's output folder (card.json + weights), with the init its fine-tune started from."""
    run = tmp_path / "Site Run 1"
    shutil.copytree(registry.card(unet_random).path.parent, run)
    data = json.loads((run / "card.json").read_text())
    data["name"] = "unet"
    data.pop("site", None)
    data["training"]["init"] = {"model": "unet", "sha256": "ab" * 32, "source": "unet"}
    (run / "card.json").write_text(json.dumps(data))
    return run


def test_add_list_load_remove(run_dir, capsys):
    assert cli.main(["models", "add", str(run_dir)]) == 0
    assert "added site model site-run-1" in capsys.readouterr().out  # the folder's name, made a valid name
    card = registry.card("site-run-1")
    assert card.raw["site"]["base_model"] == "unet" and card.raw["site"]["trained_as"] == "unet"
    assert "site-run-1" in registry.names()  # so the panel, serve, demo, predict ... list it
    model = registry.load("site-run-1")  # the weights' sha256 checked
    assert sum(p.numel() for p in model.parameters()) > 0
    assert cli.main(["models", "list", "--json"]) == 0
    row = next(r for r in json.loads(capsys.readouterr().out) if r["name"] == "site-run-1")
    assert row["site"] and row["status"] == "ok" and row["base_model"] == "unet"
    assert cli.main(["models", "list"]) == 0
    assert "site-run-1" in capsys.readouterr().out
    assert cli.main(["models", "remove", "site-run-1"]) == 0
    assert "site-run-1" not in registry.names()
    assert (run_dir / "card.json").is_file()  # the run itself is left alone


def test_refusals(run_dir, capsys):
    shipped = registry.card("effnet2-unet").path.read_bytes()
    assert cli.main(["models", "add", str(run_dir), "--name", "effnet2-unet"]) == 1
    assert "is a shipped model's" in capsys.readouterr().err
    assert registry.card("effnet2-unet").path.read_bytes() == shipped
    assert cli.main(["models", "add", str(run_dir), "--name", "Bad Name"]) == 1
    assert "expected lower-case letters" in capsys.readouterr().err
    assert cli.main(["models", "add", str(run_dir), "--name", "site-a"]) == 0
    assert cli.main(["models", "add", str(run_dir), "--name", "site-a"]) == 1
    assert "remove it first or pass --replace" in capsys.readouterr().err
    assert cli.main(["models", "add", str(run_dir), "--name", "site-a", "--replace"]) == 0
    assert cli.main(["models", "remove", "effnet2-unet"]) == 1
    assert "shipped models cannot be removed" in capsys.readouterr().err
    (run_dir / "unet.safetensors").write_bytes(b"not the trained weights")
    assert cli.main(["models", "add", str(run_dir), "--name", "site-b"]) == 1
    assert "differs from card.json's" in capsys.readouterr().err
    assert cli.main(["models", "add", str(run_dir.parent / "nowhere")]) == 1
    assert "is not a folder" in capsys.readouterr().err
    sites.remove("site-a")


def test_a_damaged_site_model_is_named_and_the_others_still_load(run_dir, capsys):
    for name in ("site-ok", "site-changed", "site-unreadable"):
        sites.add(run_dir, name)
    folder = registry.card("site-changed").path.parent
    (folder / "unet.safetensors").write_bytes((folder / "unet.safetensors").read_bytes()[:-8] + b"\0" * 8)
    (registry.card("site-unreadable").path).write_text("{ not json")
    assert cli.main(["models", "list"]) == 0
    printed = capsys.readouterr()
    assert "site model site-changed: weights changed" in printed.err
    assert "site model site-unreadable not listed: card unreadable" in printed.err
    assert "BROKEN" in printed.out
    names = [card.name for card in registry.cards()]  # the unreadable one is left out, nothing raises
    assert "site-ok" in names and "site-unreadable" not in names and "effnet2-unet" in names
    registry.load("site-ok")
    with pytest.raises(WeightsError, match="sha256"):
        registry.load("site-changed")
    for name in ("site-ok", "site-changed", "site-unreadable"):
        sites.remove(name)
