"""qcompile's integer graph as a TFLite flatbuffer: the layers' integers exactly as realize rounded them
(GPTQ, bias correction included: the rules record them), qcompile's scales and zero points, NHWC.

The exporter walks the canonical module in binding order beside the plan: every planned op becomes the
TFLite op whose reference kernel computes what the `arithmetic="tflite"` realization computes, so the
TFLite model and the integer Relax module give the same integers. A 4-D tensor is NHWC in TFLite; the
exporter tracks each tensor's layout and transposes only where an op needs the other one (a reshape of
a feature map with more than one pixel and channel)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
from tvm import relax

from qcompile import __version__
from qcompile.errors import UnsupportedModelError
from qcompile.npu.flatbuffer import FlatBufferModel, Quant
from qcompile.npu.float_ops import FLOAT_OPS, TO_NHWC, float_problem
from qcompile.passes.plan import OpPlan, QParams, QuantPlan
from qcompile.passes.rewrite import main_bindings, op_name
from qcompile.passes.rules.shape import PASS_THROUGH

TO_NCHW = (0, 3, 1, 2)  # the inverse of TO_NHWC
_ACTIVATIONS = {None: "NONE", (0.0, np.inf): "RELU", (0.0, 6.0): "RELU6", (-1.0, 1.0): "RELU_N1_TO_1"}


@dataclass(frozen=True)
class _Tensor:
    index: int
    shape: tuple[int, ...]  # as Relax sees it (NCHW for a feature map)
    nhwc: bool  # stored NHWC in the flatbuffer (4-D only)
    qparams: QParams | None  # None: a float32 tensor (a layer the plan keeps float, run by the device's CPU)


@dataclass(frozen=True)
class Exported:
    """The flatbuffer and what the firmware needs to know about its inputs and outputs."""

    flatbuffer: bytes
    inputs: list[dict]
    outputs: list[dict]
    operators: list[dict]  # per TFLite operator: its type and the ONNX layer it comes from


def _shape(expr: relax.Expr) -> tuple[int, ...]:
    try:
        return tuple(int(d) for d in expr.ty.shape)
    except (TypeError, AttributeError) as err:
        raise UnsupportedModelError(f"tensor {expr} has no static shape: the NPU needs fixed shapes") from err


def _stored_shape(shape: tuple[int, ...], nhwc: bool) -> tuple[int, ...]:
    """A tensor's shape in the flatbuffer: NCHW feature maps stored NHWC."""
    return tuple(shape[i] for i in TO_NHWC) if nhwc else shape


def _quant(qp: QParams) -> Quant:
    return Quant((qp.scale,), (qp.zero_point,))


