"""Weights: safetensors only, sha256-checked, exact key/shape match, nothing unpickled."""

import pickle

import pytest
import torch

from NerveSegLogic.models import registry
from NerveSegLogic.models.card import ModelCard
from NerveSegLogic.models.weights import WeightsError, read_weights, sha256_file

torch.set_num_threads(1)


def tiny_unet():
    # Same architecture as the card, fewer filters: a 3-level model keeps the files small.
    return registry.build("smistad-unet", filters=[4, 8, 8])


def card_with_weights(tmp_path, file_name, sha):
    data = registry.card("smistad-unet").to_json()
    data["build"] = {"filters": [4, 8, 8]}
    data["weights"] = {"file": file_name, "sha256": sha, "dtype": "float32"}
    return ModelCard.from_dict(data, tmp_path / "smistad-unet.json")


@pytest.mark.parametrize("dtype", ["float32", "float16"])
def test_save_and_load_round_trip(tmp_path, dtype):
    torch.manual_seed(0)
    model = tiny_unet()
    sha = registry.save_weights(model, tmp_path / "w.safetensors", dtype=dtype)
    assert sha == sha256_file(tmp_path / "w.safetensors")
    loaded = registry.load_from_card(card_with_weights(tmp_path, "w.safetensors", sha))
    assert not loaded.training
    for key, value in model.state_dict().items():
        got = loaded.state_dict()[key]
        assert got.dtype == torch.float32
        tolerance = 0 if dtype == "float32" else 1e-3 * max(1.0, float(value.abs().max()))
        assert torch.allclose(got, value, atol=tolerance, rtol=0), key


def test_metadata_names_the_architecture(tmp_path):
    from safetensors import safe_open

    registry.save_weights(tiny_unet(), tmp_path / "w.safetensors")
    with safe_open(str(tmp_path / "w.safetensors"), framework="pt") as handle:
        assert handle.metadata()["architecture"] == "smistad_unet"


def test_wrapper_prefixes_are_stripped(tmp_path):
    model = tiny_unet()
    wrapped = {f"module._orig_mod.{k}": v for k, v in model.state_dict().items()}
    sha = registry.save_weights(wrapped, tmp_path / "w.safetensors")
    registry.load_from_card(card_with_weights(tmp_path, "w.safetensors", sha))


def test_missing_file_is_named(tmp_path):
    card = card_with_weights(tmp_path, "absent.safetensors", "0" * 64)
    with pytest.raises(WeightsError, match="absent.safetensors.*does not exist"):
        registry.load_from_card(card)


def test_wrong_checksum_is_refused_before_parsing(tmp_path):
    sha = registry.save_weights(tiny_unet(), tmp_path / "w.safetensors")
    wrong = ("f" if sha[0] != "f" else "e") + sha[1:]
    with pytest.raises(WeightsError, match=r"w\.safetensors.*sha256"):
        registry.load_from_card(card_with_weights(tmp_path, "w.safetensors", wrong))


def test_a_card_without_weights_says_so(tmp_path):
    data = registry.card("smistad-unet").to_json()
    data["weights"] = None
    with pytest.raises(WeightsError, match="ships no weights"):
        registry.load_from_card(ModelCard.from_dict(data, tmp_path / "smistad-unet.json"))


def test_the_cards_checksum_guards_only_the_cards_own_file(tmp_path):
    """--weights FILE (a run's output) is not the card's file: checked against a given sha256, else loaded as
    safetensors without the card's checksum; the card's own file must match the card."""
    sha = registry.save_weights(tiny_unet(), tmp_path / "w.safetensors")
    other = tmp_path / "run" / "w.safetensors"
    registry.save_weights(tiny_unet(), other)
    card = card_with_weights(tmp_path, "w.safetensors", sha)
    registry.load_from_card(card, weights_path=other)  # another file: the card's checksum does not apply
    with pytest.raises(WeightsError, match="sha256"):
        registry.load_from_card(card, weights_path=other, sha256=sha)  # a checksum given for it must match
    (tmp_path / "w.safetensors").write_bytes(other.read_bytes())
    with pytest.raises(WeightsError, match="sha256"):
        registry.load_from_card(card, weights_path=tmp_path / "w.safetensors")  # the card's file, changed


def test_missing_and_unexpected_keys_are_listed(tmp_path):
    state = tiny_unet().state_dict()
    removed = sorted(state)[0]
    state.pop(removed)
    state["extra.weight"] = torch.zeros(2)
    sha = registry.save_weights(state, tmp_path / "w.safetensors")
    with pytest.raises(WeightsError) as error:
        registry.load_from_card(card_with_weights(tmp_path, "w.safetensors", sha))
    message = str(error.value)
    assert "w.safetensors" in message and removed in message and "extra.weight" in message


def test_shape_mismatch_is_listed(tmp_path):
    other = registry.build("smistad-unet", filters=[4, 8, 16])
    sha = registry.save_weights(other, tmp_path / "w.safetensors")
    with pytest.raises(WeightsError, match=r"w\.safetensors.*shape mismatches"):
        registry.load_from_card(card_with_weights(tmp_path, "w.safetensors", sha))


class _Bomb:
    """Unpickling this would create a marker file: proof that pickle ran."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_a_pickle_renamed_safetensors_is_refused_without_unpickling(tmp_path):
    marker = tmp_path / "unpickled.txt"
    path = tmp_path / "evil.safetensors"
    path.write_bytes(pickle.dumps({"head.weight": _Bomb(str(marker))}))
    sha = sha256_file(path)  # the checksum matches: only the format check stands between us and pickle
    with pytest.raises(WeightsError, match="not a valid safetensors"):
        read_weights(path, sha)
    with pytest.raises(WeightsError, match="evil.safetensors"):
        registry.load_from_card(card_with_weights(tmp_path, "evil.safetensors", sha))
    assert not marker.exists()
    # The same bytes really are a pickle that would have run code.
    pickle.loads(path.read_bytes())
    assert marker.exists()


def test_a_torch_save_file_is_refused(tmp_path):
    path = tmp_path / "checkpoint.safetensors"
    torch.save(tiny_unet().state_dict(), path)
    with pytest.raises(WeightsError, match="not a valid safetensors"):
        read_weights(path, sha256_file(path))
