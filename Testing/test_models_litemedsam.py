"""LiteMedSAM: the shipped weights' names and shapes, the model's shapes, prompt encoding, ONNX parity with torch,
and the real weights finding a vessel from a box."""

import numpy as np
import pytest
import torch

from NerveSegLogic.inference.promptable import (PromptableSegmenter, PromptError, check_prompt, export_onnx,
                                                refine_box)
from NerveSegLogic.models import registry
from NerveSegLogic.models.litemedsam import (LABEL_BOX_BOTTOM_RIGHT, LABEL_BOX_TOP_LEFT, LABEL_EXCLUDE, LABEL_INCLUDE,
                                             LABEL_PAD, LiteMedSAM, prompt_points, remap_checkpoint)


def test_shipped_weights_have_every_parameter_of_the_model_under_its_name():
    from safetensors import safe_open

    card = registry.card("litemedsam")
    assert card.task == "promptable" and card.output == "mask_logits"
    with torch.device("meta"):
        expected = {k: tuple(v.shape) for k, v in LiteMedSAM().state_dict().items()}
    with safe_open(str(card.weights_path), framework="pt") as handle:
        shipped = {k: tuple(handle.get_slice(k).get_shape()) for k in handle.keys()}
    assert shipped == expected
    assert len(shipped) == 435  # every tensor of lite_medsam.pth, BatchNorm counters included


def test_registry_loads_it_checked_but_lists_it_only_when_asked():
    assert "litemedsam" not in registry.names()  # the live panel and 'models list' show live models only
    assert "litemedsam" in registry.names(tasks=None)
    assert registry.names(tasks=("promptable",)) == ["litemedsam"]
    model = registry.load("litemedsam")  # sha256 of the card, strict keys and shapes
    assert isinstance(model, LiteMedSAM) and not model.training


def test_a_checkpoint_is_unwrapped_and_stripped_of_wrapper_prefixes():
    tensor = torch.zeros(2)
    state = {"model": {"module.image_encoder.neck.1.weight": tensor, "_orig_mod.mask_decoder.iou_token.weight": tensor}}
    assert set(remap_checkpoint(state)) == {"image_encoder.neck.1.weight", "mask_decoder.iou_token.weight"}
    with pytest.raises(ValueError, match="not a LiteMedSAM state dict"):
        remap_checkpoint({"encoder.weight": tensor})


