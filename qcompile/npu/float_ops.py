"""The layers a plan keeps float, as float32 TFLite operators: Vela leaves them to the device's CPU
(TensorFlow Lite Micro), and the exporter puts a DEQUANTIZE / QUANTIZE wherever they meet integer ops.

Float kernels differ from TVM's in the last bits, so outputs behind a float layer are close to, not
identical with, qcompile's library (verify reports by how much). Elementwise ops compute in the layout
their operands share (NHWC when every tensor operand is a feature map stored so, and every constant is a
4-D tensor or a scalar); otherwise the operands go back to the ONNX model's layout first."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from tvm import relax

from qcompile.passes.rewrite import const_value, is_const, op_name

TO_NHWC = (0, 2, 3, 1)  # NCHW -> NHWC, the flatbuffer's layout of feature maps
_UNARY = {
    "relax.sigmoid": "LOGISTIC",
    "relax.tanh": "TANH",
    "relax.exp": "EXP",
    "relax.sqrt": "SQRT",
    "relax.negative": "NEG",
    "relax.nn.relu": "RELU",
    "relax.nn.relu6": "RELU6",
}
_BINARY = {"relax.add": "ADD", "relax.subtract": "SUB", "relax.multiply": "MUL", "relax.divide": "DIV"}
_RESHAPES = ("relax.reshape", "relax.flatten", "relax.squeeze", "relax.expand_dims", "relax.nn.batch_flatten")


def _layer(w, b: relax.VarBinding) -> str:
    return w.layer_of.get(b.var.name, b.var.name)


def _const_tensor(w, value: np.ndarray, nhwc: bool, name: str) -> int:
    value = np.asarray(value, np.float32)
    if nhwc and value.ndim == 4:
        value = value.transpose(TO_NHWC)
    return w.fb.tensor(name, value.shape, "float32", data=value)


def _out(w, b: relax.VarBinding, nhwc: bool):
    t = w.new(_layer(w, b), w.shape(b.var), None, nhwc)
    w.floats[b.var.name] = t
    return t


def _unary(w, b: relax.VarBinding) -> None:
    x = w.real(b.value.args[0].name)
    out = _out(w, b, x.nhwc)
    w.op(_UNARY[op_name(b.value)], [x.index], [out.index], w.layer_of.get(b.var.name))


def _clip(w, b: relax.VarBinding) -> None:
    from qcompile.passes.rules.chain import activation_bounds

    x = w.real(b.value.args[0].name)
    lo, hi = activation_bounds(b.value)
    current = x
    for kind, bound in (("MAXIMUM", lo), ("MINIMUM", hi)):
        if np.isfinite(bound):
            out = w.new(f"{b.var.name}_{kind.lower()}", x.shape, None, x.nhwc)
            c = w.fb.tensor(f"{b.var.name}_{kind.lower()}_bound", [], "float32", data=np.float32(float(bound)))
            w.op(kind, [current.index, c], [out.index], w.layer_of.get(b.var.name))
            current = out
    w.floats[b.var.name] = current


def _binary(w, b: relax.VarBinding) -> None:
    args = list(b.value.args)
    tensors = [w.real(a.name) for a in args if not is_const(a)]
    consts = [const_value(a) for a in args if is_const(a)]
    nhwc = all(t.nhwc for t in tensors) and all(np.ndim(c) in (0, 4) or np.size(c) == 1 for c in consts)
    inputs = []
    for i, a in enumerate(args):
        if is_const(a):
            value = const_value(a)
            value = value.reshape(()) if np.size(value) == 1 else value
            inputs.append(_const_tensor(w, value, nhwc, f"{b.var.name}_c{i}"))
        else:
            inputs.append(w.layout(w.real(a.name), nhwc, a.name).index)
    out = _out(w, b, nhwc and len(w.shape(b.var)) == 4)
    w.op(_BINARY[op_name(b.value)], inputs, [out.index], w.layer_of.get(b.var.name), version=1)


def _softmax(w, b: relax.VarBinding) -> None:
    x = w.real(b.value.args[0].name)
    axis = int(b.value.attrs.axis) % len(x.shape)
    if not (axis == len(x.shape) - 1 and not x.nhwc) and not (x.nhwc and axis == 1):
        x = w.layout(x, False, b.value.args[0].name)
    out = _out(w, b, x.nhwc)
    w.op("SOFTMAX", [x.index], [out.index], w.layer_of.get(b.var.name), w.fb.options("SoftmaxOptions", beta=1.0))


def _reshape(w, b: relax.VarBinding) -> None:
    x = w.layout(w.real(b.value.args[0].name), False, b.value.args[0].name)
    out = _out(w, b, False)
    w.reshape(x, out, w.layer_of.get(b.var.name))


def _linear(w, b: relax.VarBinding) -> None:
    """A layer kept float: CONV_2D / DEPTHWISE_CONV_2D / FULLY_CONNECTED on float32 weights."""
    call, layer = b.value, _layer(w, b)
    weight = const_value(call.args[1]).astype(np.float32)
    if op_name(call) == "relax.matmul":
        x = w.layout(w.real(call.args[0].name), False, call.args[0].name)
        wt = w.fb.tensor(f"{layer}.weight", weight.T.shape, "float32", data=weight.T)
        bias = w.fb.tensor(f"{layer}.bias", [weight.shape[1]], "float32", data=np.zeros(weight.shape[1], np.float32))
        out = _out(w, b, False)
        w.op("FULLY_CONNECTED", [x.index, wt, bias], [out.index], layer, w.fb.options("FullyConnectedOptions"), 1)
        return
    attrs = call.attrs
    x = w.layout(w.real(call.args[0].name), True, call.args[0].name)
    cout, cin_per_group, kh, kw = weight.shape
    depthwise = int(attrs.groups) == x.shape[1] and cin_per_group == 1 and int(attrs.groups) > 1
    strides, dilation = [int(v) for v in attrs.strides], [int(v) for v in attrs.dilation]
    pads = [int(v) for v in attrs.padding]
    padding = w.padding(x, pads, (kh, kw), strides, dilation, layer)
    if padding is None:
        x = w.pad(x, pads, layer)
        padding = w.fb.s.Padding.VALID
    stored = weight.transpose(1, 2, 3, 0) if depthwise else weight.transpose(0, 2, 3, 1)
    wt = w.fb.tensor(f"{layer}.weight", stored.shape, "float32", data=stored)
    bias = w.fb.tensor(f"{layer}.bias", [cout], "float32", data=np.zeros(cout, np.float32))
    out = _out(w, b, True)
    w.conv(depthwise, [x.index, wt, bias], out.index, layer, padding, strides, dilation, cout // x.shape[1])


def _mean(w, b: relax.VarBinding) -> None:
    x = w.real(b.value.args[0].name)
    axes = sorted(int(a) % len(x.shape) for a in b.value.attrs.axis)
    keep = bool(b.value.attrs.keepdims)
    if x.nhwc and not keep:
        x = w.layout(x, False, b.value.args[0].name)
    stored_axes = [TO_NHWC.index(a) for a in axes] if x.nhwc else axes
    axes_t = w.fb.tensor(f"{b.var.name}_axes", [len(axes)], "int32", data=np.array(stored_axes, np.int32))
    out = _out(w, b, x.nhwc and keep)
    w.op(
        "MEAN",
        [x.index, axes_t],
        [out.index],
        w.layer_of.get(b.var.name),
        w.fb.options("ReducerOptions", keepDims=keep),
    )


FLOAT_OPS: dict[str, Callable] = {
    **dict.fromkeys(_UNARY, _unary),
    **dict.fromkeys(_BINARY, _binary),
    **dict.fromkeys(_RESHAPES, _reshape),
    "relax.clip": _clip,
    "relax.nn.softmax": _softmax,
    "relax.nn.conv2d": _linear,
    "relax.matmul": _linear,
    "relax.mean": _mean,
}


def float_problem(b: relax.VarBinding) -> str | None:
    """Why this float binding has no TFLite float form (None: it has one)."""
    name = op_name(b.value)
    if name not in FLOAT_OPS:
        return "no TFLite float operator for it yet"
    call = b.value
    if name in _BINARY and all(is_const(a) for a in call.args):
        return "an operation on constants only"
    if name in ("relax.nn.conv2d", "relax.matmul") and not is_const(call.args[1]):
        return "a product of two activations"
    if name == "relax.nn.conv2d":
        groups, cin = int(call.attrs.groups), int(call.args[0].ty.shape[1])
        if groups != 1 and not (groups == cin and int(const_value(call.args[1]).shape[1]) == 1):
            return "a grouped convolution"
    if name == "relax.matmul" and (len(call.args[0].ty.shape) != 2 or const_value(call.args[1]).ndim != 2):
        return "a matmul beyond 2-D x 2-D"
    return None
