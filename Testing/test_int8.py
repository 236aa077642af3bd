"""INT8 on the CPU: the quantized ONNX graph, its cache, the card's int8 block and when ``auto`` runs it."""

import argparse

import numpy as np
import onnx
import pytest
import torch

from NerveSegLogic.inference import backends, loading, quantize
from NerveSegLogic.inference.segmenter import load_segmenter
from NerveSegLogic.models import int8 as card_int8
from NerveSegLogic.models import registry
from NerveSegLogic.models.card import ModelCard

torch.set_num_threads(2)


def _frames(n=3, seed=0):
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, size=(96, 120), dtype=np.uint8) for _ in range(n)]


@pytest.fixture(scope="module")
def small_graphs(tmp_path_factory):
    """A small smistad-unet (random weights) exported to float32 ONNX and quantized to INT8."""
    folder = tmp_path_factory.mktemp("int8")
    card = registry.card("smistad-unet")
    torch.manual_seed(0)
    model = registry.build("smistad-unet", filters=[4, 8]).eval()
    fp32 = registry.export_onnx(model, folder / "small.onnx", card=card)
    int8 = quantize.quantize_int8(fp32, quantize.int8_path_for(fp32), card, frames=_frames())
    return card, fp32, int8


def _card_with_int8(block, name="unet"):
    data = registry.card(name).to_json()
    data["int8"] = block
    return ModelCard.from_dict(data)


