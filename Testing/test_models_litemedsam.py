"""LiteMedSAM: the shipped weights' names and shapes, the model's shapes, prompt encoding, ONNX parity with torch,
and the real weights finding a nerve and a vessel from a box.

Two promptable models are registered: ``litemedsam-nerve`` (the prompt encoder and mask decoder tuned on usgra-seg,
float16, in the repository, the default promptable model) and ``litemedsam`` (the released weights, float32, a
release download since the tuned model ships: its tests run where its weights were fetched, and skip otherwise)."""

import numpy as np
import pytest
import torch

from NerveSegLogic.inference.promptable import (PromptableSegmenter, PromptError, check_prompt, export_onnx,
                                                refine_box)
from NerveSegLogic.models import registry
from NerveSegLogic.models.litemedsam import (LABEL_BOX_BOTTOM_RIGHT, LABEL_BOX_TOP_LEFT, LABEL_EXCLUDE, LABEL_INCLUDE,
                                             LABEL_PAD, LiteMedSAM, prompt_points, remap_checkpoint)


TUNED, RELEASED = "litemedsam-nerve", "litemedsam"


def weights_here(name):
    card = registry.card(name)
    if not card.has_weights:
        pytest.skip(f"{name}'s weights are a release download, not fetched here ('nerveseg models fetch {name}')")
    return card


@pytest.mark.parametrize("name", [TUNED, RELEASED])
def test_shipped_weights_have_every_parameter_of_the_model_under_its_name(name):
    from safetensors import safe_open

    card = weights_here(name)
    assert card.task == "promptable" and card.output == "mask_logits"
    with torch.device("meta"):
        expected = {k: tuple(v.shape) for k, v in LiteMedSAM().state_dict().items()}
    with safe_open(str(card.weights_path), framework="pt") as handle:
        shipped = {k: tuple(handle.get_slice(k).get_shape()) for k in handle.keys()}
    assert shipped == expected
    assert len(shipped) == 435  # every tensor of lite_medsam.pth, BatchNorm counters included


def test_the_tuned_model_ships_in_the_repository_small_with_its_cv_card():
    card = registry.card(TUNED)
    beside = card.path.parent / card.weights["file"]
    assert beside.is_file() and card.weights["dtype"] == "float16"
    assert beside.stat().st_size < 25e6  # the repository stays small
    assert card.raw["default_promptable"] is True and card.raw["click_mode"] == "model"
    cv = card.metrics["usgra_seg_cv"]
    assert set(cv["dice_fold_mean"]) == {"nerve", "blood_vessel"} and len(cv["dice_per_fold"]) == 5
    assert "usgra-seg" in card.training["data"] and "CC BY 4.0" in card.training["data"]  # the data's credit
    assert card.training["finetune"]["cpu_minutes"] > 0
    released = registry.card(RELEASED)
    assert released.weights_url and released.weights["size"] > 0  # the released weights: a release download


def test_registry_loads_them_checked_but_lists_them_only_when_asked():
    assert RELEASED not in registry.names() and TUNED not in registry.names()  # 'models list' shows live models
    assert {RELEASED, TUNED} <= set(registry.names(tasks=None))
    assert registry.names(tasks=("promptable",)) == [RELEASED, TUNED]
    assert registry.default_promptable_name() == TUNED
    model = registry.load(TUNED)  # sha256 of the card, strict keys and shapes; float16 read as float32
    assert isinstance(model, LiteMedSAM) and not model.training
    assert model.mask_decoder.iou_token.weight.dtype == torch.float32


def test_the_default_promptable_model_is_the_marked_one_else_the_released_one(tmp_path, monkeypatch):
    import json
    import shutil

    from NerveSegLogic.models.card import write_card

    models = tmp_path / "Resources" / "Models"
    models.mkdir(parents=True)
    for name in (RELEASED, TUNED):
        shutil.copy(registry.card(name).path, models / f"{name}.json")
    monkeypatch.setenv("NERVESEG_RESOURCES", str(tmp_path / "Resources"))
    assert registry.default_promptable_name() == TUNED
    data = json.loads((models / f"{TUNED}.json").read_text())
    data["default_promptable"] = False
    write_card(data, models / f"{TUNED}.json")
    assert registry.default_promptable_name() == RELEASED  # none marked: the released model
    for name in (RELEASED, TUNED):
        data = json.loads((models / f"{name}.json").read_text())
        data["default_promptable"] = True
        write_card(data, models / f"{name}.json")
    with pytest.raises(ValueError, match="at most one promptable model card"):
        registry.default_promptable_name()


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
    ((10, 10, 10, 10), [], r"has zero size \(width 0, height 0 px\)"),
    ((10, 10, 30, 10.5), [], "has zero size"),
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
    previous = np.random.default_rng(1).normal(0, 3, (1, 1, 32, 32)).astype(np.float32)
    for box, points, mask in [((2, 3, 20, 25), [], None), (None, [(8, 9, True)], None),
                              ((1, 1, 30, 30), [(5, 5, True), (9, 2, False)], None),
                              ((1, 1, 30, 30), [(5, 5, True)], previous)]:
        coords, labels = prompt_points(box, points)  # 2, 2 and 4 tokens: the graph takes any number
        coords_np, labels_np = np.asarray([coords], np.float32), np.asarray([labels], np.float32)
        extra = () if mask is None else (mask, np.ones(1, np.float32))
        with torch.no_grad():
            masks, iou = model.decode(torch.from_numpy(reference), torch.from_numpy(coords_np),
                                      torch.from_numpy(labels_np), *(torch.from_numpy(a) for a in extra))
        logits, predicted_iou = onnx._decode(reference, coords_np, labels_np, *extra)
        np.testing.assert_allclose(logits, masks[:, :1].numpy(), atol=1e-4, rtol=1e-3)
        np.testing.assert_allclose(predicted_iou, iou[:, :1].numpy(), atol=1e-4, rtol=1e-3)  # the IoU head too
    assert export_onnx(model, tmp_path, "tiny") == (encoder_path, decoder_path)  # cached: not exported again


