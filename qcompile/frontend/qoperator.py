"""Pre-quantized models in QOperator form, rewritten to the QDQ form `qcompile.frontend.qdq` reads.

onnxruntime's `quantize_static(quant_format=QOperator)`, and many int8 models shipped as ONNX, compute with
integer operators that carry their scales as inputs: `QLinearConv`, `QLinearMatMul`, and onnxruntime's
`com.microsoft` `QGemm`, `QLinearAdd`, `QLinearMul`, `QLinearGlobalAveragePool`, `QLinearAveragePool`,
`QLinearConcat`, `QLinearSigmoid`, `QLinearLeakyRelu`; between them, shape and pooling ops (MaxPool,
Reshape, Flatten, ...) run on the integer tensors directly. TVM's ONNX frontend imports none of the
QLinear operators.

Each such operator says exactly what it computes: dequantize its inputs, run the float operator, quantize
the result with the output's scale. This pass writes it that way, as standard ONNX: DequantizeLinear of
every integer input (weights and int32 biases included, the bias at scale input_scale * weight_scale),
the float operator under the QLinear node's own name, QuantizeLinear of the output. An op that only
moves or selects integer values (MaxPool, Reshape, ...) commutes with dequantization, so it becomes
DequantizeLinear -> op -> QuantizeLinear at its input's scale, exactly. The result is a QDQ graph with
the same scales and integer weights, which the QDQ pass then reads like any other. An integer operator
this pass does not know stays an error naming the node, never a silently different model.

Dynamic quantization (onnxruntime's `quantize_dynamic`) computes activation scales at run time:
`DynamicQuantizeLinear(x) -> MatMulInteger / ConvInteger(x_q, W_q) -> Cast -> Mul(x_scale * W_scale)`.
That chain is x @ dequantize(W_q) with x quantized on the fly, so it becomes the float MatMul / Conv of
x and `DequantizeLinear(W_q)` (the layer keeps the model's integer weights and their scales), and the
layer is listed as dynamic: its input is quantized at run time by qcompile's own dynamic path. A model
saved after onnxruntime's graph optimizations carries the fused forms of the chain:
`com.microsoft.DynamicQuantizeMatMul(x, W_q, W_scale, W_zero, bias)` and
`MatMulIntegerToFloat(x_q, W_q, x_scale, W_scale, x_zero, W_zero, bias)` on a DynamicQuantizeLinear's
outputs; each becomes the same float MatMul (plus the bias), one dynamic layer.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import helper

from qcompile.errors import UnsupportedModelError
from qcompile.frontend.graph import NewNames, graph_constants, producers_and_readers

MS = "com.microsoft"
# Ops that move, select or reorder values: on integer tensors they commute with dequantization (a max of
# dequantized values is the dequantized max), so their output keeps the input's scale and zero point.
VALUE_PRESERVING = ("MaxPool", "Reshape", "Flatten", "Transpose", "Squeeze", "Unsqueeze", "Identity")
VALUE_PRESERVING += ("Slice", "Gather", "Expand", "Tile", "SpaceToDepth", "DepthToSpace")
# onnxruntime's dynamic quantization: scales computed at run time, which the QDQ reading cannot take.
DYNAMIC = ("DynamicQuantizeLinear", "ConvInteger", "MatMulInteger")
# ... and the fused forms of those chains that onnxruntime's graph optimizer writes into a saved model
FUSED_DYNAMIC = ("DynamicQuantizeMatMul", "MatMulIntegerToFloat")
DYNAMIC += FUSED_DYNAMIC


def _name(node: onnx.NodeProto) -> str:
    return node.name or node.output[0]


def _float_op(node: onnx.NodeProto) -> tuple[str, list[int], list[onnx.AttributeProto], int | None] | None:
    """For a QLinear operator: (float op, indices of its (value, scale, zero point) input triples, the
    attributes the float op keeps, index of the output's scale or None for a float output). None when
    `node` is not one."""
    op, domain = node.op_type, node.domain
    attrs = list(node.attribute)
    if domain in ("", "ai.onnx"):
        if op == "QLinearConv":
            return "Conv", [0, 3], attrs, 6
        if op == "QLinearMatMul":
            return "MatMul", [0, 3], attrs, 6
        return None
    if domain != MS:
        return None
    if op == "QGemm":
        return "Gemm", [0, 3], attrs, 7
    if op in ("QLinearAdd", "QLinearMul"):
        return op[len("QLinear") :], [0, 3], attrs, 6
    if op in ("QLinearSigmoid", "QLinearLeakyRelu", "QLinearAveragePool", "QLinearGlobalAveragePool"):
        if op == "QLinearGlobalAveragePool" or op == "QLinearAveragePool":
            if any(a.name == "channels_last" and a.i for a in attrs):
                raise UnsupportedModelError(f"{op} {_name(node)!r}: channels_last pooling is not supported")
            attrs = [a for a in attrs if a.name != "channels_last"]
        return op[len("QLinear") :], [0], attrs, 3
    if op == "QLinearConcat":  # Y_scale, Y_zero_point, then (X, X_scale, X_zero_point) per input
        return "Concat", list(range(2, len(node.input), 3)), attrs, 0
    return None


def is_qoperator(graph: onnx.GraphProto) -> bool:
    return any(_float_op(n) is not None or n.op_type in DYNAMIC for n in graph.node)


class _Rewriter(NewNames):
    def __init__(self, graph: onnx.GraphProto) -> None:
        super().__init__(graph)
        self.graph = graph
        self.consts = graph_constants(graph)
        self.nodes: list[onnx.NodeProto] = []
        self.quant: dict[str, tuple[str, str]] = {}  # integer tensor -> (scale, zero point) names

    def const(self, base: str, value: np.ndarray) -> str:
        name = super().const(base, value)
        self.consts[name] = value
        return name

    def dequantize(self, value: str, scale: str, zero_point: str, where: str, axis: int | None = None) -> str:
        out = self.fresh(f"{value}_dq")
        inputs = [value, scale] + ([zero_point] if zero_point else [])
        extra = {"axis": axis} if axis is not None else {}
        name = f"{where}/dq_{len(self.nodes)}"
        self.nodes.append(helper.make_node("DequantizeLinear", inputs, [out], name=name, **extra))
        return out

    def quantize(self, value: str, scale: str, zero_point: str, out: str, where: str) -> None:
        inputs = [value, scale] + ([zero_point] if zero_point else [])
        self.nodes.append(helper.make_node("QuantizeLinear", inputs, [out], name=f"{where}/q"))
        self.quant[out] = (scale, zero_point)

    def weight_axis(self, node: onnx.NodeProto, scale: str, weight: str) -> int | None:
        """The axis a per-channel weight scale runs along (the layer's output channels), None per tensor."""
        s = self.consts.get(scale)
        if s is None or np.asarray(s).size <= 1:
            return None
        w = self.consts.get(weight)
        if w is None:
            raise UnsupportedModelError(f"{node.op_type} {_name(node)!r}: a per-channel scale on a computed weight")
        if node.op_type == "QLinearConv":
            return 0
        if node.op_type == "QGemm":
            return 0 if any(a.name == "transB" and a.i for a in node.attribute) else 1
        if node.op_type == "QLinearMatMul":
            return np.asarray(w).ndim - 1  # per column of b
        raise UnsupportedModelError(f"{node.op_type} {_name(node)!r}: per-channel scales on its second input")

    def rewrite(self, node: onnx.NodeProto) -> bool:
        """Append `node`'s rewriting; True when it was an integer operator."""
        spec = _float_op(node)
        where = _name(node)
        if spec is None:
            if node.op_type in DYNAMIC:  # one _dynamic_layers did not take
                raise UnsupportedModelError(
                    f"{node.op_type} {where!r}: its run-time scales feed something other than the integer "
                    "matmul / conv chain onnxruntime's quantize_dynamic writes; not supported"
                )
            ints = [i for i in node.input if i in self.quant]
            if ints and node.op_type in VALUE_PRESERVING and node.domain in ("", "ai.onnx") and len(node.output) == 1:
                scale, zp = self.quant[ints[0]]
                renamed = onnx.NodeProto()
                renamed.CopyFrom(node)
                renamed.input[0] = self.dequantize(node.input[0], scale, zp, where)
                flowing = self.fresh(f"{node.output[0]}_f")
                renamed.output[0] = flowing
                self.nodes.append(renamed)
                self.quantize(flowing, scale, zp, node.output[0], where)
                return True
            if ints and node.op_type not in ("DequantizeLinear",):
                raise UnsupportedModelError(
                    f"{node.op_type} {where!r} reads the integer tensor {ints[0]!r}: not supported on quantized values"
                )
            self.nodes.append(node)
            if node.op_type == "QuantizeLinear" and len(node.input) >= 2:
                self.quant[node.output[0]] = (node.input[1], node.input[2] if len(node.input) > 2 else "")
            return False
        op, triples, attrs, out_scale = spec
        params = [i + k for i in triples for k in (1, 2)]
        params += [out_scale, out_scale + 1] if out_scale is not None else []
        for index in params:
            if len(node.input) > index and node.input[index] and node.input[index] not in self.consts:
                raise UnsupportedModelError(
                    f"{node.op_type} {where!r}: its scale or zero point {node.input[index]!r} is computed at run time"
                )
        floats = []
        for index in triples:
            value, scale, zp = node.input[index], node.input[index + 1], node.input[index + 2]
            axis = self.weight_axis(node, scale, value) if index == 3 else None
            floats.append(self.dequantize(value, scale, zp, where, axis))
        bias_at = {"QLinearConv": 8, "QGemm": 6}.get(node.op_type)
        if bias_at is not None and len(node.input) > bias_at and node.input[bias_at]:
            floats.append(self.bias(node, node.input[bias_at], where))
        if op == "Gemm" and any(a.name == "alpha" and abs(a.f - 1.0) > 0 for a in attrs):
            raise UnsupportedModelError(f"QGemm {where!r}: alpha other than 1 is not supported")
        output = node.output[0]
        has_out = out_scale is not None and len(node.input) > out_scale and node.input[out_scale]
        flowing = self.fresh(f"{output}_f") if has_out else output
        self.nodes.append(helper.make_node(op, floats, [flowing], name=where))
        self.nodes[-1].attribute.extend(attrs)
        if has_out:
            zp = node.input[out_scale + 1] if len(node.input) > out_scale + 1 else ""
            self.quantize(flowing, node.input[out_scale], zp, output, where)
        return True

    def bias(self, node: onnx.NodeProto, bias: str, where: str) -> str:
        """An int32 bias at scale input_scale x weight_scale (per channel), zero point 0, dequantized."""
        if bias not in self.consts:
            raise UnsupportedModelError(f"{node.op_type} {where!r}: its bias is computed at run time")
        x_scale = np.asarray(self.consts[node.input[1]], np.float32).reshape(-1)
        w_scale = np.asarray(self.consts[node.input[4]], np.float32).reshape(-1)
        scale = (x_scale * w_scale).astype(np.float32)
        name = self.const(f"{bias}_scale", scale if scale.size > 1 else scale.reshape(()))
        return self.dequantize(bias, name, "", where, 0 if scale.size > 1 else None)


def _weight_dequantize(layer: str, weight: str, scale: str, zero: str, axis: int | None, k: int):
    """The DequantizeLinear of a dynamic layer's integer weight (per `axis` when its scale is a vector),
    and the float weight's name."""
    w_float = f"{weight}_dq_{k}"
    extra = {"axis": axis} if axis is not None else {}
    dq = helper.make_node("DequantizeLinear", [weight, scale, *([zero] if zero else [])], [w_float], **extra)
    dq.name = f"{layer}/dq_weight"
    return dq, w_float


def _drop_unread_quantizers(graph: onnx.GraphProto) -> None:
    """Remove (in place) the scale products, then the DynamicQuantizeLinears, that nothing reads any more."""
    kept = list(graph.node)
    outputs = {o.name for o in graph.output}
    while True:
        used = {i for n in kept for i in n.input} | outputs
        live = [n for n in kept if n.op_type not in ("Mul", "DynamicQuantizeLinear") or set(n.output) & used]
        if len(live) == len(kept):
            break
        kept = live
    if len(kept) != len(graph.node):
        del graph.node[:]
        graph.node.extend(kept)


def _fused_dynamic_layers(graph: onnx.GraphProto) -> list[str]:
    """Rewrite (in place) each DynamicQuantizeMatMul / MatMulIntegerToFloat to MatMul(x,
    DequantizeLinear(W_q)) [+ bias] (module docstring); returns the layers' names."""
    consts = graph_constants(graph)
    producer, _ = producers_and_readers(graph)
    nodes, layers = [], []
    for node in graph.node:
        if node.op_type not in FUSED_DYNAMIC or node.domain != MS:
            nodes.append(node)
            continue
        where = f"{node.op_type} {_name(node)!r}"
        args = list(node.input) + [""] * 7
        if node.op_type == "DynamicQuantizeMatMul":
            x, weight, w_scale, w_zero, bias = args[:5]
        else:
            x_q, weight, x_scale, w_scale, x_zero, w_zero, bias = args[:7]
            quant = producer.get(x_q)
            if (
                quant is None
                or quant.op_type != "DynamicQuantizeLinear"
                or list(quant.output[1:3]) != [x_scale, x_zero]
            ):
                raise UnsupportedModelError(
                    f"{where}: its input is not quantized by a DynamicQuantizeLinear whose scale and zero point "
                    "it reads; other integer-accumulator graphs are not supported"
                )
            x = quant.input[0]
        if weight not in consts or w_scale not in consts or (w_zero and w_zero not in consts):
            raise UnsupportedModelError(f"{where}: its weight, scale and zero point must be constants")
        axis = np.asarray(consts[weight]).ndim - 1 if np.asarray(consts[w_scale]).size > 1 else None
        dq, w_float = _weight_dequantize(_name(node), weight, w_scale, w_zero, axis, len(layers))
        out = node.output[0]
        product = f"{out}_matmul" if bias else out
        layer = helper.make_node("MatMul", [x, w_float], [product], name=_name(node))
        nodes += [dq, layer]
        if bias:
            nodes.append(helper.make_node("Add", [product, bias], [out], name=f"{_name(node)}/bias"))
        layers.append(layer.name)
    if layers:
        del graph.node[:]
        graph.node.extend(nodes)
    return layers


def _dynamic_layers(graph: onnx.GraphProto) -> list[str]:
    """Rewrite (in place) each DynamicQuantizeLinear -> MatMulInteger / ConvInteger -> Cast -> Mul chain
    to the float layer on DequantizeLinear(W_q) (module docstring), and their fused forms
    (`_fused_dynamic_layers`); returns the layers' names."""
    fused = _fused_dynamic_layers(graph)
    layers = fused + _unfused_dynamic_layers(graph, len(fused))
    if layers:
        _drop_unread_quantizers(graph)
    return layers


def _unfused_dynamic_layers(graph: onnx.GraphProto, first: int) -> list[str]:
    """The chains' rewriting (`first`: the index the float weights' names start at)."""
    consts = graph_constants(graph)
    producer, readers = producers_and_readers(graph)

    def only_reader(name: str, op: str) -> onnx.NodeProto | None:
        found = readers.get(name, [])
        return found[0] if len(found) == 1 and found[0].op_type == op and name not in outputs else None

    outputs = {o.name for o in graph.output}
    drop: set[int] = set()
    replaced: dict[int, list[onnx.NodeProto]] = {}
    index = {id(n): k for k, n in enumerate(graph.node)}
    layers = []
    for node in graph.node:
        if node.op_type not in ("MatMulInteger", "ConvInteger"):
            continue
        where = f"{node.op_type} {_name(node)!r}"
        quant = producer.get(node.input[0])
        cast = only_reader(node.output[0], "Cast")
        mul = only_reader(cast.output[0], "Mul") if cast is not None else None
        scale = None
        if mul is not None:
            scale = producer.get(mul.input[1] if mul.input[0] == cast.output[0] else mul.input[0])
        pattern = (
            quant is not None
            and quant.op_type == "DynamicQuantizeLinear"
            and node.input[1] in consts
            and (len(node.input) < 3 or not node.input[2] or node.input[2] == quant.output[2])
            and (len(node.input) < 4 or not node.input[3] or node.input[3] in consts)
            and any(a.name == "to" and a.i == onnx.TensorProto.FLOAT for a in cast.attribute)
            and scale is not None
            and scale.op_type == "Mul"
            and quant.output[1] in scale.input
        )
        w_scale = [i for i in scale.input if i != quant.output[1]] if pattern else []
        if not pattern or len(w_scale) != 1 or w_scale[0] not in consts:
            raise UnsupportedModelError(
                f"{where}: not the DynamicQuantizeLinear -> {node.op_type} -> Cast -> Mul(x_scale * w_scale) "
                "chain onnxruntime's quantize_dynamic writes; other integer-accumulator graphs are not supported"
            )
        sizes = np.asarray(consts[w_scale[0]]).size
        weight = np.asarray(consts[node.input[1]])
        axis = None if sizes <= 1 else (0 if node.op_type == "ConvInteger" else weight.ndim - 1)
        zero = node.input[3] if len(node.input) > 3 else ""
        dq, w_float = _weight_dequantize(_name(node), node.input[1], w_scale[0], zero, axis, first + len(layers))
        layer = helper.make_node(node.op_type[: -len("Integer")], [quant.input[0], w_float], [mul.output[0]])
        layer.name = _name(node)
        layer.attribute.extend(node.attribute)
        replaced[index[id(node)]] = [dq, layer]
        drop |= {index[id(cast)], index[id(mul)]}
        layers.append(layer.name)
    if not layers:
        return []
    kept = [new for k, n in enumerate(graph.node) if k not in drop for new in replaced.get(k, [n])]
    del graph.node[:]
    graph.node.extend(kept)
    return layers


def _gathered_constants(graph: onnx.GraphProto) -> int:
    """DequantizeLinear(Gather(W_q, ids)) -> Gather(DequantizeLinear(W_q), ids), in place, for an integer
    constant W_q with one scale (quantized embedding tables): then the dequantized table is a constant
    the QDQ pass turns into floats. Returns how many."""
    consts = graph_constants(graph)
    producer = {o: n for n in graph.node for o in n.output}
    moved = 0
    for node in graph.node:
        gather = producer.get(node.input[0]) if node.op_type == "DequantizeLinear" else None
        if gather is None or gather.op_type != "Gather" or gather.input[0] not in consts:
            continue
        if any(np.asarray(consts[i]).size > 1 for i in node.input[1:] if i):
            raise UnsupportedModelError(f"DequantizeLinear {_name(node)!r}: per-axis scales on a gathered table")
        table, gathered = f"{gather.input[0]}_dq", node.output[0]
        node.input[0], node.output[0] = gather.input[0], table
        gather.input[0], gather.output[0] = table, gathered
        moved += 1
    if moved:  # each DequantizeLinear now runs before its Gather
        order = sorted(range(len(graph.node)), key=lambda k: _swapped_rank(graph.node, k))
        nodes = [graph.node[k] for k in order]
        del graph.node[:]
        graph.node.extend(nodes)
    return moved


def _swapped_rank(nodes, k: int) -> tuple[int, int]:
    """Sort key putting a DequantizeLinear just before the Gather that now reads it."""
    node = nodes[k]
    if node.op_type == "DequantizeLinear":
        for j, other in enumerate(nodes):
            if other.op_type == "Gather" and other.input[0] == node.output[0]:
                return (j, 0)
    return (k, 1)


def qoperator_to_qdq(model: onnx.ModelProto) -> tuple[int, list[str]]:
    """Rewrite `model`'s QOperator nodes (in place) to DequantizeLinear -> float op -> QuantizeLinear,
    and its dynamic-quantization chains to float layers on dequantized weights. Returns how many integer
    operators were rewritten (0: nothing changed) and the dynamic layers among them."""
    graph = model.graph
    gathered = _gathered_constants(graph)
    if not is_qoperator(graph):
        return gathered, []
    dynamic = _dynamic_layers(graph)
    rewriter = _Rewriter(graph)
    count = sum(rewriter.rewrite(node) for node in list(graph.node))
    del graph.node[:]
    graph.node.extend(rewriter.nodes)
    graph.initializer.extend(rewriter.inits)
    return count + len(dynamic) + gathered, dynamic
