"""Pre-quantized models (QDQ): read the graph's own scales, and hand every later stage the float graph.

A QDQ model (onnxruntime's `quantize_static`, PyTorch / NNCF / ModelOpt QAT exports) marks each tensor it
quantizes with a QuantizeLinear -> DequantizeLinear pair, and stores its weights as integers behind a
DequantizeLinear. TVM's ONNX frontend would run those pairs as float math, and qcompile would then
quantize again on top. Instead this pass, run on the ONNX graph before folding:

- turns every DequantizeLinear of a constant (weights, biases) into the float initializer it computes,
  remembering each conv / matmul layer's per-channel weight scales;
- removes every QuantizeLinear -> DequantizeLinear pair on an activation, remembering its scale and
  zero point under the name of the float tensor that now flows in its place. Where the pair's range
  starts at exactly 0 (zero point = the type's minimum) it clamps to [0, its top level], and onnxruntime's
  quantizer relies on that instead of a Relu or a Clip(0, 6) it removed: the float graph gets that clamp
  back as a Clip.

The stripped graph is what qcompile compiles and what `verify` runs as the float reference. The
recorded scales become the sites' quantization parameters (`qcompile.calibration.graph`), so the
trained scales are kept, not recalibrated.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import onnx

from qcompile.errors import UnsupportedModelError
from qcompile.frontend.graph import graph_constants, producers_and_readers, rename_inputs, tensor

QDQ_OPS = ("QuantizeLinear", "DequantizeLinear")
INT_RANGES = {"uint8": (0, 255), "int8": (-128, 127), "uint16": (0, 65535), "int16": (-32768, 32767)}
INT_RANGES["int32"] = (-(2**31), 2**31 - 1)  # biases: dequantized to float, never an activation type
WEIGHT_INPUT = {"Conv": 1, "Gemm": 1, "MatMul": 1}  # the input that holds a layer's weight


@dataclass(frozen=True)
class GraphScale:
    """One activation's quantization as the graph states it: real = scale * (q - zero_point)."""

    scale: float
    zero_point: int
    dtype: str

    def to_json(self) -> dict:
        return {"scale": self.scale, "zero_point": self.zero_point, "dtype": self.dtype}


@dataclass(frozen=True)
class GraphQuant:
    """What a QDQ graph says: activation scales by float tensor name (in the stripped graph), weight
    scales per layer (ONNX node name) along its output channels, and how much was stripped."""

    activations: dict[str, GraphScale]
    weights: dict[str, tuple[float, ...]]
    weight_dtypes: dict[str, str] = field(default_factory=dict)
    pairs: int = 0  # activation Q -> DQ pairs removed
    constants: int = 0  # DequantizeLinear of constants turned into float initializers
    clamps: int = 0  # Clips put back where a pair's range started at 0
    qoperators: int = 0  # integer operators (QLinearConv, ...) first rewritten to Q/DQ (frontend.qoperator)
    dynamic_layers: tuple[str, ...] = ()  # layers the graph quantizes at run time (quantize_dynamic)

    def to_json(self) -> dict:
        return {
            "activation_pairs": self.pairs,
            "dequantized_constants": self.constants,
            "clamps_restored": self.clamps,
            "qoperators_rewritten": self.qoperators,
            "dynamic_layers": list(self.dynamic_layers),
            "activations": {k: v.to_json() for k, v in self.activations.items()},
            "weights": {k: list(v) for k, v in self.weights.items()},
            "weight_dtypes": dict(self.weight_dtypes),
        }


def is_qdq(graph: onnx.GraphProto) -> bool:
    return any(n.op_type in QDQ_OPS and n.domain in ("", "ai.onnx") for n in graph.node)


def _attr(node: onnx.NodeProto, name: str, default: int) -> int:
    return next((a.i for a in node.attribute if a.name == name), default)


def _name(node: onnx.NodeProto) -> str:
    return node.name or node.output[0]


