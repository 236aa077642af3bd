"""Exact graph rewrites at export (models/onnx_graph.py): zero pads folded into the convolutions after them give
the same output bit for bit, and pads that are not a plain zero pad of a convolution's input are left alone."""

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")
from onnx import TensorProto, helper, numpy_helper  # noqa: E402

from NerveSegLogic.models import onnx_graph  # noqa: E402


def run(model, x):
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, {"x": x})[0]


def pad_conv_model(pads, mode="constant", value=None, second_user=False, through_nodes=False):
    """x -> Pad(pads) -> Conv(3x3, stride 2) -> y (and optionally the Pad's output also to a Relu -> z)."""
    rng = np.random.default_rng(0)
    weight = numpy_helper.from_array(rng.normal(size=(4, 2, 3, 3)).astype(np.float32), "w")
    initializers = [weight]
    nodes = []
    if through_nodes:  # as torch's exporter writes them: a chain of constant nodes computes the amounts
        nodes.append(helper.make_node("Constant", [], ["pads_raw"],
                                      value=numpy_helper.from_array(np.array(pads, np.int32))))
        nodes.append(helper.make_node("Cast", ["pads_raw"], ["pads"], to=TensorProto.INT64))
    else:
        initializers.append(numpy_helper.from_array(np.array(pads, np.int64), "pads"))
    pad_inputs = ["x", "pads"]
    if value is not None:
        initializers.append(numpy_helper.from_array(np.array(value, np.float32), "value"))
        pad_inputs.append("value")
    nodes.append(helper.make_node("Pad", pad_inputs, ["padded"], mode=mode))
    nodes.append(helper.make_node("Conv", ["padded", "w"], ["y"], strides=[2, 2]))
    outputs = [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4, None, None])]
    if second_user:
        nodes.append(helper.make_node("Relu", ["padded"], ["z"]))
        outputs.append(helper.make_tensor_value_info("z", TensorProto.FLOAT, [1, 2, None, None]))
    graph = helper.make_graph(nodes, "pad_conv", [helper.make_tensor_value_info("x", TensorProto.FLOAT,
                                                                                  [1, 2, 10, 12])],
                              outputs, initializers)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


@pytest.mark.parametrize("through_nodes", [False, True])
def test_an_asymmetric_zero_pad_is_folded_into_the_convolution_with_the_same_output(through_nodes):
    x = np.random.default_rng(1).normal(size=(1, 2, 10, 12)).astype(np.float32)
    pads = [0, 0, 0, 1, 0, 0, 1, 2]  # TensorFlow SAME style: more after than before
    model = pad_conv_model(pads, value=0.0, through_nodes=through_nodes)
    expected = run(model, x)
    assert onnx_graph.fold_pads_into_convs(model) == 1
    onnx.checker.check_model(model)
    assert [n.op_type for n in model.graph.node] == ["Conv"]  # the pad and its constant chain are gone
    conv = model.graph.node[0]
    assert helper.get_attribute_value(next(a for a in conv.attribute if a.name == "pads")) == [0, 1, 1, 2]
    assert {i.name for i in model.graph.initializer} == {"w"}
    got = run(model, x)
    assert got.shape == expected.shape == (1, 4, 5, 7)  # 11x15 padded, 3x3 at stride 2
    assert np.array_equal(got, expected)


@pytest.mark.parametrize("kind", ["reflect", "nonzero fill", "batch axis", "second user"])
def test_pads_that_are_not_a_plain_zero_pad_of_one_convolution_stay(kind):
    x = np.random.default_rng(2).normal(size=(1, 2, 10, 12)).astype(np.float32)
    settings = {"reflect": dict(pads=[0, 0, 1, 1, 0, 0, 1, 1], mode="reflect"),
                "nonzero fill": dict(pads=[0, 0, 1, 1, 0, 0, 1, 1], value=0.5),
                "batch axis": dict(pads=[1, 0, 1, 1, 0, 0, 1, 1]),
                "second user": dict(pads=[0, 0, 1, 1, 0, 0, 1, 1], second_user=True)}[kind]
    model = pad_conv_model(**settings)
    expected = run(model, x)
    assert onnx_graph.fold_pads_into_convs(model) == 0
    assert "Pad" in [n.op_type for n in model.graph.node]
    assert np.array_equal(run(model, x), expected)


def test_the_exported_effnet_unet_has_no_pads_left_and_segments_as_torch_does(tmp_path):
    torch = pytest.importorskip("torch")
    from NerveSegLogic.models import registry

    card = registry.card("effnet-unet")
    torch.manual_seed(0)
    module = registry.build_from_card(card).eval()  # random weights: the graph's shape is what is tested
    path = registry.export_onnx(module, tmp_path / "model.onnx", card=card)
    graph = onnx.load(str(path)).graph
    assert not [n for n in graph.node if n.op_type == "Pad"]
    x = np.random.default_rng(3).random((1, 1, card.input.height, card.input.width), dtype=np.float32)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = session.run(None, {"image": x})[0]
    with torch.no_grad():
        expected = torch.softmax(module(torch.from_numpy(x)), dim=1).numpy()
    assert np.abs(got - expected).max() < 1e-4
    assert (got.argmax(1) == expected.argmax(1)).mean() > 0.999


def test_a_failing_rewrite_keeps_the_exported_graph_and_says_so(tmp_path, monkeypatch, caplog):
    torch = pytest.importorskip("torch")
    from NerveSegLogic.models import onnx_graph as module
    from NerveSegLogic.models import registry

    def broken(model):
        raise NotImplementedError("no reference implementation of Cast here")

    monkeypatch.setattr(module, "fold_pads_into_convs", broken)
    card = registry.card("effnet-unet")
    torch.manual_seed(0)
    path = registry.export_onnx(registry.build_from_card(card).eval(), tmp_path / "model.onnx", card=card)
    graph = onnx.load(str(path)).graph
    assert [n for n in graph.node if n.op_type == "Pad"]  # torch's graph, pads and all
    assert "without folding its pads" in caplog.text and "NotImplementedError" in caplog.text
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    x = np.zeros((1, 1, card.input.height, card.input.width), np.float32)
    assert session.run(None, {"image": x})[0].shape == (1, 3, card.input.height, card.input.width)
