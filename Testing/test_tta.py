"""Flip test-time augmentation (issue 12): FlipTTABackend's arithmetic, its symmetry, the --tta option of the
offline commands reaching the segmenter, and the refusal of instance models."""

from __future__ import annotations

import argparse
import json

import cv2
import numpy as np
import pytest

from NerveSegLogic.inference.backends import (FlipTTABackend, TorchBackend, apply_tta, check_tta, describe,
                                              tta_of)


class ColumnWeightBackend:
    """A semantic toy model that is not mirror-symmetric: foreground probability = pixel value times a weight that
    grows from left to right; background = 1 - foreground. Records the batches it is given."""

    task = "semantic"

    def __init__(self, weights):
        self.weights = np.asarray(weights, dtype=np.float32)
        self.seen = []

    def run(self, batch):
        self.seen.append(np.array(batch))
        foreground = np.clip(batch[:, 0] * self.weights, 0.0, 1.0)
        return np.stack([1.0 - foreground, foreground], axis=1).astype(np.float32)


class InstanceBackend:
    task = "instance"

    def run(self, batch):
        raise AssertionError("an instance model must be refused before it runs")


def test_flip_tta_is_the_mean_of_the_frame_and_its_mirror_worked_by_hand():
    toy = ColumnWeightBackend([0.2, 0.4, 0.8])
    batch = np.array([1.0, 0.5, 0.0], dtype=np.float32).reshape(1, 1, 1, 3)
    out = FlipTTABackend(toy).run(batch)
    # plain:                foreground [1*0.2, 0.5*0.4, 0*0.8] = [0.2, 0.2, 0.0]
    # mirrored input [0, 0.5, 1] -> [0.0, 0.2, 0.8], mirrored back [0.8, 0.2, 0.0]
    # mean:                 [0.5, 0.2, 0.0]; background 1 - that
    assert out.shape == (1, 2, 1, 3) and out.dtype == np.float32
    np.testing.assert_allclose(out[0, 1, 0], [0.5, 0.2, 0.0], atol=1e-6)
    np.testing.assert_allclose(out[0, 0, 0], [0.5, 0.8, 1.0], atol=1e-6)
    assert len(toy.seen) == 2
    np.testing.assert_array_equal(toy.seen[1][0, 0, 0], [0.0, 0.5, 1.0])  # the second run saw the mirror image


def test_flip_tta_equals_the_formula_on_a_random_batch():
    rng = np.random.default_rng(3)
    toy = ColumnWeightBackend(rng.uniform(0.1, 1.0, size=7))
    batch = rng.uniform(0, 1, size=(2, 1, 5, 7)).astype(np.float32)
    expected = (toy.run(batch) + toy.run(batch[..., ::-1].copy())[..., ::-1]) / 2
    out = FlipTTABackend(toy).run(batch)
    np.testing.assert_allclose(out, expected, rtol=0, atol=1e-7)
    np.testing.assert_allclose(out.sum(axis=1), 1.0, atol=1e-6)  # still probabilities
    assert not np.allclose(out, toy.run(batch), atol=1e-3)  # and not simply the plain answer


def _asymmetric_module():
    import torch

    torch.manual_seed(0)
    module = torch.nn.Conv2d(1, 3, kernel_size=3, padding=1)
    with torch.no_grad():
        module.weight[:, :, :, 0] += 1.0  # the left column of every kernel weighs more: no mirror symmetry
    return module


def test_flip_tta_output_is_exactly_mirror_symmetric_for_a_symmetric_input():
    rng = np.random.default_rng(1)
    half = rng.uniform(0, 1, size=(1, 1, 16, 8)).astype(np.float32)
    batch = np.concatenate([half, half[..., ::-1]], axis=3)  # mirror-symmetric 16x16 input
    assert np.array_equal(batch, batch[..., ::-1])
    inner = TorchBackend(_asymmetric_module(), task="semantic")
    plain = inner.run(batch)
    assert np.abs(plain - plain[..., ::-1]).max() > 1e-2  # the model alone does not answer symmetrically
    out = FlipTTABackend(inner).run(batch)
    np.testing.assert_array_equal(out, out[..., ::-1])