def _params(node: onnx.NodeProto, consts: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray, str, int]:
    """(scale, zero point, integer dtype, axis) of a Q or DQ node, checked: one line naming the node."""
    where = f"{node.op_type} {_name(node)!r}"
    if len(node.input) < 2 or node.input[1] not in consts:
        raise UnsupportedModelError(f"{where}: its scale is computed at run time; only constant scales are supported")
    scale = np.asarray(consts[node.input[1]], np.float64)
    if len(node.input) > 2 and node.input[2]:
        if node.input[2] not in consts:
            raise UnsupportedModelError(f"{where}: its zero point is computed at run time")
        zp = np.asarray(consts[node.input[2]])
    else:
        zp = np.zeros(scale.shape, np.uint8)
    dtype = str(zp.dtype)
    if dtype not in INT_RANGES:
        raise UnsupportedModelError(f"{where}: {dtype} quantization is not supported (int8, uint8, int16, uint16)")
    if dtype == "int32" and node.op_type == "QuantizeLinear":
        raise UnsupportedModelError(f"{where}: int32 activations are not supported")
    if scale.ndim > 1 or (_attr(node, "block_size", 0) and scale.ndim):
        raise UnsupportedModelError(f"{where}: blocked scales are not supported (per-tensor or per-axis only)")
    if not np.all(np.isfinite(scale)) or np.any(scale <= 0):
        raise UnsupportedModelError(f"{where}: scale {scale.ravel()[:4].tolist()} is not positive and finite")
    lo, hi = INT_RANGES[dtype]
    zp = zp.astype(np.int64)
    if zp.shape != scale.shape and zp.size != 1:
        raise UnsupportedModelError(f"{where}: {zp.size} zero points for {scale.size} scales")
    if np.any(zp < lo) or np.any(zp > hi):
        raise UnsupportedModelError(f"{where}: zero point outside the {dtype} range {lo}..{hi}")
    return scale, zp, dtype, _attr(node, "axis", 1)


def _broadcast_shape(node: onnx.NodeProto, scale: np.ndarray, axis: int, value: np.ndarray) -> list[int]:
    """The shape the node's scales broadcast to against `value`: all ones, or -1 along a fitting axis."""
    shape = [1] * value.ndim
    if scale.size > 1:
        axis = axis % max(value.ndim, 1)
        if value.ndim == 0 or value.shape[axis] != scale.size:
            raise UnsupportedModelError(
                f"{node.op_type} {_name(node)!r}: {scale.size} scales along axis {axis} of a {list(value.shape)} tensor"
            )
        shape[axis] = -1
    return shape


