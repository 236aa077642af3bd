"""Every semantic model: forward shape, ONNX export, and ONNX Runtime agreeing with torch (< 1e-4)."""

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from NerveSegLogic.models import registry

torch.set_num_threads(2)

SEMANTIC = [name for name in registry.names() if registry.card(name).task == "semantic"]
INSTANCE = [name for name in registry.names() if registry.card(name).task == "instance"]


@pytest.fixture(scope="module", params=SEMANTIC)
def model_and_card(request):
    torch.manual_seed(0)
    card = registry.card(request.param)
    return registry.build(request.param).eval(), card


def test_forward_gives_logits_per_class_at_input_size(model_and_card):
    model, card = model_and_card
    x = torch.rand(2, card.input.channels, card.input.height, card.input.width)
    with torch.no_grad():
        y = model(x)
    assert y.shape == (2, card.num_classes, card.input.height, card.input.width)
    assert y.dtype == torch.float32 and torch.isfinite(y).all()


def test_onnx_export_matches_torch(model_and_card, tmp_path):
    model, card = model_and_card
    path = registry.export_onnx(model, tmp_path / f"{card.name}.onnx", card=card)
    graph = onnx.load(str(path))
    assert [i.name for i in graph.graph.input] == ["image"]
    assert [o.name for o in graph.graph.output] == ["probabilities"]
    assert graph.graph.input[0].type.tensor_type.shape.dim[0].dim_param == "batch"
    assert {p.key for p in graph.metadata_props} >= {"nerveseg.name", "nerveseg.card"}
    assert not model.training

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    generator = torch.Generator().manual_seed(1)
    x = torch.rand(2, card.input.channels, card.input.height, card.input.width, generator=generator)
    (probabilities,) = session.run(["probabilities"], {"image": x.numpy()})  # batch 2 through the dynamic axis
    with torch.no_grad():
        expected = torch.softmax(model(x), dim=1).numpy()
    assert probabilities.shape == expected.shape
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, atol=1e-5)
    assert np.abs(probabilities - expected).max() < 1e-4


def test_export_restores_training_mode(tmp_path):
    model = registry.build("smistad-unet", filters=[4, 8])
    model.train()
    registry.export_onnx(model, tmp_path / "m.onnx", card=registry.card("smistad-unet"))
    assert model.training


def test_export_by_name_without_weights_is_refused_unless_asked(tmp_path, resources_without_weights):
    from NerveSegLogic.models.weights import WeightsError

    with pytest.raises(WeightsError, match="ships no weights"):
        registry.export_onnx("smistad-unet", tmp_path / "m.onnx")
    assert not (tmp_path / "m.onnx").exists()
    assert registry.export_onnx("smistad-unet", tmp_path / "m.onnx", allow_random_weights=True).is_file()


@pytest.mark.parametrize("name", INSTANCE)
def test_instance_models_are_not_exported(name, tmp_path):
    with pytest.raises(ValueError, match="instance models are not exported"):
        registry.export_onnx(name, tmp_path / "m.onnx", allow_random_weights=True)