def _sample(sample_dir, name="0194.png"):
    from PIL import Image

    from NerveSegLogic.imaging.placement import to_grey

    image = to_grey(np.array(Image.open(sample_dir / "images" / name)))
    return image, np.array(Image.open(sample_dir / "masks" / name))


def _box(region):
    ys, xs = np.nonzero(region)
    return (xs.min(), ys.min(), xs.max(), ys.max())


def test_released_weights_find_a_vessel_from_a_box(sample_dir):
    weights_here(RELEASED)
    image, labels = _sample(sample_dir)
    reference = labels == 2
    model = PromptableSegmenter.from_name(RELEASED, backend="torch", threads=1)
    assert model.click_mode == "box"  # trained on boxes: clicks move the box
    embedding = model.embed(image)
    assert embedding.shape == (256, 64, 64)
    mask = model.mask(embedding, image.shape, box=_box(reference))
    dice = 2 * (mask & reference).sum() / (mask.sum() + reference.sum())
    assert dice > 0.75, dice


def test_the_default_promptable_model_finds_a_nerve_and_a_vessel_and_knows_how_sure_it_is(sample_dir):
    """Frame 0194 was among the tuned model's training frames (it trained on all of usgra-seg): this checks the
    shipped file and the path, not held-out accuracy (benchmarks/release/litemedsam_tuned.md has that)."""
    image, labels = _sample(sample_dir)
    model = PromptableSegmenter.from_name(backend="onnx", threads=1)
    assert model.card.name == TUNED and model.click_mode == "model"
    embedding = model.embed(image)
    for label in (1, 2):
        reference = labels == label
        mask, iou = model.predict(embedding, image.shape, box=_box(reference))
        dice = 2 * (mask & reference).sum() / (mask.sum() + reference.sum())
        assert dice > 0.8, (label, dice)
        assert 0.5 < iou <= 1.0, (label, iou)


def test_a_mask_prompt_model_runs_box_and_clicks_as_a_chain_and_reuses_it():
    """With mask_prompt, box + clicks are decoded as the chain the model was trained on (box; box + click 1 with the
    box's logits as the dense prompt; ...), and a click added to the last prompt costs one decode."""
    torch.manual_seed(2)
    model = LiteMedSAM(image_size=32).eval()
    released = registry.card(RELEASED)
    card = released.with_updates(input={**released.raw["input"], "size": [32, 32]}, build={"image_size": 32})
    segmenter = PromptableSegmenter.from_module(card, model, "0" * 64, click_mode="model")
    segmenter.mask_prompt = True
    embedding = np.random.default_rng(0).random((256, 8, 8), dtype=np.float32)
    box, clicks = (2, 3, 20, 25), [(8, 9, True), (15, 12, False)]
    calls = []
    decode = segmenter._decode
    segmenter._decode = lambda *args: calls.append(len(args)) or decode(*args)
    logits, iou = segmenter.logits_and_iou(embedding, (32, 32), box, clicks)

    e = torch.from_numpy(embedding)[None]
    chain = None
    with torch.no_grad():
        for count in range(len(clicks) + 1):
            coords, labels = prompt_points(box, clicks[:count])
            masks, ious = model.decode(e, torch.tensor([coords]), torch.tensor([labels], dtype=torch.float32),
                                       chain, None if chain is None else torch.ones(1))
            chain = masks[:, :1]
    np.testing.assert_allclose(logits, chain[0, 0].numpy(), atol=1e-5)
    assert iou == pytest.approx(float(ious[0, 0].clamp(0, 1)), abs=1e-6)
    assert calls == [3, 5, 5]  # box alone, then each click with the previous mask
    segmenter.logits_and_iou(embedding, (32, 32), box, clicks + [(4, 20, True)])
    assert calls == [3, 5, 5, 5]  # one more click: one more decode
    segmenter.logits_and_iou(embedding, (32, 32), box, clicks[:1])
    assert calls == [3, 5, 5, 5]  # a shorter prompt is a prefix of the chain: no decode at all