def _dequantized(node: onnx.NodeProto, q: np.ndarray, consts: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """The float value of a DequantizeLinear of the constant `q`, and its scales along the axis."""
    scale, zp, _, axis = _params(node, consts)
    shape = _broadcast_shape(node, scale, axis, q)
    real = (q.astype(np.float64) - zp.reshape(shape)) * scale.reshape(shape)
    return real.astype(np.float32), scale


def _quantized(node: onnx.NodeProto, value: np.ndarray, consts: dict[str, np.ndarray]) -> np.ndarray:
    """QuantizeLinear of a constant, as ONNX computes it: round half to even, saturate."""
    scale, zp, dtype, axis = _params(node, consts)
    shape = _broadcast_shape(node, scale, axis, value)
    q = np.rint(value.astype(np.float64) / scale.reshape(shape)) + zp.reshape(shape)
    lo, hi = INT_RANGES[dtype]
    return np.clip(q, lo, hi).astype(dtype)


def strip_qdq(model: onnx.ModelProto) -> GraphQuant | None:
    """Rewrite `model` (in place) to its float graph; None when it holds no Q/DQ (nothing changed)."""
    graph = model.graph
    if not is_qdq(graph):
        return None
    consts = graph_constants(graph)
    producer, readers = producers_and_readers(graph)
    outputs = {o.name for o in graph.output}
    drop: set[int] = set()
    new_inits: list[onnx.TensorProto] = []
    weights: dict[str, tuple[float, ...]] = {}
    weight_dtypes: dict[str, str] = {}
    activations: dict[str, GraphScale] = {}
    rename: dict[str, str] = {}
    pairs = constants = clamps = 0
    extra_nodes: list[tuple[int, onnx.NodeProto]] = []
    for index, node in enumerate(graph.node):
        if node.op_type != "DequantizeLinear" or node.domain not in ("", "ai.onnx"):
            continue
        src = node.input[0]
        quant = producer.get(src)
        stored = consts.get(src)
        if stored is None and quant is not None and quant.op_type == "QuantizeLinear" and quant.input[0] in consts:
            stored = _quantized(quant, np.asarray(consts[quant.input[0]]), consts)  # a float weight behind Q/DQ
        if stored is not None:  # a weight or a bias stored as integers
            real, scale = _dequantized(node, stored, consts)
            new_inits.append(tensor(node.output[0], real))
            drop.add(index)
            constants += 1
            for reader in readers.get(node.output[0], []):
                slot = WEIGHT_INPUT.get(reader.op_type)
                if slot is not None and len(reader.input) > slot and reader.input[slot] == node.output[0]:
                    channels = _out_channels(reader, real)
                    weights[_name(reader)] = tuple(float(s) for s in np.broadcast_to(scale.ravel(), (channels,)))
                    weight_dtypes[_name(reader)] = str(stored.dtype)
            continue
        if quant is None or quant.op_type != "QuantizeLinear":
            raise UnsupportedModelError(
                f"DequantizeLinear {_name(node)!r} reads {src!r}, which no QuantizeLinear produces (an integer "
                "input or a QOperator graph): not supported yet"
            )
        scale, zp, dtype, _ = _params(quant, consts)
        if scale.size != 1:
            raise UnsupportedModelError(f"QuantizeLinear {_name(quant)!r}: per-axis activation scales: not supported")
        d_scale, d_zp, _, _ = _params(node, consts)
        if not (np.allclose(d_scale, scale) and np.array_equal(d_zp.ravel(), zp.ravel())):
            raise UnsupportedModelError(
                f"DequantizeLinear {_name(node)!r}: its scale or zero point differs from its QuantizeLinear's"
            )
        x = quant.input[0]
        z = int(zp.ravel()[0])
        flowing = x
        if z == INT_RANGES[dtype][0] and not _non_negative(x, producer, consts):
            flowing = f"{x}_qdq_clip"  # the pair's range starts at 0: it clamps to [0, top level]
            if not any(n.output[0] == flowing for _, n in extra_nodes):
                top = float(scale.ravel()[0]) * (INT_RANGES[dtype][1] - z)
                bounds = [f"{flowing}_min", f"{flowing}_max"]
                new_inits += [tensor(bounds[0], np.float32(0.0)), tensor(bounds[1], np.float32(top))]
                extra_nodes.append((index, onnx.helper.make_node("Clip", [x, *bounds], [flowing], name=flowing)))
                clamps += 1
        if node.output[0] in outputs:  # keep the model's output name: the float tensor takes it
            extra_nodes.append((index, onnx.helper.make_node("Identity", [flowing], [node.output[0]])))
            flowing = node.output[0]
        else:
            rename[node.output[0]] = flowing
        activations[flowing] = GraphScale(float(scale.ravel()[0]), z, dtype)
        drop.add(index)
        pairs += 1
    position = {id(n): k for k, n in enumerate(graph.node)}
    for index, node in enumerate(graph.node):  # a QuantizeLinear all of whose readers were stripped
        if node.op_type == "QuantizeLinear" and node.output[0] not in outputs:
            if all(position[id(r)] in drop for r in readers.get(node.output[0], [])):
                drop.add(index)
    before: dict[int, list[onnx.NodeProto]] = {}
    for at, extra in extra_nodes:
        before.setdefault(at, []).append(extra)
    kept: list[onnx.NodeProto] = []
    for index, node in enumerate(graph.node):
        kept.extend(before.get(index, []))
        if index not in drop:
            kept.append(node)
    del graph.node[:]
    graph.node.extend(kept)
    final = _resolved(rename)
    rename_inputs(graph, final)
    activations = {final.get(k, k): v for k, v in activations.items()}
    graph.initializer.extend(new_inits)
    _drop_unused_initializers(graph)
    return GraphQuant(activations, weights, weight_dtypes, pairs, constants, clamps)


# ops whose output is non-negative when their (first) input is
_KEEPS_SIGN = ("MaxPool", "AveragePool", "GlobalAveragePool", "GlobalMaxPool", "Flatten", "Reshape", "Transpose")
_KEEPS_SIGN += ("Squeeze", "Unsqueeze", "Identity", "Resize", "Upsample")


def _non_negative(name: str, producer: dict[str, onnx.NodeProto], consts: dict[str, np.ndarray]) -> bool:
    """Whether the graph already guarantees `name` >= 0: a Relu, a pair clamping at 0, a pooling or
    reshape of one of those (then no clamp needs restoring after a pair at 0)."""
    seen = set()
    while name not in seen:
        seen.add(name)
        node = producer.get(name)
        if node is None:
            return False
        if node.op_type == "Relu":
            return True
        if node.op_type == "DequantizeLinear" and node.input[0] in producer:
            quant = producer[node.input[0]]
            if quant.op_type == "QuantizeLinear" and len(quant.input) > 2 and quant.input[2] in consts:
                zp = np.asarray(consts[quant.input[2]])
                return str(zp.dtype) in INT_RANGES and int(zp.ravel()[0]) == INT_RANGES[str(zp.dtype)][0]
            return False
        if node.op_type not in _KEEPS_SIGN:
            return False
        name = node.input[0]
    return False


def _resolved(rename: dict[str, str]) -> dict[str, str]:
    """Follow chains (a pair whose input is itself a stripped pair's output) to the final name."""
    out = {}
    for name in rename:
        target, seen = rename[name], {name}
        while target in rename and target not in seen:
            seen.add(target)
            target = rename[target]
        out[name] = target
    return out


def _out_channels(layer: onnx.NodeProto, weight: np.ndarray) -> int:
    if layer.op_type == "Conv":
        return int(weight.shape[0])
    if layer.op_type == "Gemm" and _attr(layer, "transB", 0):
        return int(weight.shape[0])
    return int(weight.shape[-1])


def _drop_unused_initializers(graph: onnx.GraphProto) -> None:
    used = {i for n in graph.node for i in n.input} | {o.name for o in graph.output}
    keep = [i for i in graph.initializer if i.name in used]
    if len(keep) != len(graph.initializer):
        del graph.initializer[:]
        graph.initializer.extend(keep)
