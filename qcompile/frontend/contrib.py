"""onnxruntime's float `com.microsoft` operators, written as the standard ONNX they compute.

A model saved after onnxruntime's extended graph optimizations (`optimized_model_filepath`; many shipped
transformer ONNX files are) carries fused operators of onnxruntime's own domain that TVM's frontend does
not import. Those with a plain definition are rewritten here, exactly, before anything else reads the
graph:

- `FusedMatMul(A, B; alpha, transA, transB)` = alpha * (A or A^T) @ (B or B^T), the transposes over the
  last two axes (the attention's Q @ K^T * scale);
- `SkipLayerNormalization(x, skip, gamma[, beta[, bias]]; epsilon)` = LayerNormalization(x + skip
  [+ bias], gamma, beta) over the last axis; its optional fourth output is that sum;
- `Gelu(x)` = x / 2 * (1 + erf(x / sqrt 2)), `BiasGelu(x, b)` = Gelu(x + b), and `FastGelu(x[, b])` =
  y / 2 * (1 + tanh(sqrt(2 / pi) * (y + 0.044715 y^3))) with y = x [+ b].

Anything else of theirs (a batch transpose, the mean and variance outputs) stays an error naming the
node. The integer forms of the dynamic chain are `qcompile.frontend.qoperator`'s."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import helper

from qcompile.errors import UnsupportedModelError
from qcompile.frontend.graph import NewNames

MS = "com.microsoft"
MIN_OPSET = 17  # LayerNormalization


def _attrs(node: onnx.NodeProto) -> dict:
    return {a.name: helper.get_attribute_value(a) for a in node.attribute}


def _where(node: onnx.NodeProto) -> str:
    return f"{node.op_type} {node.name or node.output[0]!r}"


def _last_two_swapped(w: NewNames, node: onnx.NodeProto, value: str, rank: int | None, tag: str):
    if rank is None or rank < 2:
        raise UnsupportedModelError(f"{_where(node)}: a transposed operand of unknown rank")
    out = w.fresh(f"{value}_{tag}T")
    perm = [*range(rank - 2), rank - 1, rank - 2]
    return out, helper.make_node("Transpose", [value], [out], perm=perm, name=f"{node.name}/{tag}T")


def _fused_matmul(w: NewNames, node: onnx.NodeProto, ranks: dict[str, int]) -> list[onnx.NodeProto]:
    attrs = _attrs(node)
    if attrs.get("transBatchA", 0) or attrs.get("transBatchB", 0):
        raise UnsupportedModelError(f"{_where(node)}: transBatchA / transBatchB are not supported")
    a, b = node.input[0], node.input[1]
    nodes = []
    if attrs.get("transA", 0):
        a, t = _last_two_swapped(w, node, a, ranks.get(a), "a")
        nodes.append(t)
    if attrs.get("transB", 0):
        b, t = _last_two_swapped(w, node, b, ranks.get(b), "b")
        nodes.append(t)
    alpha = float(attrs.get("alpha", 1.0))
    product = node.output[0] if alpha == 1.0 else w.fresh(f"{node.output[0]}_matmul")
    nodes.append(helper.make_node("MatMul", [a, b], [product], name=node.name))
    if alpha != 1.0:
        scale = w.const(f"{node.name}_alpha", np.float32(alpha))
        nodes.append(helper.make_node("Mul", [product, scale], [node.output[0]], name=f"{node.name}/alpha"))
    return nodes


def _skip_layer_norm(w: NewNames, node: onnx.NodeProto, used: set[str]) -> list[onnx.NodeProto]:
    outputs = list(node.output) + [""] * 4
    if any(o and o in used for o in outputs[1:3]):
        raise UnsupportedModelError(f"{_where(node)}: its mean / inverse-variance outputs are not supported")
    args = list(node.input) + [""] * 5
    x, skip, gamma, beta, bias = args[:5]
    total = outputs[3] if outputs[3] else w.fresh(f"{outputs[0]}_sum")
    nodes = []
    if bias:
        partial = w.fresh(f"{outputs[0]}_skip")
        nodes.append(helper.make_node("Add", [x, skip], [partial], name=f"{node.name}/skip"))
        nodes.append(helper.make_node("Add", [partial, bias], [total], name=f"{node.name}/bias"))
    else:
        nodes.append(helper.make_node("Add", [x, skip], [total], name=f"{node.name}/skip"))
    epsilon = float(_attrs(node).get("epsilon", 1e-12))
    norm_inputs = [total, gamma, *([beta] if beta else [])]
    nodes.append(
        helper.make_node("LayerNormalization", norm_inputs, [outputs[0]], axis=-1, epsilon=epsilon, name=node.name)
    )
    return nodes


def _gelu(w: NewNames, node: onnx.NodeProto) -> list[onnx.NodeProto]:
    x, out, tag = node.input[0], node.output[0], node.name or node.output[0]
    nodes = []
    if len(node.input) > 1 and node.input[1]:
        y = w.fresh(f"{out}_biased")
        nodes.append(helper.make_node("Add", [x, node.input[1]], [y], name=f"{tag}/bias"))
        x = y

    def op(kind: str, *args: str) -> str:
        result = w.fresh(f"{out}_{kind.lower()}")
        nodes.append(helper.make_node(kind, list(args), [result], name=f"{tag}/{kind.lower()}_{len(nodes)}"))
        return result

    if node.op_type == "FastGelu":
        cube = op("Mul", op("Mul", x, x), x)
        inner = op("Add", x, op("Mul", cube, w.const(f"{tag}_c", np.float32(0.044715))))
        curve = op("Tanh", op("Mul", inner, w.const(f"{tag}_k", np.float32(np.sqrt(2 / np.pi)))))
    else:
        curve = op("Erf", op("Mul", x, w.const(f"{tag}_r", np.float32(1 / np.sqrt(2)))))
    half = op("Mul", x, w.const(f"{tag}_half", np.float32(0.5)))
    nodes.append(
        helper.make_node("Mul", [half, op("Add", curve, w.const(f"{tag}_one", np.float32(1)))], [out], name=tag)
    )
    return nodes


GELUS = ("Gelu", "BiasGelu", "FastGelu")


def _ranks(model: onnx.ModelProto) -> dict[str, int]:
    """Each value's rank, from ONNX shape inference (only a transposed FusedMatMul operand needs one)."""
    inferred = onnx.shape_inference.infer_shapes(model, strict_mode=False).graph
    ranks = {}
    for v in [*inferred.value_info, *inferred.input, *inferred.output]:
        if v.type.tensor_type.HasField("shape"):
            ranks[v.name] = len(v.type.tensor_type.shape.dim)
    for init in model.graph.initializer:
        ranks[init.name] = len(init.dims)
    return ranks


