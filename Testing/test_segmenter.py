"""The Segmenter: one frame in, a labelmap in the frame's own size out, the same on torch and ONNX Runtime."""

import numpy as np
import pytest

from NerveSegLogic.frame import Frame
from NerveSegLogic.inference.backends import OnnxBackend
from NerveSegLogic.inference.segmenter import Segmenter
from NerveSegLogic.models import registry


@pytest.fixture(scope="module")
def random_smistad():
    import torch

    torch.manual_seed(0)
    card = registry.card("smistad-unet")
    return card, registry.build("smistad-unet")


def test_segment_returns_a_labelmap_in_the_frames_size_with_stage_stamps(random_smistad):
    card, module = random_smistad
    segmenter = Segmenter.from_module(card, module)
    image = (np.random.default_rng(0).random((420, 580)) * 255).astype(np.uint8)
    frame = Frame(image=image, frame_id=7)
    frame.stamp("received")
    result = segmenter.segment(image, frame)
    assert result.labelmap.shape == (420, 580) and result.labelmap.dtype == np.uint8
    assert set(np.unique(result.labelmap)) <= {0, 1, 2}
    assert result.probabilities.shape == (3, card.input.height, card.input.width)  # model-input size
    assert np.allclose(result.probabilities.sum(axis=0), 1.0, atol=1e-5)
    assert result.frame is frame and result.frame_id == 7
    assert {"preprocessed", "inferred", "postprocessed"} <= set(frame.timestamps)
    assert [c.key for c in result.classes] == ["nerve", "blood_vessel"]


def test_semantic_labelmap_is_the_argmax_of_the_probabilities_where_regions_are_large(random_smistad):
    card, module = random_smistad
    segmenter = Segmenter.from_module(card, module, min_component_area=0)
    image = (np.random.default_rng(1).random((card.input.height, card.input.width)) * 255).astype(np.uint8)
    result = segmenter.segment(image)
    assert np.array_equal(result.labelmap, result.probabilities.argmax(axis=0))


def test_torch_and_onnx_runtime_give_the_same_segmentation(random_smistad, tmp_path):
    card, module = random_smistad
    onnx_path = registry.export_onnx(module, tmp_path / "smistad.onnx", card=card)
    by_torch = Segmenter.from_module(card, module)
    by_onnx = Segmenter(card, OnnxBackend(onnx_path, threads=1))
    image = (np.random.default_rng(2).random((300, 400)) * 255).astype(np.uint8)
    a, b = by_torch.segment(image), by_onnx.segment(image)
    assert np.abs(a.probabilities - b.probabilities).max() < 1e-4
    assert (a.labelmap == b.labelmap).mean() > 0.999


def test_unknown_model_name_lists_the_valid_ones():
    with pytest.raises(KeyError, match="smistad-unet"):
        Segmenter.from_name("no-such-model")


def test_auto_backend_is_onnx_runtime_for_semantic_models_on_the_cpu_only():
    from NerveSegLogic.inference.backends import choose_backend

    assert choose_backend("semantic", "cpu") == "onnx"
    assert choose_backend("instance", "cpu") == "torch"  # instance models are not exported to ONNX
    assert choose_backend("semantic", "cuda") == "torch"
    assert choose_backend("semantic", "cuda:1") == "torch"