class _Writer:
    def __init__(self, plan: QuantPlan, qparams: Mapping[str, QParams], records: Mapping[str, dict], layer_of):
        self.fb = FlatBufferModel(f"qcompile {__version__}")
        self.plan, self.qparams, self.records, self.layer_of = plan, qparams, records, layer_of
        self.tensors: dict[str, _Tensor] = {}  # a Relax var's integer tensor
        self.floats: dict[str, _Tensor] = {}  # a Relax var's float32 tensor
        self.operators: list[dict] = []

    # -- tensors and layouts ------------------------------------------------------------------------
    def qp(self, var: str) -> QParams:
        return self.qparams[self.plan.site_of(var)]

    def new(self, name: str, shape: tuple[int, ...], qp: QParams | None, nhwc: bool) -> _Tensor:
        stored = _stored_shape(shape, nhwc)
        if qp is None:
            return _Tensor(self.fb.tensor(name, stored, "float32"), shape, nhwc, None)
        return _Tensor(self.fb.tensor(name, stored, qp.dtype, _quant(qp)), shape, nhwc, qp)

    @staticmethod
    def shape(expr: relax.Expr) -> tuple[int, ...]:
        return _shape(expr)

    def integer(self, var: str) -> _Tensor:
        """`var`'s integer tensor; a QUANTIZE of its float one where a float op produced it."""
        if var not in self.tensors:
            t = self.floats[var]
            out = self.new(f"{var}_q", t.shape, self.qp(var), t.nhwc)
            self.op("QUANTIZE", [t.index], [out.index], None)
            self.tensors[var] = out
        return self.tensors[var]

    def real(self, var: str) -> _Tensor:
        """`var`'s float tensor; a DEQUANTIZE of its integer one where an integer op produced it."""
        if var not in self.floats:
            t = self.tensors[var]
            out = self.new(f"{var}_f", t.shape, None, t.nhwc)
            self.op("DEQUANTIZE", [t.index], [out.index], None, version=2)
            self.floats[var] = out
        return self.floats[var]

    def op(self, kind: str, inputs: list[int], outputs: list[int], layer: str | None, options=None, version=1):
        self.fb.operator(kind, inputs, outputs, options, version)
        self.operators.append({"op": kind, "layer": layer})

    def layout(self, t: _Tensor, nhwc: bool, name: str) -> _Tensor:
        """`t` stored in the other layout: a reshape when the element order is the same (one pixel or one
        channel), a transpose otherwise."""
        if t.nhwc == nhwc or len(t.shape) != 4:
            return t
        out = self.new(f"{name}_{'nhwc' if nhwc else 'nchw'}", t.shape, t.qparams, nhwc)
        self.move(t, out, TO_NHWC if nhwc else TO_NCHW, None)
        return out

    def move(self, t: _Tensor, out: _Tensor, perm: tuple[int, ...], layer: str | None) -> None:
        """Write `t`'s elements into `out` permuted by `perm` (of the stored axes): a reshape when the axes
        that are not 1 keep their order, so no element moves; a transpose otherwise."""
        stored = self.stored(t)
        moving = [i for i in perm if stored[i] != 1]
        if moving == sorted(moving):
            self.reshape(t, out, layer)
            return
        perm_t = self.fb.tensor(f"perm_{out.index}", [len(perm)], "int32", data=np.array(perm, np.int32))
        self.op("TRANSPOSE", [t.index, perm_t], [out.index], layer, version=2)

    def reshape(self, t: _Tensor, out: _Tensor, layer: str | None) -> None:
        target = np.array(self.stored(out), np.int32)
        shape_t = self.fb.tensor(f"shape_{out.index}", [len(target)], "int32", data=target)
        self.op("RESHAPE", [t.index, shape_t], [out.index], layer)

    @staticmethod
    def stored(t: _Tensor) -> tuple[int, ...]:
        return _stored_shape(t.shape, t.nhwc)

    def activation(self, op: OpPlan) -> int:
        name = _ACTIVATIONS.get(None if op.clamp is None else tuple(float(v) for v in op.clamp))
        if name is None:
            raise UnsupportedModelError(f"layer {op.layer or op.var}: clamp {op.clamp} is no TFLite activation")
        return getattr(self.fb.s.ActivationFunctionType, name)

    # -- ops ------------------------------------------------------------------------------------------
    def output(self, op: OpPlan, binding: relax.VarBinding, nhwc: bool) -> _Tensor:
        # named by its ONNX layer (as Vela's per-layer report shows it); bias and clamp keep the shape
        out = self.new(op.layer or op.output, _shape(binding.var), self.qp(op.output), nhwc)
        self.tensors[op.output] = out
        return out

    def conv2d(self, binding: relax.VarBinding, op: OpPlan) -> None:
        call, rec, layer = binding.value, self.records[op.var], op.layer
        attrs = call.attrs
        x = self.layout(self.integer(op.inputs[0]), True, op.inputs[0])
        wq, w_scale = rec["weight"], np.broadcast_to(rec["weight_scale"], (rec["weight"].shape[0],))
        cout, cin_per_group, kh, kw = wq.shape
        groups, cin = int(attrs.groups), x.shape[1]
        depthwise = groups == cin and cin_per_group == 1 and groups > 1
        if groups != 1 and not depthwise:
            raise UnsupportedModelError(f"layer {layer}: grouped convolution ({groups} groups) has no TFLite op")
        strides = [int(v) for v in attrs.strides]
        dilation = [int(v) for v in attrs.dilation]
        padding = self.padding(x, [int(v) for v in attrs.padding], (kh, kw), strides, dilation, layer)
        if padding is None:  # explicit padding TFLite's SAME does not produce: a PAD op (with the zero point)
            x = self.pad(x, [int(v) for v in attrs.padding], layer)
            padding = self.fb.s.Padding.VALID
        in_scale = rec["input"].scale
        w_axis = 3 if depthwise else 0
        stored = wq.transpose(1, 2, 3, 0) if depthwise else wq.transpose(0, 2, 3, 1)  # 1HWO / OHWI
        zeros = (0,) * cout
        w = self.fb.tensor(f"{layer}.weight", stored.shape, "int8", Quant(tuple(w_scale), zeros, w_axis), stored)
        b_quant = Quant(tuple(in_scale * w_scale), zeros, 0)
        b = self.fb.tensor(f"{layer}.bias", [cout], "int32", b_quant, np.asarray(rec["bias"], np.int64))
        out = self.output(op, binding, True)
        self.conv(
            depthwise, [x.index, w, b], out.index, layer, padding, strides, dilation, cout // cin, self.activation(op)
        )

    def conv(self, depthwise, inputs, out, layer, padding, strides, dilation, multiplier, activation=0) -> None:
        """A CONV_2D or DEPTHWISE_CONV_2D operator (int8 ones are version 3, float ones version 1)."""
        geometry = dict(
            padding=padding,
            strideH=strides[0],
            strideW=strides[1],
            dilationHFactor=dilation[0],
            dilationWFactor=dilation[1],
            fusedActivationFunction=activation,
        )
        version = 3 if self.fb.tensors[inputs[0]].type != 0 else 1  # 0: float32
        if depthwise:
            options = self.fb.options("DepthwiseConv2DOptions", depthMultiplier=multiplier, **geometry)
            self.op("DEPTHWISE_CONV_2D", inputs, [out], layer, options, version)
        else:
            self.op("CONV_2D", inputs, [out], layer, self.fb.options("Conv2DOptions", **geometry), version)

    def padding(self, x: _Tensor, pads: list[int], kernel, strides, dilation, layer) -> int | None:
        """TFLite's VALID or SAME when the explicit pads (top, left, bottom, right) are what they mean."""
        if not any(pads):
            return self.fb.s.Padding.VALID
        same = []
        for size, k, s, d in zip(x.shape[2:], kernel, strides, dilation, strict=True):
            out = -(-size // s)
            total = max((out - 1) * s + (k - 1) * d + 1 - size, 0)
            same.append((total // 2, total - total // 2))
        if [pads[0], pads[2]] == list(same[0]) and [pads[1], pads[3]] == list(same[1]):
            return self.fb.s.Padding.SAME
        return None

    def pad(self, x: _Tensor, pads: list[int], layer) -> _Tensor:
        top, left, bottom, right = pads
        n, c, h, w = x.shape
        amounts = np.array([[0, 0], [top, bottom], [left, right], [0, 0]], np.int32)
        paddings = self.fb.tensor(f"{layer}.pad", amounts.shape, "int32", data=amounts)
        out = self.new(f"{layer}.padded", (n, c, h + top + bottom, w + left + right), x.qparams, True)
        self.op("PAD", [x.index, paddings], [out.index], layer, version=2)
        return out

    def matmul(self, binding: relax.VarBinding, op: OpPlan) -> None:
        rec, layer = self.records[op.var], op.layer
        x = self.layout(self.integer(op.inputs[0]), False, op.inputs[0])
        if len(x.shape) != 2:
            raise UnsupportedModelError(f"layer {layer}: a matmul on a {len(x.shape)}-D input (the NPU takes 2-D)")
        wq = np.asarray(rec["weight"]).T  # [K, N] -> TFLite's [N, K]
        cout = wq.shape[0]
        w_scale = np.broadcast_to(rec["weight_scale"], (cout,))
        zeros = (0,) * cout
        w = self.fb.tensor(f"{layer}.weight", wq.shape, "int8", Quant(tuple(w_scale), zeros, 0), wq)
        b_quant = Quant(tuple(rec["input"].scale * w_scale), zeros, 0)
        b = self.fb.tensor(f"{layer}.bias", [cout], "int32", b_quant, np.asarray(rec["bias"], np.int64))
        out = self.output(op, binding, False)
        options = self.fb.options("FullyConnectedOptions", fusedActivationFunction=self.activation(op))
        self.op("FULLY_CONNECTED", [x.index, w, b], [out.index], layer, options, version=5)

    def binary(self, binding: relax.VarBinding, op: OpPlan) -> None:
        a, b = (self.integer(name) for name in op.inputs)
        nhwc = a.nhwc and b.nhwc if len(a.shape) == 4 else False
        a, b = self.layout(a, nhwc, op.inputs[0]), self.layout(b, nhwc, op.inputs[1])
        out = self.output(op, binding, nhwc)
        kind = "ADD" if op.rule == "relax.add" else "MUL"
        options = self.fb.options(f"{kind.title()}Options", fusedActivationFunction=self.activation(op))
        self.op(kind, [a.index, b.index], [out.index], self.layer_of.get(op.var), options, version=2)

    def pool(self, binding: relax.VarBinding, op: OpPlan) -> None:
        call, layer = binding.value, self.layer_of.get(op.var, op.var)
        x = self.layout(self.integer(op.inputs[0]), True, op.inputs[0])
        attrs = call.attrs
        if op.rule == "relax.mean":
            axes = sorted(int(a) % len(x.shape) for a in attrs.axis)
            if len(x.shape) != 4 or axes != [2, 3]:
                raise UnsupportedModelError(f"{layer}: a mean over axes {axes} (the NPU averages pixels only)")
            kernel, strides, pads, kind = x.shape[2:], (1, 1), [0, 0, 0, 0], "AVERAGE_POOL_2D"
        else:
            if attrs.ceil_mode or any(int(d) != 1 for d in attrs.dilation):
                raise UnsupportedModelError(f"{layer}: pooling with ceil_mode or dilation has no TFLite op")
            kernel = tuple(int(k) for k in attrs.pool_size)
            strides, pads = [int(v) for v in attrs.strides], [int(v) for v in attrs.padding]
            kind = "MAX_POOL_2D" if op.rule == "relax.nn.max_pool2d" else "AVERAGE_POOL_2D"
            if kind == "AVERAGE_POOL_2D" and any(pads):
                raise UnsupportedModelError(f"{layer}: a padded average pool counts its padding; TFLite's does not")
        padding = self.padding(x, pads, kernel, strides, (1, 1), layer)
        if padding is None:
            raise UnsupportedModelError(f"{layer}: pooling pads {pads} are neither TFLite's SAME nor VALID")
        pooled_shape = (*x.shape[:2], 1, 1) if op.rule == "relax.mean" else _shape(binding.var)
        pooled = self.new(f"{op.var}_pool", pooled_shape, x.qparams, True)
        options = self.fb.options(
            "Pool2DOptions",
            padding=padding,
            strideH=strides[0],
            strideW=strides[1],
            filterHeight=kernel[0],
            filterWidth=kernel[1],
        )
        self.op(kind, [x.index], [pooled.index], layer, options, version=2)
        if pooled_shape == _shape(binding.var):
            self.tensors[op.output] = pooled
        else:  # a mean without keepdims: [N, C, 1, 1] -> [N, C]
            out = self.new(op.output, _shape(binding.var), x.qparams, False)
            self.reshape(pooled, out, layer)
            self.tensors[op.output] = out

    def data_movement(self, binding: relax.VarBinding, op: OpPlan) -> None:
        x = self.layout(self.integer(op.inputs[0]), False, op.inputs[0])
        shape = _shape(binding.var)
        out = self.new(op.output, shape, x.qparams, False)
        if op.rule == "relax.permute_dims":
            axes = binding.value.attrs.axes
            perm = tuple(int(a) for a in axes) if axes is not None else tuple(reversed(range(len(x.shape))))
            self.move(x, out, perm, self.layer_of.get(op.var))
        elif op.rule == "relax.strided_slice":
            raise UnsupportedModelError(f"{op.var}: strided slices are not exported to the NPU yet")
        else:
            self.reshape(x, out, self.layer_of.get(op.var))
        self.tensors[op.output] = out

    def clamp(self, binding: relax.VarBinding, op: OpPlan) -> None:
        from qcompile.passes.rules.chain import activation_bounds

        x = self.integer(op.inputs[0])
        bounds = tuple(float(v) for v in activation_bounds(binding.value))
        kind = {(0.0, np.inf): "RELU", (0.0, 6.0): "RELU6", (-1.0, 1.0): "RELU_N1_TO_1"}.get(bounds)
        if kind is None:
            raise UnsupportedModelError(f"{op.var}: clip to {bounds} has no TFLite op")
        out = self.new(op.output, x.shape, x.qparams, x.nhwc)
        self.op(kind, [x.index], [out.index], self.layer_of.get(op.var), version=2)
        self.tensors[op.output] = out


_HANDLERS = {
    "relax.nn.conv2d": _Writer.conv2d,
    "relax.matmul": _Writer.matmul,
    "relax.add": _Writer.binary,
    "relax.multiply": _Writer.binary,
    "relax.nn.max_pool2d": _Writer.pool,
    "relax.nn.avg_pool2d": _Writer.pool,
    "relax.mean": _Writer.pool,
    "relax.nn.relu": _Writer.clamp,
    "relax.nn.relu6": _Writer.clamp,
    "relax.clip": _Writer.clamp,
    **dict.fromkeys(PASS_THROUGH, _Writer.data_movement),
}


def unsupported_ops(mod, plan: QuantPlan, layer_of: Mapping[str, str]) -> list[str]:
    """Every binding the TFLite graph cannot hold, with the reason (float ops, ops with no TFLite form)."""
    anchors = {op.var: op for op in plan.ops}
    fused = {v for op in plan.ops for v in op.fused}
    found = []
    for b in main_bindings(mod["main"]):
        name = b.var.name
        if name in fused or isinstance(b.value, relax.Var):  # fused into a layer, or a plain alias
            continue
        op = anchors.get(name)
        where = layer_of.get(name, name)
        if op is None:
            problem = float_problem(b)
            if problem is not None:
                kind = (op_name(b.value) or type(b.value).__name__).removeprefix("relax.")
                found.append(f"{where} ({kind}, float): {problem}")
        elif op.rule not in _HANDLERS:
            found.append(f"{where} ({op.rule.removeprefix('relax.')}): no TFLite integer op")
    return found


def export_tflite(
    mod,
    plan: QuantPlan,
    qparams: Mapping[str, QParams],
    records: Mapping[str, dict],
    layer_of: Mapping[str, str],
    output_names: tuple[str, ...] = (),
) -> Exported:
    """The canonical module `mod` realized by `plan` (with `records` from that realization) as TFLite;
    its outputs take `output_names` (the ONNX model's)."""
    missing = unsupported_ops(mod, plan, layer_of)
    if missing:
        more = f" (and {len(missing) - 3} more)" if len(missing) > 3 else ""
        raise UnsupportedModelError(f"no TFLite form for {'; '.join(missing[:3])}{more}")
    smoothed = sorted(site for site, qp in qparams.items() if qp.divisor is not None)
    if smoothed:
        raise UnsupportedModelError(
            f"tensor {smoothed[0]} is smoothed (SmoothQuant): TFLite has no per-channel divisors"
        )
    func = mod["main"]
    w = _Writer(plan, qparams, records, layer_of)
    inputs = []
    for param in func.params:
        shape = _shape(param)
        integer = plan.site_of(param.name) in qparams  # else a float layer reads it first: a float input
        t = w.new(param.name, shape, w.qp(param.name) if integer else None, len(shape) == 4)
        (w.tensors if integer else w.floats)[param.name] = t
        inputs.append(t)
    anchors = {op.var: op for op in plan.ops}
    fused = {v for op in plan.ops for v in op.fused}
    for b in main_bindings(func):
        op = anchors.get(b.var.name)
        if op is not None:
            _HANDLERS[op.rule](w, b, op)
        elif isinstance(b.value, relax.Var):
            for table in (w.tensors, w.floats):
                if b.value.name in table:
                    table[b.var.name] = table[b.value.name]
        elif b.var.name not in fused:
            FLOAT_OPS[op_name(b.value)](w, b)
    body = func.body.body
    results = list(body.fields) if isinstance(body, relax.Tuple) else [body]
    outputs = [w.layout(w.tensors.get(r.name) or w.floats[r.name], False, r.name) for r in results]
    for t, name in zip(outputs, output_names, strict=False):
        w.fb.tensors[t.index].name = name
    flatbuffer = w.fb.finish([t.index for t in inputs], [t.index for t in outputs])
    return Exported(flatbuffer, [_io(w, t) for t in inputs], [_io(w, t) for t in outputs], w.operators)


def _io(w: _Writer, t: _Tensor) -> dict:
    """An input's or output's description for firmware (float32 ones have no scale or zero point)."""
    qp = t.qparams
    return {
        "name": w.fb.tensors[t.index].name,
        "shape": list(w.stored(t)),
        "layout": "NHWC" if t.nhwc else "as the ONNX model",
        "dtype": qp.dtype if qp is not None else "float32",
        "scale": qp.scale if qp is not None else None,
        "zero_point": qp.zero_point if qp is not None else None,
    }