@pytest.mark.parametrize("size", [32, 64])
def test_shapes_from_image_to_embedding_to_mask(size):
    torch.manual_seed(0)
    model = LiteMedSAM(image_size=size).eval()
    with torch.no_grad():
        embedding = model.embed(torch.rand(1, 3, size, size))
        assert embedding.shape == (1, 256, size // 4, size // 4)
        coords = torch.tensor([[[3.0, 4.0], [1.0, 1.0], [20.0, 25.0]]] * 2)
        labels = torch.tensor([[LABEL_INCLUDE, LABEL_BOX_TOP_LEFT, LABEL_BOX_BOTTOM_RIGHT]] * 2)
        masks, iou = model.decode(embedding, coords, labels)
    assert masks.shape == (2, 4, size, size) and iou.shape == (2, 4)
    with pytest.raises(ValueError, match=rf"\(B, 3, {size}, {size}\)"):
        model.embed(torch.rand(1, 1, size, size))


def test_prompt_tokens_follow_sam_order():
    coords, labels = prompt_points((1, 2, 30, 40), [(5, 6, True), (7, 8, False)])
    assert coords == [(5, 6), (7, 8), (1, 2), (30, 40)]
    assert labels == [LABEL_INCLUDE, LABEL_EXCLUDE, LABEL_BOX_TOP_LEFT, LABEL_BOX_BOTTOM_RIGHT]
    coords, labels = prompt_points(None, [(5, 6, True)])
    assert labels == [LABEL_INCLUDE, LABEL_PAD]  # no box: SAM closes the points with a padding point


@pytest.mark.parametrize("box, points, message", [
    (None, [], "needs a box or at least one include click"),
    (None, [(3, 3, False)], "needs a box or at least one include click"),
    ((10, 10, 5, 20), [], "x0 <= x1"),
    ((1, 2, 3), [], "four finite numbers"),
    ((0, 0, 5, 5), [(60, 3, True)], r"points\[0\]: \(60, 3\) lies outside the 48x40 frame"),
    ((100, 100, 120, 120), [], "outside the 48x40 frame"),
])
def test_an_unusable_prompt_says_what_is_wrong(box, points, message):
    with pytest.raises(PromptError, match=message):
        check_prompt(box, points, 40, 48)


@pytest.mark.parametrize("points, expected", [
    ([], (10, 10, 30, 30)),
    ([(40, 20, True)], (10, 10, 41.05, 30)),  # outside: widened to the click plus 5 % of 21 px
    ([(20, 20, True)], (10, 10, 30, 30)),  # an include click inside changes nothing
    ([(12, 20, False)], (13, 10, 30, 30)),  # exclude near the left side: the left side moves past it
    ([(20, 29, False)], (10, 10, 30, 28)),
    ([(5, 5, False)], (10, 10, 30, 30)),  # an exclude click outside changes nothing
    ([(0, 0, True)], (0, 0, 30, 30)),  # clipped to the frame
])
def test_box_click_mode_moves_the_box(points, expected):
    assert refine_box((10, 10, 30, 30), points, 40, 48) == pytest.approx(expected)


def test_click_mode_box_sends_the_refined_box_alone(monkeypatch):
    seen = []
    card = registry.card("litemedsam")
    model = PromptableSegmenter(card, lambda image: image, lambda e, c, l: seen.append((c, l)) or
                                np.zeros((1, 1, 256, 256), np.float32), "test", "0" * 64, click_mode="box")
    model.mask(np.zeros((256, 64, 64), np.float32), (40, 48), box=(10, 10, 30, 30), points=[(40, 20, True)])
    coords, labels = seen[-1]
    assert labels.tolist() == [[2, 3]]  # the two box corners, no click token
    model.click_mode = "model"
    model.mask(np.zeros((256, 64, 64), np.float32), (40, 48), box=(10, 10, 30, 30), points=[(40, 20, True)])
    assert seen[-1][1].tolist() == [[1, 2, 3]]
    with pytest.raises(ValueError, match="click_mode 'tokens' unknown"):
        PromptableSegmenter(card, None, None, "test", "0" * 64, click_mode="tokens")


def test_onnx_graphs_match_torch_on_small_inputs(tmp_path):
    torch.manual_seed(1)
    model = LiteMedSAM(image_size=32).eval()
    encoder_path, decoder_path = export_onnx(model, tmp_path, "tiny")
    card = registry.card("litemedsam")
    onnx = PromptableSegmenter.from_onnx(card, encoder_path, decoder_path, "0" * 64, threads=1)
    image = np.random.default_rng(0).random((1, 3, 32, 32), dtype=np.float32)
    with torch.no_grad():
        reference = model.embed(torch.from_numpy(image)).numpy()
    embedding = onnx._encode(image)
    np.testing.assert_allclose(embedding, reference, atol=1e-4, rtol=1e-3)
    for box, points in [((2, 3, 20, 25), []), (None, [(8, 9, True)]), ((1, 1, 30, 30), [(5, 5, True), (9, 2, False)])]:
        coords, labels = prompt_points(box, points)  # 2, 2 and 4 tokens: the graph takes any number
        coords_np, labels_np = np.asarray([coords], np.float32), np.asarray([labels], np.float32)
        with torch.no_grad():
            expected = model.decode(torch.from_numpy(reference), torch.from_numpy(coords_np),
                                    torch.from_numpy(labels_np))[0][:, :1].numpy()
        np.testing.assert_allclose(onnx._decode(reference, coords_np, labels_np), expected, atol=1e-4, rtol=1e-3)
    assert export_onnx(model, tmp_path, "tiny") == (encoder_path, decoder_path)  # cached: not exported again


def test_released_weights_find_a_vessel_from_a_box(sample_dir):
    from PIL import Image

    from NerveSegLogic.inference.preprocess import to_grey

    image = to_grey(np.array(Image.open(sample_dir / "images" / "0194.png")))
    reference = np.array(Image.open(sample_dir / "masks" / "0194.png")) == 2
    ys, xs = np.nonzero(reference)
    model = PromptableSegmenter.from_name("litemedsam", backend="torch", threads=1)
    embedding = model.embed(image)
    assert embedding.shape == (256, 64, 64)
    mask = model.mask(embedding, image.shape, box=(xs.min(), ys.min(), xs.max(), ys.max()))
    dice = 2 * (mask & reference).sum() / (mask.sum() + reference.sum())
    assert dice > 0.75, dice
