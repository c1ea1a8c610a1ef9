"""Graph rewrites before static INT8 quantization: equal outputs, faster int8 under ORT.

Measured on the digits example (1x12x12, conv 32 -> max pool -> conv 32 -> flatten -> dense,
batch 256, 2 threads, images/s against fp32): plain QDQ 0.65x -- the 1-channel stem conv took
5x longer in int8 than in float, and ORT transposed the int8 activations to NHWC and back
around the one quantized conv; with the stem in float 1.2x; with both rewrites 1.57x.

Why by hand: ORT's quantizer offers ``nodes_to_exclude`` but no layout rewrites; these two are
small, local, and checked for equal outputs by tests/compiler/test_int8_graph.py.
"""

from __future__ import annotations

import numpy as np

# A convolution whose dot products are this short (input channels x kernel area) stays in
# float: int8 kernels pack the reduction axis in groups and requantize every output, so a
# 1-channel 3x3 stem (length 9) ran 5x slower in int8 than in float on the digits model.
MIN_INT8_REDUCTION = 32


def prepare_for_int8(model) -> list[str]:
    """Rewrite ``model`` (an ``onnx.ModelProto`` after ``quant_pre_process``) in place.

    Returns:
        the names of the nodes to keep in float (``quantize_static``'s ``nodes_to_exclude``).
    """
    keep = float_stem(model)
    channels_last_flatten(model)
    _topological_sort(model.graph)
    return keep


def _consumers(model) -> dict[str, list]:
    out: dict[str, list] = {}
    for node in model.graph.node:
        for name in node.input:
            out.setdefault(name, []).append(node)
    return out


def float_stem(model) -> list[str]:
    """Keep short convolutions in float; rewrites ``model`` in place and returns the nodes to exclude.

    A Conv whose reduction length (input channels x kernel area) is under ``MIN_INT8_REDUCTION``
    stays in float, with the Relu/MaxPool after it. ``Relu -> MaxPool`` becomes ``MaxPool -> Relu``
    there (equal: max commutes with a non-decreasing function): with the Relu last, ORT's QDQ
    propagation cannot pull the next layer's QuantizeLinear above the pool, and the pool runs in
    float on the convolution's blocked layout instead of as a slow uint8 NCHW pool.
    """
    shapes = {i.name: i.dims for i in model.graph.initializer}
    consumers = _consumers(model)

    outputs = {o.name for o in model.graph.output}

    def only(node):
        """The single node reading ``node``'s output (not a graph output), or None."""
        users = consumers.get(node.output[0], [])
        return users[0] if len(users) == 1 and node.output[0] not in outputs else None

    keep = []
    for conv in model.graph.node:
        dims = shapes.get(conv.input[1]) if conv.op_type == "Conv" and len(conv.input) > 1 else None
        if dims is None or len(dims) < 3 or int(np.prod(dims[1:])) >= MIN_INT8_REDUCTION:
            continue
        keep.append(conv.name)
        act = only(conv)
        if act is None or act.op_type not in ("Relu", "Clip"):
            continue
        keep.append(act.name)
        pool = only(act)
        if pool is None or pool.op_type != "MaxPool" or len(pool.output) != 1:
            continue
        keep.append(pool.name)
        # conv -> act -> pool -> out   becomes   conv -> pool -> act -> out
        out, mid = pool.output[0], act.output[0]
        pool.input[0], pool.output[0] = conv.output[0], mid
        act.input[0], act.output[0] = mid, out
        stale = [v for v in model.graph.value_info if v.name == mid]  # it was the pool's input shape
        for v in stale:
            model.graph.value_info.remove(v)
    return keep


def channels_last_flatten(model) -> None:
    """Flatten before a dense layer in (H, W, C) order, with the dense weights permuted to match.

    Equal outputs. Why: ORT runs int8 convolutions channels-last and transposes back to NCHW
    before a Reshape; with an explicit NCHW->NHWC Transpose in front of the Reshape, the two
    transposes cancel, and a layout change that cost as much as the int8 convolution saved goes.
    """
    from onnx import helper, numpy_helper

    inits = {i.name: i for i in model.graph.initializer}
    shapes = {v.name: [d.dim_value for d in v.type.tensor_type.shape.dim] for v in model.graph.value_info}
    consumers = _consumers(model)
    outputs = {o.name for o in model.graph.output}
    for node in list(model.graph.node):
        dims = shapes.get(node.input[0]) if node.op_type == "Reshape" and node.output[0] not in outputs else None
        users = consumers.get(node.output[0], []) if dims else []
        if not dims or len(dims) != 4 or 0 in dims[1:] or dims[2] * dims[3] == 1 or len(users) != 1:
            continue
        gemm, (c, h, w) = users[0], dims[1:]
        target = inits.get(node.input[1])
        attrs = {a.name: helper.get_attribute_value(a) for a in gemm.attribute}
        if (
            gemm.op_type != "Gemm"
            or attrs.get("transB") != 1
            or attrs.get("transA", 0) != 0
            or target is None
            or numpy_helper.to_array(target).tolist() != [-1, c * h * w]
            or gemm.input[1] not in inits
            or len(consumers[gemm.input[1]]) != 1
        ):
            continue
        weight = numpy_helper.to_array(inits[gemm.input[1]])
        permuted = weight.reshape(-1, c, h, w).transpose(0, 2, 3, 1).reshape(weight.shape)
        inits[gemm.input[1]].CopyFrom(numpy_helper.from_array(np.ascontiguousarray(permuted), gemm.input[1]))
        nhwc = node.input[0] + "_nhwc"
        model.graph.node.append(
            helper.make_node("Transpose", [node.input[0]], [nhwc], perm=[0, 2, 3, 1], name=node.name + "_nhwc")
        )
        node.input[0] = nhwc


def _topological_sort(graph) -> None:
    """Reorder ``graph.node`` so that every node comes after the nodes it reads from.

    Why by hand: onnx has no sort for a GraphProto, and the rewrites above only move a few nodes.
    """
    ready = {i.name for i in graph.input} | {i.name for i in graph.initializer} | {""}
    pending, ordered = list(graph.node), []
    while pending:
        rest = [n for n in pending if not all(i in ready for i in n.input)]
        done = [n for n in pending if all(i in ready for i in n.input)]
        if not done:
            raise ValueError("graph has a cycle")
        for n in done:
            ordered.append(n)
            ready.update(n.output)
        pending = rest
    copies = [type(n)() for n in ordered]
    for c, n in zip(copies, ordered):
        c.CopyFrom(n)
    del graph.node[:]
    graph.node.extend(copies)