# ------------------------------------------------------------------------------------------------ the graph
def test_int8_graph_is_cached_next_to_the_float32_one_and_marked_int8(small_graphs):
    _, fp32, int8 = small_graphs
    assert int8.parent == fp32.parent and int8.is_file()
    assert int8.name.startswith(fp32.stem) and card_int8.INT8_RECIPE in int8.name
    graph = onnx.load(str(int8))
    props = {p.key: p.value for p in graph.metadata_props}
    assert props["nerveseg.precision"] == "int8" and props["nerveseg.calibration_frames"] == "3"
    ops = {node.op_type for node in graph.graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops  # QDQ format
    assert [i.name for i in graph.graph.input] == ["image"] and [o.name for o in graph.graph.output] == [
        "probabilities"]
    assert not list(fp32.parent.glob("nerveseg-int8-*"))  # the work folder is gone


def test_int8_backend_gives_float_probabilities_close_to_float32(small_graphs):
    card, fp32, int8 = small_graphs
    from NerveSegLogic.imaging import placement as pp

    batch = pp.preprocess(_frames(1, seed=5)[0], card.input)[0][np.newaxis]
    a = backends.OnnxBackend(fp32, threads=1).run(batch)
    quantized = backends.OnnxInt8Backend(int8, threads=1)
    b = quantized.run(batch)
    assert b.dtype == np.float32 and b.shape == a.shape
    np.testing.assert_allclose(b.sum(axis=1), 1.0, atol=0.02)
    assert np.abs(a - b).max() < 0.1
    assert quantized.name == "onnx-int8" and "int8" in backends.describe(quantized)


def test_quantize_refuses_instance_models_missing_graphs_and_no_frames(small_graphs, tmp_path):
    card, fp32, _ = small_graphs
    with pytest.raises(ValueError, match="instance model"):
        quantize.quantize_int8(fp32, tmp_path / "x.onnx", registry.card("bpmsegnet"), frames=_frames(1))
    with pytest.raises(FileNotFoundError, match="missing.onnx"):
        quantize.quantize_int8(tmp_path / "missing.onnx", tmp_path / "x.onnx", card, frames=_frames(1))
    with pytest.raises(ValueError, match="at least one frame"):
        quantize.quantize_int8(fp32, tmp_path / "x.onnx", card, frames=[])
    assert not (tmp_path / "x.onnx").exists()


def _scales(path):
    """Every initializer of the quantized graph whose name says it is a scale, as one flat float array."""
    graph = onnx.load(str(path))
    return np.concatenate([onnx.numpy_helper.to_array(t).ravel() for t in graph.graph.initializer
                           if t.name.endswith("_scale")])


def test_the_card_names_the_int8_recipe_and_the_graph_is_made_and_cached_with_it(small_graphs, tmp_path):
    card, fp32, minmax = small_graphs
    data = card.to_json()
    data["int8"] = {"recipe": "qdq-perchannel-movavg-v1"}  # named before anything was measured: allowed
    movavg_card = ModelCard.from_dict(data)
    assert card_int8.int8_recipe_of(movavg_card) == "qdq-perchannel-movavg-v1"
    assert card_int8.int8_recipe_of(card) == card_int8.INT8_RECIPE  # a card naming none
    assert loading.resolve_backend(movavg_card, "auto", "cpu") == "onnx"  # nothing measured: float32
    path = quantize.int8_path_for(fp32, "qdq-perchannel-movavg-v1")
    assert path != minmax and "movavg" in path.name
    made = quantize.quantize_int8(fp32, tmp_path / path.name, movavg_card, frames=_frames())
    props = {p.key: p.value for p in onnx.load(str(made)).metadata_props}
    assert props["nerveseg.int8_recipe"] == "qdq-perchannel-movavg-v1"
    # averaged per-frame ranges are narrower than the min/max over all frames: other activation scales
    assert not np.allclose(_scales(made), _scales(minmax))


def test_an_unknown_int8_recipe_is_refused_naming_the_card_and_field(tmp_path):
    data = registry.card("unet").to_json()
    data["int8"] = {"recipe": "fp4-magic"}
    with pytest.raises(ValueError, match=r"unet.json: field 'int8.recipe': expected one of .*minmax.*fp4-magic"):
        ModelCard.from_dict(data, tmp_path / "unet.json")


def test_load_segmenter_quantizes_once_and_reuses_the_cache(tmp_path, unet_random):
    first = load_segmenter(unet_random, backend="onnx-int8", threads=1, onnx_cache=tmp_path)
    path = first.backend.path
    assert isinstance(first.backend, backends.OnnxInt8Backend) and path.parent == tmp_path
    stamp = path.stat().st_mtime_ns
    again = load_segmenter(unet_random, backend="onnx-int8", threads=1, onnx_cache=tmp_path)
    assert again.backend.path == path and path.stat().st_mtime_ns == stamp
    result = first.segment(np.zeros((420, 580), dtype=np.uint8))
    assert result.labelmap.shape == (420, 580)


def test_onnx_int8_refuses_an_instance_model():
    with pytest.raises(ValueError, match="semantic models only"):
        load_segmenter("bpmsegnet", backend="onnx-int8")


# ------------------------------------------------------------------------------------------- card and auto
def test_card_accepts_an_int8_block_and_rejects_a_bad_one(tmp_path):
    good = {"max_dice_change": 0.002, "dice_change": {"nerve": 0.002, "blood_vessel": 0.001},
            "ms_per_frame": {"onnx_float32": 8.0, "onnx_int8": 5.0}, "mask_agreement_dice": {"nerve": 0.97}}
    assert _card_with_int8(good).raw["int8"]["max_dice_change"] == 0.002
    data = registry.card("unet").to_json()
    for block, field in (({"max_dice_change": -1}, "int8.max_dice_change"),
                         ({"max_dice_change": "small"}, "int8.max_dice_change"),
                         ({"max_dice_change": 0.0, "dice_change": {"nerve": "x"}}, "int8.dice_change"),
                         ("fast", "int8")):
        data["int8"] = block
        with pytest.raises(ValueError, match=f"unet.json: field '{field}'"):
            ModelCard.from_dict(data, tmp_path / "unet.json")
    instance = registry.card("bpmsegnet").to_json()
    instance["int8"] = good
    with pytest.raises(ValueError, match="only semantic models"):
        ModelCard.from_dict(instance)


def test_auto_runs_int8_only_where_the_measured_dice_change_is_under_the_limit():
    agreement = {"nerve": 0.95, "blood_vessel": 0.96}
    small = _card_with_int8({"max_dice_change": 0.004, "mask_agreement_dice": agreement})
    large = _card_with_int8({"max_dice_change": 0.02, "mask_agreement_dice": agreement})
    at_limit = _card_with_int8({"max_dice_change": card_int8.INT8_MAX_DICE_CHANGE, "mask_agreement_dice": agreement})
    empty = _card_with_int8({"max_dice_change": 0.0, "mask_agreement_dice": {"nerve": None, "blood_vessel": None}})
    unmeasured = registry.card("unet").to_json()
    unmeasured.pop("int8", None)
    assert loading.resolve_backend(small, "auto", "cpu") == "onnx-int8"
    assert loading.resolve_backend(large, "auto", "cpu") == "onnx"
    assert loading.resolve_backend(at_limit, "auto", "cpu") == "onnx"
    assert loading.resolve_backend(empty, "auto", "cpu") == "onnx"  # nothing segmented: no evidence
    assert loading.resolve_backend(ModelCard.from_dict(unmeasured), "auto", "cpu") == "onnx"
    assert loading.resolve_backend(registry.card("bpmsegnet"), "auto", "cpu") == "torch"
    assert loading.resolve_backend(large, "onnx-int8", "cpu") == "onnx-int8"  # asked for: given
    slower = _card_with_int8({"max_dice_change": 0.004, "mask_agreement_dice": agreement,
                              "ms_per_frame": {"onnx_float32": 18.0, "onnx_int8": 21.0}})
    faster = _card_with_int8({"max_dice_change": 0.004, "mask_agreement_dice": agreement,
                              "ms_per_frame": {"onnx_float32": 18.0, "onnx_int8": 9.0}})
    assert loading.resolve_backend(slower, "auto", "cpu") == "onnx"  # measured slower: float32 is better
    # the cross-validated change (held-out folds) decides over the training-frame one, either way
    folds_large = _card_with_int8({"max_dice_change": 0.004, "mask_agreement_dice": agreement,
                                   "cross_validation": {"max_dice_change": 0.017, "folds": 5}})
    folds_small = _card_with_int8({"max_dice_change": 0.02, "mask_agreement_dice": agreement,
                                   "cross_validation": {"max_dice_change": 0.006, "folds": 5}})
    assert loading.resolve_backend(folds_large, "auto", "cpu") == "onnx"
    assert loading.resolve_backend(folds_small, "auto", "cpu") == "onnx-int8"
    assert loading.resolve_backend(faster, "auto", "cpu") == "onnx-int8"
    with pytest.raises(ValueError, match="onnx-int8"):
        loading.resolve_backend(small, "tensorrt", "cpu")


def test_shipped_int8_blocks_agree_with_what_auto_picks():
    for card in registry.cards():
        block = card.raw.get("int8")
        if block is None:
            continue
        picked = loading.resolve_backend(card, "auto", "cpu") == "onnx-int8"
        assert picked == block.get("auto_uses_int8", False), card.name  # only a recipe named: nothing measured


# ------------------------------------------------------------------------------------------------ commands
@pytest.mark.parametrize("command", ["serve", "demo"])
def test_serve_and_demo_take_the_int8_backend_and_a_thread_count(command, capsys):
    from NerveSegLogic import cli

    parser = cli.build_parser()
    extra = ["--input", "127.0.0.1:18944"] if command == "serve" else []
    args = parser.parse_args([command, *extra, "--backend", "onnx-int8", "--threads", "1"])
    assert args.backend == "onnx-int8" and args.threads == 1
    assert parser.parse_args([command, *extra]).threads == backends.DEFAULT_THREADS
    with pytest.raises(SystemExit):
        parser.parse_args([command, *extra, "--threads", "-2"])
    assert "--threads: expected a whole number of threads" in capsys.readouterr().err


def test_thread_count_rejects_words_and_negatives():
    assert backends.thread_count("0") == 0 and backends.thread_count("3") == 3
    for bad in ("two", "-1", "1.5"):
        with pytest.raises(argparse.ArgumentTypeError, match=repr(bad)):
            backends.thread_count(bad)


def test_default_threads_leave_one_core_for_receiving_and_sending(monkeypatch):
    for cores, expected in ((1, 1), (2, 1), (8, 7), (None, 1)):
        monkeypatch.setattr(backends.os, "cpu_count", lambda cores=cores: cores)
        assert backends.default_threads() == expected