def decompose_contrib(model: onnx.ModelProto) -> list[str]:
    """Rewrite (in place) the float com.microsoft operators above; returns the rewritten nodes' names."""
    graph = model.graph
    handled = ("FusedMatMul", "SkipLayerNormalization", *GELUS)
    targets = [n for n in graph.node if n.domain == MS and n.op_type in handled]
    if not targets:
        return []
    standard = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)
    norms = [n for n in targets if n.op_type == "SkipLayerNormalization"]
    if norms and standard < MIN_OPSET:
        raise UnsupportedModelError(
            f"{_where(norms[0])}: its rewriting needs ONNX opset >= {MIN_OPSET} (LayerNormalization), the "
            f"model has {standard}; convert the model's opset first"
        )
    transposing = any(
        _attrs(n).get("transA", 0) or _attrs(n).get("transB", 0) for n in targets if n.op_type == "FusedMatMul"
    )
    ranks = _ranks(model) if transposing else {}
    used = {i for n in graph.node for i in n.input} | {o.name for o in graph.output}
    w = NewNames(graph)
    nodes, done = [], []
    rewrite = {id(n) for n in targets}
    for node in graph.node:
        if id(node) in rewrite:
            if node.op_type == "FusedMatMul":
                rewritten = _fused_matmul(w, node, ranks)
            elif node.op_type == "SkipLayerNormalization":
                rewritten = _skip_layer_norm(w, node, used)
            else:
                rewritten = _gelu(w, node)
            nodes += rewritten
            done.append(node.name or node.output[0])
        else:
            nodes.append(node)
    del graph.node[:]
    graph.node.extend(nodes)
    graph.initializer.extend(w.inits)
    return done
