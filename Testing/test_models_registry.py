"""The model registry: names, cards, validation, the default model, building by name."""

import copy
import json
import subprocess
import sys

import pytest

from NerveSegLogic.models import registry
from NerveSegLogic.models.card import ModelCard, load_card, write_card
from NerveSegLogic.resources import models_dir


def smistad_dict():
    return json.loads((models_dir() / "smistad-unet.json").read_text())


def test_importing_the_registry_does_not_import_torch():
    code = ("import sys; from NerveSegLogic.models import registry; registry.names(); registry.card('smistad-unet');"
            "print('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"


def test_names_are_sorted_and_include_the_seed_models():
    found = registry.names()
    assert found == sorted(found)
    assert "smistad-unet" in found


def test_unknown_name_lists_the_valid_names():
    with pytest.raises(KeyError) as error:
        registry.card("no-such-model")
    message = str(error.value)
    for name in registry.names():
        assert name in message


@pytest.mark.parametrize("name", registry.names())
def test_every_shipped_card_validates_and_knows_its_architecture(name):
    card = registry.card(name)
    assert card.name == name
    assert card.architecture in registry.ARCHITECTURES
    assert card.num_classes == len(card.classes) + 1
    assert [c.label for c in card.classes] == list(range(1, card.num_classes))
    assert card.intended_use
    assert (card.weights is None) == (card.weights_path is None)


def test_exactly_one_card_is_the_default():
    assert sum(card.default for card in registry.cards()) == 1
    assert registry.card(registry.default_name()).default


def test_two_defaults_are_refused(tmp_path):
    for name in ("smistad-unet", "other-unet"):
        data = smistad_dict()
        data["name"] = name
        write_card(data, tmp_path / f"{name}.json")
    with pytest.raises(ValueError, match="exactly one"):
        registry.default_name(tmp_path)


@pytest.mark.parametrize("field, value, expected", [
    ("task", "detection", "'task'"),
    ("output", "instances", "'output'"),
    ("classes", [{"key": "nerve", "label": 2}], "'classes'"),
    ("classes", [{"key": "spleen-ish", "label": 1}], "'classes[0]'"),
    ("input", {"size": [256, 256], "resize": "squash"}, "'input'"),
    ("build", {"num_classes": 3}, "'build.num_classes'"),
    ("weights", {"file": "../x.safetensors", "sha256": "0" * 64}, "'weights.file'"),
    ("weights", {"file": "x.safetensors", "sha256": "abc"}, "'weights.sha256'"),
    ("training", {"recipe": {"loss": "hinge"}}, "'training.recipe.loss'"),
    ("training", {"recipe": {"loss": "dice", "optimizer": {"name": "adam", "lr": 1e-4}, "batch_size": 8,
                             "epochs": 70, "schedule": {"name": "poly", "per": "batch"}}},
     "'training.recipe.schedule.per'"),
    ("default", "yes", "'default'"),
])
def test_a_bad_card_field_is_named_with_the_file(tmp_path, field, value, expected):
    data = smistad_dict()
    data[field] = value
    path = tmp_path / "smistad-unet.json"
    path.write_text(json.dumps(data))
    with pytest.raises(ValueError) as error:
        load_card(path)
    assert str(path) in str(error.value) and expected in str(error.value)


def test_a_card_whose_name_differs_from_its_file_is_refused(tmp_path):
    path = tmp_path / "renamed.json"
    path.write_text(json.dumps(smistad_dict()))
    with pytest.raises(ValueError, match="file name stem"):
        load_card(path)


def test_an_unknown_architecture_is_refused_not_imported(tmp_path):
    data = smistad_dict()
    data["architecture"] = "os.system"
    write_card(data, tmp_path / "smistad-unet.json")
    with pytest.raises(ValueError, match="not a known architecture"):
        registry.card("smistad-unet", tmp_path)


def test_cards_are_fresh_copies_so_callers_cannot_change_each_other():
    first = registry.card("smistad-unet")
    first.build["filters"] = [1, 2]
    first.raw["build"]["filters"] = [1, 2]
    assert registry.card("smistad-unet").build["filters"] == [8, 16, 32, 64, 128, 256]


def test_build_overrides_do_not_leak_into_the_card():
    model = registry.build("smistad-unet", num_classes=5)
    assert model.head.out_channels == 5
    assert registry.card("smistad-unet").num_classes == 3
    assert "num_classes" not in registry.card("smistad-unet").build


def test_with_updates_and_write_card_round_trip(tmp_path):
    card = registry.card("smistad-unet")
    updated = card.with_updates(metrics={"dice": {"nerve": 0.5}}, speed={"cpu_ms_per_frame": 12.5})
    assert "dice" not in card.metrics and updated.metrics["dice"]["nerve"] == 0.5  # the original is unchanged
    written = write_card(updated.to_json(), tmp_path / "smistad-unet.json")
    assert load_card(written.path) == written
    assert load_card(written.path).speed == {"cpu_ms_per_frame": 12.5}


def test_write_card_leaves_the_saved_card_when_the_new_one_is_invalid(tmp_path):
    path = tmp_path / "smistad-unet.json"
    write_card(smistad_dict(), path)
    before = path.read_bytes()
    bad = copy.deepcopy(smistad_dict())
    bad["task"] = "nonsense"
    with pytest.raises(ValueError):
        write_card(bad, path)
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["smistad-unet.json"]


def test_model_card_is_frozen():
    card = registry.card("smistad-unet")
    with pytest.raises(Exception):
        card.name = "other"  # type: ignore[misc]
    assert isinstance(card, ModelCard)


def test_a_card_that_is_not_an_object_or_not_json_is_named(tmp_path):
    path = tmp_path / "smistad-unet.json"
    path.write_text("[1, 2]")
    with pytest.raises(ValueError, match="must be a JSON object"):
        load_card(path)
    path.write_text("{not json")
    with pytest.raises(ValueError, match=r"smistad-unet\.json: not valid JSON"):
        load_card(path)


def test_every_cards_speed_was_measured_at_the_input_size_it_runs_at():
    """The panel shows a card's speed beside its input size: a speed timed at another size (weights retrained at a
    larger input) would tell the clinician a frame takes a fraction of what it does."""
    stale = [f"{card.name}: speed at {card.speed['input']}, input {[card.input.height, card.input.width]}"
             for card in registry.cards(tasks=None)
             if card.speed and card.speed.get("input") is not None
             and list(card.speed["input"]) != [card.input.height, card.input.width]]
    assert not stale, "re-time them with benchmarks/speed/bench_models.py --write-cards: " + "; ".join(stale)
