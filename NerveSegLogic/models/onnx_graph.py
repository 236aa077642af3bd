"""Exact rewrites of exported ONNX graphs that make them cheaper to run (same arithmetic, fewer nodes).

:func:`fold_pads_into_convs`: the EfficientNet encoders pad like TensorFlow's ``SAME`` with an explicit ``F.pad``
before each convolution (models/efficientnet_unet.py, ``SameConv2d``). torch's exporter writes each as a ``Pad``
node whose pads come from a chain of constant nodes that its constant folding leaves in place, so neither
ONNX Runtime's pad fusion nor its quantizer sees through them: in the INT8 graph every one of the 22 pads of
effnet2-unet ran as dequantize -> float Pad -> quantize (benchmarks/int8/pad_fold.md times the graph before and
after the fold). A zero ``Pad`` of the two spatial axes followed only by a ``Conv`` is the same as that ``Conv`` with
those pads (ONNX ``Conv`` takes separate begin and end pads), so the Pad goes into the Conv's ``pads`` attribute
and the constant chain that fed it is dropped. The graph's output is bit for bit the same
(Testing/test_onnx_graph.py).

Written here, not taken from a library: onnxoptimizer's ``fuse_pad_into_conv`` needs the pads as an initializer
(not a chain of nodes) and would add a compiled dependency for one rewrite; the constants are evaluated with ONNX's
own reference evaluator, so this needs nothing beyond ``onnx``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Dict, List, Set

import numpy as np

if TYPE_CHECKING:
    import onnx


def _constant_ancestry(name: str, producers: Dict[str, "onnx.NodeProto"], initializers: Set[str],
                       graph_inputs: Set[str]):
    """The nodes that compute tensor ``name`` when it depends on initializers and constants only, else None."""
    nodes, stack, seen = {}, [name], set()
    while stack:
        tensor = stack.pop()
        if not tensor or tensor in seen or tensor in initializers:
            continue
        seen.add(tensor)
        node = producers.get(tensor)
        if tensor in graph_inputs or node is None:
            return None
        nodes[id(node)] = node
        stack.extend(node.input)
    return nodes


def _evaluate(model: "onnx.ModelProto", names: List[str], nodes) -> Dict[str, np.ndarray]:
    """Values of the constant tensors ``names``, computed by ``nodes`` (a constant sub-graph of ``model``)."""
    from onnx import helper
    from onnx.reference import ReferenceEvaluator

    graph = model.graph
    wanted = {id(n) for n in nodes}
    ordered = [n for n in graph.node if id(n) in wanted]  # the graph's own order is topological
    used = {i for n in ordered for i in n.input}
    sub = helper.make_graph(ordered, "constants", [], [helper.make_empty_tensor_value_info(n) for n in names],
                            [i for i in graph.initializer if i.name in used])
    sub_model = helper.make_model(sub, opset_imports=model.opset_import, ir_version=model.ir_version)
    return dict(zip(names, ReferenceEvaluator(sub_model).run(None, {})))


def fold_pads_into_convs(model: "onnx.ModelProto") -> int:
    """Fold every zero ``Pad`` of the spatial axes whose only user is a ``Conv`` into that Conv; return how many.

    Changes ``model`` in place. Pads of other modes, other fill values, the batch or channel axes, negative pads,
    pads whose amounts depend on the input, and Pads feeding anything but one Conv are left as they are."""
    from onnx import helper

    graph = model.graph
    producers = {output: node for node in graph.node for output in node.output}
    users: Dict[str, list] = {}
    for node in graph.node:
        for tensor in node.input:
            users.setdefault(tensor, []).append(node)
    initializers = {i.name for i in graph.initializer}
    graph_inputs = {i.name for i in graph.input} - initializers
    graph_outputs = {o.name for o in graph.output}

    candidates, chains = [], {}
    for pad in (n for n in graph.node if n.op_type == "Pad"):
        mode = next((helper.get_attribute_value(a) for a in pad.attribute if a.name == "mode"), b"constant")
        after = users.get(pad.output[0], [])
        if (mode != b"constant" or len(pad.input) < 2 or (len(pad.input) > 3 and pad.input[3])  # < 2: opset < 11
                or pad.output[0] in graph_outputs
                or len(after) != 1 or after[0].op_type != "Conv" or after[0].input[0] != pad.output[0]):
            continue
        conv_attributes = {a.name: helper.get_attribute_value(a) for a in after[0].attribute}
        if conv_attributes.get("auto_pad", b"NOTSET") not in (b"NOTSET", b""):
            continue
        constants = [t for t in pad.input[1:3] if t]
        ancestry = [_constant_ancestry(t, producers, initializers, graph_inputs) for t in constants]
        if any(a is None for a in ancestry):
            continue
        for names_nodes in ancestry:
            chains.update(names_nodes)
        candidates.append((pad, after[0], constants))
    if not candidates:
        return 0

    names = sorted({t for _, _, constants in candidates for t in constants})
    stored = {i.name: i for i in graph.initializer}
    values = {t: _initializer(stored[t]) for t in names if t in stored}
    computed = [t for t in names if t not in initializers]
    if computed:
        values.update(_evaluate(model, computed, chains.values()))

    folded = 0
    for pad, conv, _ in candidates:
        amounts = [int(v) for v in np.asarray(values[pad.input[1]]).ravel()]
        fill = values[pad.input[2]] if len(pad.input) > 2 and pad.input[2] else 0
        if (len(amounts) != 8 or any(amounts[i] for i in (0, 1, 4, 5)) or min(amounts) < 0
                or np.any(np.asarray(fill) != 0)):
            continue
        existing = next((a for a in conv.attribute if a.name == "pads"), None)
        before = list(helper.get_attribute_value(existing)) if existing is not None else [0, 0, 0, 0]
        if existing is not None:
            conv.attribute.remove(existing)
        # ONNX Pad: [n, c, h, w begins, n, c, h, w ends]; Conv: [h begin, w begin, h end, w end]
        conv.attribute.append(helper.make_attribute(
            "pads", [before[0] + amounts[2], before[1] + amounts[3], before[2] + amounts[6], before[3] + amounts[7]]))
        conv.input[0] = pad.input[0]
        graph.node.remove(pad)
        folded += 1
    _drop_unused_nodes(graph)
    return folded


def _initializer(tensor) -> np.ndarray:
    from onnx import numpy_helper

    return numpy_helper.to_array(tensor)


def _drop_unused_nodes(graph) -> None:
    """Remove nodes none of whose outputs is used (the constant chains of folded pads), repeatedly, then the
    initializers no node reads any more."""
    outputs = {o.name for o in graph.output}
    while True:
        used = {tensor for node in graph.node for tensor in node.input} | outputs
        unused = [node for node in graph.node if not any(o in used for o in node.output)]
        if not unused:
            break
        for node in unused:
            graph.node.remove(node)
    for tensor in [i for i in graph.initializer if i.name not in used]:
        graph.initializer.remove(tensor)
