"""Pooling on integers. max_pool2d is order-preserving, so it runs on the integers as they are;
average pools sum in int32 and divide by a fixed-point multiplier. All keep the input's qparams."""

from __future__ import annotations

import numpy as np
from tvm import relax

from qcompile.passes.plan import OpPlan
from qcompile.passes.rewrite import op_name
from qcompile.passes.rules import tflite_fixed_point as tflite
from qcompile.passes.rules.base import AnnotateContext, QTensor, RealizeContext, op_rule
from qcompile.passes.rules.emit import int_const, requantize
from qcompile.passes.rules.fixed_point import bits_needed


class SameScaleRule:
    """An op whose integer output shares its input's quantization parameters."""

    def applies(self, binding: relax.VarBinding) -> bool:
        return True

    def annotate(self, ctx: AnnotateContext, binding: relax.VarBinding) -> OpPlan | None:
        data = binding.value.args[0]
        if not (ctx.is_integer(data) and self.applies(binding)):
            return None
        ctx.produce(binding.var.name, alias_of=data.name)
        return OpPlan(var=binding.var.name, rule=op_name(binding.value), inputs=(data.name,), output=binding.var.name)


@op_rule("relax.nn.max_pool2d")
class MaxPoolRule(SameScaleRule):
    def realize(self, ctx: RealizeContext, binding: relax.VarBinding, plan: OpPlan) -> QTensor:
        x = ctx.quantized(binding.value.args[0])
        y = ctx.emit(ctx.substitute(binding.value, {binding.value.args[0]: x.expr}), plan.output)
        return QTensor(y, x.qparams)


def _sum_to_output(ctx: RealizeContext, acc: relax.Expr, x: QTensor, count: int, name: str) -> relax.Expr:
    """acc = sum of `count` integers of x -> their mean, in x's own qparams."""
    if ctx.arithmetic == "tflite":
        return tflite.emit_mean(ctx.bb, acc, count, x.qparams, name)
    if x.qparams.zero_point:
        acc = ctx.emit(relax.op.subtract(acc, int_const(count * x.qparams.zero_point, "int32")))
    span = (x.qparams.qmax - x.qparams.qmin) * count
    return requantize(ctx.bb, acc, x.qparams.scale / count, x.qparams, acc_bits=bits_needed(span), ndim=0, name=name)


@op_rule("relax.mean")
class MeanRule(SameScaleRule):
    """Global average pooling as the frontend emits it: R.mean over spatial axes."""

    def applies(self, binding: relax.VarBinding) -> bool:
        return binding.value.attrs.axis is not None

    def realize(self, ctx: RealizeContext, binding: relax.VarBinding, plan: OpPlan) -> QTensor:
        x = ctx.quantized(binding.value.args[0])
        attrs = binding.value.attrs
        shape = [int(d) for d in binding.value.args[0].ty.shape]
        axes = [int(a) % len(shape) for a in attrs.axis]
        count = int(np.prod([shape[a] for a in axes]))
        wide = ctx.emit(relax.op.astype(x.expr, "int32"))
        acc = ctx.emit(relax.op.sum(wide, axis=axes, keepdims=bool(attrs.keepdims)))
        return QTensor(_sum_to_output(ctx, acc, x, count, plan.output), x.qparams)


@op_rule("relax.nn.avg_pool2d")
class AvgPoolRule(SameScaleRule):
    """Windowed average: a depthwise conv with all-ones int8 weights gives the exact window sums."""

    def applies(self, binding: relax.VarBinding) -> bool:
        attrs = binding.value.attrs
        padded = any(int(p) for p in attrs.padding)
        return attrs.layout == "NCHW" and not attrs.ceil_mode and (not padded or attrs.count_include_pad)

    def realize(self, ctx: RealizeContext, binding: relax.VarBinding, plan: OpPlan) -> QTensor:
        x = ctx.quantized(binding.value.args[0])
        attrs = binding.value.attrs
        channels = int(binding.value.args[0].ty.shape[1])
        kh, kw = (int(k) for k in attrs.pool_size)
        top, left, bottom, right = (int(p) for p in attrs.padding)
        data = x.expr
        if any((top, left, bottom, right)):
            pad = [0, 0, 0, 0, top, bottom, left, right]
            data = ctx.emit(relax.op.nn.pad(data, pad, pad_value=float(x.qparams.zero_point)))
        ones = int_const(np.ones((channels, 1, kh, kw)), "int8")
        acc = ctx.emit(
            relax.op.nn.conv2d(
                data,
                ones,
                strides=[int(s) for s in attrs.strides],
                dilation=[int(d) for d in attrs.dilation],
                groups=channels,
                out_dtype="int32",
            )
        )
        return QTensor(_sum_to_output(ctx, acc, x, kh * kw, plan.output), x.qparams)
