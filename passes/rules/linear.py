"""conv2d (incl. depthwise and grouped) and matmul/dense/Gemm with constant weights:
int8 per-output-channel symmetric weights x integer activations -> int32 accumulate (int64 for 16-bit
activations), int32 bias with the zero-point correction folded in, fixed-point requantize with the
fused relu/clip as its clamp."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace

import numpy as np
from tvm import relax

from qcompile.calibration.rounding import Geometry
from qcompile.passes.plan import OpPlan, QParams
from qcompile.passes.rewrite import const_value, is_const, op_name
from qcompile.passes.rules import tflite_fixed_point as tflite
from qcompile.passes.rules.activation_matmul import annotate_activation_matmul, realize_activation_matmul
from qcompile.passes.rules.base import AnnotateContext, QTensor, RealizeContext, op_rule
from qcompile.passes.rules.chain import apply_activation, follow_chain
from qcompile.passes.rules.emit import channel_shape, clamp_bounds, int_const, quantize, requantize
from qcompile.passes.rules.fixed_point import bits_needed
from qcompile.passes.rules.weight_levels import levels_of, quantize_levels
from qcompile.passes.scheme import WEIGHT_INT8, QuantSpec, accumulator


def graph_weight(weight: np.ndarray, axis: int, scale: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
    """A pre-quantized model's int8 weights (its float weight is scale x integer, per output channel
    along `axis`), or None when the weight is no longer that (a batch norm folded into it, another
    channel count): it is then quantized like any float weight."""
    if scale.shape != (weight.shape[axis],) or not np.all(scale > 0):
        return None
    shape = [1] * weight.ndim
    shape[axis] = -1
    q = weight.astype(np.float64) / scale.reshape(shape)
    rounded = np.round(q)
    if np.abs(q - rounded).max(initial=0.0) > 1e-3 or rounded.min(initial=0) < -128 or rounded.max(initial=0) > 127:
        return None
    return rounded.astype(np.int8), scale.astype(np.float64)


def graph_integers(
    weight_scales: Mapping[str, np.ndarray],
    layer: str | None,
    weight: np.ndarray,
    axis: int,
    spec: QuantSpec,
    smoothed: bool,
) -> tuple[np.ndarray, np.ndarray] | None:
    """The integers and scales a pre-quantized model gives `layer`'s weight, or None where the build
    quantizes it itself: no scales in the graph, a smoothed input (its divisors change the weight), a
    weight that is no longer scale x integer (graph_weight), or integers the layer's scheme cannot
    hold (a QAT-trained ternary layer's are -1, 0 and 1: kept; int8 ones built as ternary: not).
    Realize and the build's report both ask here."""
    scale = weight_scales.get(layer or "")
    if scale is None or smoothed or spec.granularity != "channel":
        return None
    given = graph_weight(weight, axis, np.asarray(scale, np.float64))
    if given is None or spec.bits == 8 and spec.levels == "uniform":
        return given
    used = np.unique(given[0])
    if spec.levels == "codebook":
        assert spec.codebook_size is not None
        fits = len(used) <= spec.codebook_size
    else:
        fits = bool(np.isin(used, levels_of(spec)).all())
    return given if fits else None


def quantize_weight(
    weight: np.ndarray,
    axis: int,
    min_scale: np.ndarray | float = 0.0,
    spec: QuantSpec = WEIGHT_INT8,
    layer: str = "",
) -> tuple[np.ndarray, np.ndarray]:
    """Symmetric per-channel integers of `spec` along `axis`: (integer weights, per-channel scales).
    Below 8 bits (int4, int2, pow2, ternary, binary, codebook) the scale minimises the squared error
    (weight_levels); int8 takes absmax / 127.

    `min_scale` floors each channel's scale: a dead channel (weights ~0 after batch-norm folding) with
    a real bias would otherwise need a bias of bias / (s_x * s_w) that overflows the accumulator."""
    if not spec.symmetric or spec.granularity != "channel":
        raise ValueError(f"per-channel symmetric weights expected, got {spec}")
    if spec.bits < 8:
        return quantize_levels(weight, axis, spec, min_scale, layer)
    moved = np.moveaxis(weight.astype(np.float64), axis, 0)
    absmax = np.abs(moved.reshape(moved.shape[0], -1)).max(axis=1)
    scale = np.maximum(absmax / spec.qmax, min_scale)
    scale = np.where(scale > 0, scale, 1.0)
    shape = [1] * weight.ndim
    shape[axis] = -1
    q = np.clip(np.round(weight / scale.reshape(shape)), spec.qmin, spec.qmax).astype(spec.storage)
    return q, scale


class _Dynamic:
    """Run-time quantization of a layer's input (ONNX Runtime's quantize_dynamic, per token): the scale is
    max|x| / 127 over each token's row (or the whole tensor for a conv), computed by the library itself.
    Integers are stored as uint8 = q + 128, the operand type of the u8 x s8 dot products; the 128 comes
    back out of the int32 accumulator as 128 * sum(w), and the accumulator is dequantized with the
    per-row scale times the per-channel weight scale."""

    def realize_dynamic(self, ctx: RealizeContext, binding: relax.VarBinding, plan: OpPlan) -> relax.Expr:
        call = binding.value
        spec = ctx.site_spec(call.args[0])
        x = ctx.floated(call.args[0])
        weight = const_value(call.args[1])
        channels = weight.shape[self.weight_axis]
        bias = np.zeros(channels)
        if plan.bias is not None:
            bias = np.broadcast_to(const_value(ctx.binding(plan.bias).value.args[1]).reshape(-1), (channels,))
        w_spec = plan.weight or WEIGHT_INT8
        given = graph_integers(ctx.weight_scales, plan.layer, weight, self.weight_axis, w_spec, False)
        wq, w_scale = given or quantize_weight(weight, self.weight_axis, 0.0, w_spec, plan.layer or "")
        if ctx.rounding is not None and given is None:
            levels = None if w_spec.levels == "uniform" else levels_of(w_spec, wq)
            groups = self.row_groups(call, channels)
            rows = ctx.rounding.round(
                plan.var, self.rows(weight), w_scale, groups, w_spec.qmax, None, w_spec.qmin, levels
            )
            wq = self.from_rows(rows, weight.shape).astype(w_spec.storage)
        ndim = len(call.args[0].ty.shape)
        axes = [ndim - 1] if spec.granularity == "token" else list(range(ndim))
        absmax = ctx.emit(relax.op.max(relax.op.abs(x), axis=axes, keepdims=True))
        scale = ctx.emit(
            relax.op.divide(relax.op.maximum(absmax, relax.const(1e-8, "float32")), relax.const(127.0, "float32"))
        )
        q = ctx.emit(relax.op.clip(relax.op.round(relax.op.divide(x, scale)), -127.0, 127.0))
        q = ctx.emit(relax.op.astype(relax.op.add(q, relax.const(128.0, "float32")), "uint8"))
        x_q = QTensor(q, QParams(1.0, 128, "uint8"))
        acc, out_ndim, axis = self.accumulate(ctx, call, x_q, wq, accumulator(spec, w_spec))
        wsum = wq.astype(np.int64).sum(axis=tuple(i for i in range(wq.ndim) if i != self.weight_axis))
        acc = ctx.emit(relax.op.add(acc, int_const(channel_shape(-128 * wsum, out_ndim, axis), "int32")))
        y = ctx.emit(relax.op.astype(acc, "float32"))
        if spec.granularity == "token" and self.weight_axis == 1:  # the row scales line up with the output rows
            y = ctx.emit(relax.op.multiply(y, scale))
        else:
            y = ctx.emit(relax.op.multiply(y, relax.op.reshape(scale, [1] * out_ndim)))
        w_part = relax.const(channel_shape(w_scale.astype(np.float32), out_ndim, axis), "float32")
        return float_epilogue(ctx, relax.op.multiply(y, w_part), plan, bias, out_ndim, axis)


def float_epilogue(
    ctx: RealizeContext, y: relax.Expr, plan: OpPlan, bias: np.ndarray | None, ndim: int, axis: int
) -> relax.Expr:
    """A layer's float result `y` through its fused bias (per channel along `axis`), clamp and float
    activation; the last op emitted takes the plan's output name."""
    steps = []
    if plan.bias is not None and bias is not None:
        b = relax.const(channel_shape(np.asarray(bias, np.float32), ndim, axis), "float32")
        steps.append(lambda v: relax.op.add(v, b))
    if plan.clamp is not None:
        lo, hi = float(plan.clamp[0]), float(plan.clamp[1])
        steps.append(lambda v: relax.op.clip(v, lo, hi))
    if not steps and plan.activation is None:
        return ctx.emit(y, plan.output)
    y = ctx.emit(y)
    for i, step in enumerate(steps):
        last = i == len(steps) - 1 and plan.activation is None
        y = ctx.emit(step(y), plan.output if last else None)
    if plan.activation is not None:
        y = apply_activation(ctx.bb, y, plan.activation, plan.output)
    return y


def layer_plan(
    binding: relax.VarBinding, rule: str, data: relax.Var, chain, layer: str, weight, float_output
) -> OpPlan:
    """The plan of a weight-bearing layer reading `data`, with the bias/clamp/activation chain after it."""
    return OpPlan(
        var=binding.var.name,
        rule=rule,
        inputs=(data.name,),
        output=chain.output.name,
        layer=layer,
        fused=chain.fused,
        bias=chain.bias,
        clamp=chain.clamp,
        activation=chain.activation,
        weight=weight,
        float_output=float_output,
    )


class LinearRule(_Dynamic):
    """Shared annotate/realize of the two weight-bearing layer ops."""

    weight_axis = 0
    dynamic_granularity = "tensor"  # run-time scales: one per tensor (a conv), one per token (a matmul)
    tflite_rounds_once = False  # TFLite's kernel for this op requantizes with one rounding (tflite_fixed_point)
    takes_two_activations = False  # a matmul: both operands may be activations (attention)

    def channels(self, binding: relax.VarBinding) -> int:
        return int(const_value(binding.value.args[1]).shape[self.weight_axis])

    def supported(self, binding: relax.VarBinding) -> bool:
        return True

    def geometry(self, call) -> Geometry:
        """How the layer reads its input (for the weight-rounding statistics)."""
        raise NotImplementedError

    def rows(self, weight: np.ndarray) -> np.ndarray:
        """The weights as one row per output channel, in the order `geometry().patches` gives inputs."""
        raise NotImplementedError

    def from_rows(self, rows: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
        raise NotImplementedError

    def row_groups(self, call, channels: int) -> np.ndarray:
        """The input group each output channel reads (grouped/depthwise conv); 0 for all otherwise."""
        return np.zeros(channels, dtype=np.int64)

    def smoothed(self, weight: np.ndarray, divisor: np.ndarray) -> np.ndarray:
        """The weights with input channel c multiplied by divisor[c] (the input arrives divided by it)."""
        raise NotImplementedError

    def weight_error_shift(self, call, weight, wq, w_scale, mean: np.ndarray) -> np.ndarray:
        """E[(W - Wq) x] per output channel from the input's calibration mean (bias correction,
        Nagel et al. 2019): the systematic output shift that rounding the weights introduces."""
        raise NotImplementedError

    def annotate(self, ctx: AnnotateContext, binding: relax.VarBinding) -> OpPlan | None:
        data, weight = binding.value.args[0], binding.value.args[1]
        layer = ctx.layer_of.get(binding.var.name, binding.var.name)
        if not is_const(weight) and self.takes_two_activations:
            return annotate_activation_matmul(ctx, binding, layer)
        if not (is_const(weight) and ctx.is_float_tensor(data) and self.supported(binding)):
            ctx.float_layers.append(layer)
            return None
        if layer in ctx.skip:
            ctx.float_layers.append(layer)
            return None
        channels = self.channels(binding)
        epilogue = ctx.arithmetic != "tflite"  # TFLite's kernels have no float epilogue
        chain = follow_chain(ctx, binding.var, bias_ok=lambda a: a.size in (1, channels), float_activation=epilogue)
        act = ctx.layer_act.get(layer, ctx.act)
        if act.dynamic:  # scales from the tensor at run time: float in, float out, nothing to calibrate
            spec = replace(act, granularity=self.dynamic_granularity)
            ctx.sites[data.name] = spec
        else:
            ctx.need_site(data, ctx.layer_act.get(layer))
            ctx.produce(chain.output.name)
        return layer_plan(binding, op_name(binding.value), data, chain, layer, ctx.weight_spec(layer), act.dynamic)

    def realize(self, ctx: RealizeContext, binding: relax.VarBinding, plan: OpPlan) -> QTensor | relax.Expr:
        call = binding.value
        if plan.weight is None:
            return realize_activation_matmul(ctx, binding, plan)
        if ctx.site_spec(call.args[0]).dynamic:
            return self.realize_dynamic(ctx, binding, plan)
        x = ctx.quantized(call.args[0])
        weight = const_value(call.args[1])
        divisor = None if x.qparams.divisor is None else np.asarray(x.qparams.divisor, np.float64)
        if divisor is not None:  # a smoothed input: its channels' divisors move into the weights
            weight = self.smoothed(weight, divisor)
        channels = weight.shape[self.weight_axis]
        bias = np.zeros(channels)
        if plan.bias is not None:
            bias = np.broadcast_to(const_value(ctx.binding(plan.bias).value.args[1]).reshape(-1), (channels,))
        w_spec = plan.weight or WEIGHT_INT8
        acc_dtype = accumulator(ctx.site_spec(call.args[0]), w_spec)
        bias_limit = 2.0**40 if acc_dtype == "int64" else 2.0**29  # headroom for the products' sum
        min_scale = np.abs(bias) / (x.qparams.scale * bias_limit)
        given = graph_integers(ctx.weight_scales, plan.layer, weight, self.weight_axis, w_spec, divisor is not None)
        if given is not None:  # a pre-quantized model's integers and scales, exactly as trained
            wq, w_scale = given
        else:
            wq, w_scale = quantize_weight(weight, self.weight_axis, min_scale, w_spec, plan.layer or "")
        if ctx.rounding is not None and given is None:
            groups = self.row_groups(call, channels)
            taps = self.rows(weight).shape[1] // (len(divisor) if divisor is not None else 1)
            input_scale = None if divisor is None else np.repeat(divisor, taps)
            levels = None if w_spec.levels == "uniform" else levels_of(w_spec, wq)
            rows = ctx.rounding.round(
                plan.var, self.rows(weight), w_scale, groups, w_spec.qmax, input_scale, w_spec.qmin, levels
            )
            wq = self.from_rows(rows, weight.shape).astype(w_spec.storage)
        mean = ctx.input_mean(call.args[0]) if given is None else None
        if mean is not None:
            if divisor is not None:
                mean = mean / divisor  # the smoothed input's mean
            bias = bias + self.weight_error_shift(call, weight, wq, w_scale, mean)
        acc, ndim, axis = self.accumulate(ctx, call, x, wq, acc_dtype)
        acc_scale = x.qparams.scale * w_scale
        bias_q = np.round(bias.astype(np.float64) / acc_scale).astype(np.int64)
        ctx.record(plan.var, weight=wq, weight_scale=np.asarray(w_scale, np.float64), bias=bias_q, input=x.qparams)
        reduce = tuple(i for i in range(wq.ndim) if i != self.weight_axis)  # all but the output channel
        wide = wq.astype(np.int64)
        wsum = wide.sum(axis=reduce)
        total = -x.qparams.zero_point * wsum + bias_q
        if np.any(total != 0):
            acc = ctx.emit(relax.op.add(acc, int_const(channel_shape(total, ndim, axis), acc_dtype)))
        if plan.float_output:
            return _dequantize_accumulator(ctx, acc, acc_scale, ndim, axis, plan)
        out_qp = ctx.qparams(plan.output)
        if plan.activation is not None:  # dequantize, activate in float, quantize once
            y = _dequantize_accumulator(ctx, acc, acc_scale, ndim, axis, plan, f"{plan.output}_f")
            return QTensor(quantize(ctx.bb, y, out_qp, plan.output), out_qp)
        x_span = max(abs(x.qparams.qmin - x.qparams.zero_point), abs(x.qparams.qmax - x.qparams.zero_point))
        w_l1 = np.abs(wide).sum(axis=reduce).max()
        acc_bits = bits_needed(float(x_span) * float(w_l1) + float(np.abs(total).max()))
        if out_qp.divisor is not None:  # a smoothed output site: channel c stored divided by divisor[c]
            acc_scale = acc_scale / np.asarray(out_qp.divisor, np.float64)
        if ctx.arithmetic == "tflite":
            y = tflite.emit_requantize(
                ctx.bb,
                acc,
                x.qparams.scale,
                w_scale,
                out_qp,
                ndim=ndim,
                axis=axis,
                clamp=plan.clamp,
                name=plan.output,
                round_once=self.tflite_rounds_once,
            )
            return QTensor(y, out_qp)
        y = requantize(
            ctx.bb,
            acc,
            acc_scale,
            out_qp,
            acc_bits=acc_bits,
            axis=axis,
            ndim=ndim,
            clamp=clamp_bounds(out_qp, plan.clamp),
            name=plan.output,
        )
        return QTensor(y, out_qp)


def _dequantize_accumulator(
    ctx, acc, acc_scale: np.ndarray, ndim: int, axis: int, plan: OpPlan, name: str | None = None
) -> relax.Expr:
    """real = acc * (s_x * s_w[c]), then the fused activation in float (the result named `name`, by
    default the plan's output)."""
    name = name or plan.output
    y = ctx.emit(relax.op.astype(acc, "float32"))
    scale = relax.const(channel_shape(acc_scale.astype(np.float32), ndim, axis), "float32")
    last = plan.clamp is None and plan.activation is None
    y = ctx.emit(relax.op.multiply(y, scale), name if last else None)
    if plan.clamp is not None:
        y = ctx.emit(relax.op.clip(y, float(plan.clamp[0]), float(plan.clamp[1])), name)
    if plan.activation is not None:
        y = apply_activation(ctx.bb, y, plan.activation, name)
    return y


@op_rule("relax.nn.conv2d")
class Conv2dRule(LinearRule):
    weight_axis = 0

    def supported(self, binding: relax.VarBinding) -> bool:
        attrs = binding.value.attrs
        return attrs.data_layout == "NCHW" and attrs.kernel_layout == "OIHW"

    def geometry(self, call) -> Geometry:
        attrs = call.attrs
        kh, kw = const_value(call.args[1]).shape[2:]
        return Geometry(
            "conv2d",
            kernel=(int(kh), int(kw)),
            strides=tuple(int(v) for v in attrs.strides),
            padding=tuple(int(v) for v in attrs.padding),
            dilation=tuple(int(v) for v in attrs.dilation),
            groups=int(attrs.groups),
        )

    def rows(self, weight: np.ndarray) -> np.ndarray:
        return weight.reshape(weight.shape[0], -1)

    def from_rows(self, rows: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
        return rows.reshape(shape)

    def row_groups(self, call, channels: int) -> np.ndarray:
        return np.arange(channels) // (channels // int(call.attrs.groups))

    def smoothed(self, weight: np.ndarray, divisor: np.ndarray) -> np.ndarray:
        return weight * divisor.reshape(1, -1, 1, 1)

    def weight_error_shift(self, call, weight, wq, w_scale, mean: np.ndarray) -> np.ndarray:
        delta = weight.astype(np.float64) - wq * w_scale.reshape(-1, 1, 1, 1)
        cout, cin_per_group = delta.shape[:2]
        groups = int(call.attrs.groups)
        group_of = np.arange(cout) // (cout // groups)
        inputs = group_of[:, None] * cin_per_group + np.arange(cin_per_group)[None, :]
        return np.einsum("oihw,oi->o", delta, mean[inputs])

    def accumulate(self, ctx, call, x: QTensor, wq: np.ndarray, acc_dtype: str):
        attrs = call.attrs
        top, left, bottom, right = (int(p) for p in attrs.padding)
        data = x.expr
        padding = [top, left, bottom, right]
        if x.qparams.zero_point and any(padding):
            # Padding must hold the integer that means real 0, which is the zero point, not 0.
            pad = [0, 0, 0, 0, top, bottom, left, right]
            data = ctx.emit(relax.op.nn.pad(data, pad, pad_value=float(x.qparams.zero_point)))
            padding = [0, 0, 0, 0]
        acc = ctx.emit(
            relax.op.nn.conv2d(
                data,
                int_const(wq, "int8"),
                strides=[int(s) for s in attrs.strides],
                padding=padding,
                dilation=[int(d) for d in attrs.dilation],
                groups=int(attrs.groups),
                out_dtype=acc_dtype,
            )
        )
        return acc, 4, 1


@op_rule("relax.matmul")
class MatmulRule(LinearRule):
    weight_axis = 1
    tflite_rounds_once = True  # FULLY_CONNECTED
    dynamic_granularity = "token"
    takes_two_activations = True

    def supported(self, binding: relax.VarBinding) -> bool:
        return const_value(binding.value.args[1]).ndim == 2

    def geometry(self, call) -> Geometry:
        return Geometry("matmul")

    def rows(self, weight: np.ndarray) -> np.ndarray:
        return weight.T

    def smoothed(self, weight: np.ndarray, divisor: np.ndarray) -> np.ndarray:
        return weight * divisor.reshape(-1, 1)

    def from_rows(self, rows: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
        return rows.T

    def weight_error_shift(self, call, weight, wq, w_scale, mean: np.ndarray) -> np.ndarray:
        delta = weight.astype(np.float64) - wq * w_scale.reshape(1, -1)
        return mean @ delta

    def accumulate(self, ctx, call, x: QTensor, wq: np.ndarray, acc_dtype: str):
        acc = ctx.emit(relax.op.matmul(x.expr, int_const(wq, "int8"), out_dtype=acc_dtype))
        ndim = len(call.ty.shape)
        return acc, ndim, ndim - 1