def test_segmenter_with_flip_tta_gives_a_mirror_symmetric_frame_a_symmetric_labelmap():
    """Through the whole Segmenter: a frame as wide as the model input (no horizontal resampling) that is its own
    mirror image gets mirror-symmetric probabilities and labelmap."""
    from NerveSegLogic.inference.segmenter import Segmenter
    from NerveSegLogic.models import registry

    card = registry.card("unet")
    width = card.input.width
    rng = np.random.default_rng(2)
    half = rng.integers(0, 256, size=(width * 3 // 4, width // 2), dtype=np.uint8)
    frame = np.concatenate([half, half[:, ::-1]], axis=1)
    segmenter = apply_tta(Segmenter(card, TorchBackend(_asymmetric_module(), task="semantic"),
                                    min_component_area=0), "flip")
    probabilities = segmenter.predict_probabilities(frame)
    np.testing.assert_array_equal(probabilities, probabilities[..., ::-1])
    labelmap = segmenter.segment(frame).labelmap
    assert labelmap.any() and np.array_equal(labelmap, labelmap[:, ::-1])


def test_instance_models_are_refused_with_the_model_named():
    from NerveSegLogic.inference.segmenter import Segmenter
    from NerveSegLogic.models import registry

    with pytest.raises(ValueError, match=r"semantic models only; model 'bpmsegnet' is an instance model"):
        apply_tta(Segmenter(registry.card("bpmsegnet"), InstanceBackend()), "flip")
    with pytest.raises(ValueError, match=r"'my-detector' is an instance model"):
        FlipTTABackend(InstanceBackend(), model="my-detector")
    with pytest.raises(ValueError, match=r"unknown test-time augmentation 'rotate'; expected one of none, flip"):
        check_tta("rotate", "semantic", "unet")
    check_tta("none", "instance", "bpmsegnet")  # no augmentation asked: nothing to refuse


def test_describe_and_tta_of_name_the_wrapper():
    inner = TorchBackend(_asymmetric_module(), task="semantic")
    wrapped = FlipTTABackend(inner)
    assert describe(wrapped) == "torch (cpu) + flip TTA"
    assert (tta_of(wrapped), tta_of(inner)) == ("flip", "none")
    with pytest.raises(ValueError, match="already runs with flip"):
        FlipTTABackend(wrapped, model="unet")


# ------------------------------------------------------------------------------------------------- commands
def _parse(module, argv):
    parser = argparse.ArgumentParser(prog="nerveseg")
    module.register(parser.add_subparsers(dest="command"))
    return parser.parse_args(argv)


@pytest.fixture
def random_smistad_weights(tmp_path):
    import torch

    from NerveSegLogic.models import registry

    torch.manual_seed(0)
    weights = tmp_path / "smistad-unet-random.safetensors"
    registry.save_weights(registry.build_from_card(registry.card("smistad-unet")), weights)
    return weights


def test_tta_option_defaults_to_none_and_refuses_other_values(capsys):
    from NerveSegLogic.commands import annotate, evaluate, predict

    assert _parse(predict, ["predict", "x.png"]).tta == "none"
    assert _parse(predict, ["predict", "x.png", "--tta", "flip"]).tta == "flip"
    assert _parse(evaluate, ["evaluate", "--model", "unet", "--data", "d", "--tta", "flip"]).tta == "flip"
    assert _parse(annotate, ["annotate", "prelabel", "--store", "s.nsdb", "--model", "unet"]).tta == "none"
    with pytest.raises(SystemExit):
        _parse(predict, ["predict", "x.png", "--tta", "rotate"])
    assert "invalid choice: 'rotate'" in capsys.readouterr().err


def test_predict_tta_flip_reaches_the_segmenter(tmp_path, monkeypatch, capsys):
    from NerveSegLogic.commands import predict
    from NerveSegLogic.inference.segmenter import Segmenter
    from NerveSegLogic.models import registry

    used = []

    def from_card(card, **kwargs):
        assert card == registry.card("unet")  # predict passes the card it looked up
        segmenter = Segmenter(card, TorchBackend(_asymmetric_module(), task="semantic"))
        used.append(segmenter)
        return segmenter

    monkeypatch.setattr(Segmenter, "from_card", staticmethod(from_card))
    image = tmp_path / "frame.png"
    cv2.imwrite(str(image), np.tile(np.arange(0, 250, 5, dtype=np.uint8), (40, 1)))
    args = _parse(predict, ["predict", str(image), "--model", "unet", "--tta", "flip", "--out", str(tmp_path / "o")])
    assert args.func(args) == 0
    assert isinstance(used[0].backend, FlipTTABackend) and isinstance(used[0].backend.inner, TorchBackend)
    out = capsys.readouterr().out
    assert "wrote 1 of 1 masks and overlays" in out and "(unet on torch (cpu) + flip TTA)" in out
    assert (tmp_path / "o" / "masks" / "frame.png").is_file()


def test_predict_refuses_tta_for_an_instance_model_before_loading_it(tmp_path, monkeypatch):
    from NerveSegLogic.commands import predict
    from NerveSegLogic.inference.segmenter import Segmenter

    monkeypatch.setattr(Segmenter, "from_card", staticmethod(lambda *a, **k: pytest.fail("model was loaded")))
    image = tmp_path / "frame.png"
    cv2.imwrite(str(image), np.zeros((8, 8), np.uint8))
    args = _parse(predict, ["predict", str(image), "--model", "bpmsegnet", "--tta", "flip"])
    with pytest.raises(SystemExit, match="nerveseg predict: .*'bpmsegnet' is an instance model"):
        args.func(args)


def test_prelabel_tta_flip_reaches_the_segmenter_and_is_recorded(tmp_path, monkeypatch, capsys,
                                                                  random_smistad_weights):
    from NerveSegLogic.annotate import prelabel as prelabel_module
    from NerveSegLogic.store.database import AnnotationStore
    from NerveSegLogic.commands import annotate

    folder = tmp_path / "S01"
    folder.mkdir()
    for i in range(2):
        image = np.full((24, 32), 50 + 80 * i, np.uint8)
        image[6:18, 4:14] = 230
        cv2.imwrite(str(folder / f"f{i}.png"), image)
    db = tmp_path / "p.nsdb"
    args = _parse(annotate, ["annotate", "import", str(folder), "--store", str(db)])
    assert args.func(args) == 0

    backends = []
    real_prelabel = prelabel_module.prelabel

    def spy(store, segmenter, *a, **k):
        backends.append(segmenter.backend)
        return real_prelabel(store, segmenter, *a, **k)

    monkeypatch.setattr(prelabel_module, "prelabel", spy)
    args = _parse(annotate, ["annotate", "prelabel", "--store", str(db), "--model", "smistad-unet", "--weights",
                             str(random_smistad_weights), "--tta", "flip", "--author", "runner"])
    assert args.func(args) == 0
    assert len(backends) == 1 and isinstance(backends[0], FlipTTABackend)
    assert "2 frames pre-labelled by smistad-unet" in capsys.readouterr().out
    with AnnotationStore(db) as store:
        comments = [store.current(frame.id).comment for frame in store.frames()]
    assert len(comments) == 2
    for comment in comments:
        assert prelabel_module.FLIP_TTA_NOTE in comment and random_smistad_weights.name in comment


def test_prelabel_command_refuses_tta_for_an_instance_model(tmp_path, capsys):
    from NerveSegLogic.commands import annotate

    args = _parse(annotate, ["annotate", "prelabel", "--store", str(tmp_path / "p.nsdb"), "--model", "bpmsegnet",
                             "--tta", "flip"])
    assert args.func(args) == 1
    assert "'bpmsegnet' is an instance model" in capsys.readouterr().err


def test_evaluate_tta_flip_reaches_the_segmenter_and_the_report(tmp_path, monkeypatch, sample_dir,
                                                                random_smistad_weights):
    from NerveSegLogic.commands import evaluate as command
    from NerveSegLogic.train import evaluate as evaluation

    backends = []
    real_evaluate = evaluation.evaluate

    def spy(segmenter, *a, **k):
        backends.append(segmenter.backend)
        return real_evaluate(segmenter, *a, **k)

    monkeypatch.setattr(evaluation, "evaluate", spy)
    out = tmp_path / "eval"
    args = _parse(command, ["evaluate", "--model", "smistad-unet", "--data", str(sample_dir), "--weights",
                            str(random_smistad_weights), "--limit-images", "1", "--pictures", "0", "--tta", "flip",
                            "--no-progress", "--out", str(out)])
    assert args.func(args) == 0
    assert len(backends) == 1 and isinstance(backends[0], FlipTTABackend)
    context = json.loads((out / "metrics.json").read_text(encoding="utf-8"))["context"]
    assert (context["tta"], context["backend"]) == ("flip", "torch (cpu) + flip TTA")
    assert "- test-time augmentation: flip" in (out / "report.md").read_text(encoding="utf-8")


def test_evaluate_refuses_tta_for_an_instance_model_before_reading_data(tmp_path, capsys):
    from NerveSegLogic.commands import evaluate as command

    args = _parse(command, ["evaluate", "--model", "bpmsegnet", "--data", str(tmp_path / "no-such-data"),
                            "--tta", "flip", "--no-progress", "--out", str(tmp_path / "eval")])
    assert args.func(args) == 2
    err = capsys.readouterr().err
    assert "'bpmsegnet' is an instance model" in err and "no-such-data" not in err
