"""add and multiply of two activations, each requantized straight into the output site."""

from __future__ import annotations

import numpy as np
from tvm import relax

from qcompile.passes.plan import OpPlan
from qcompile.passes.rewrite import op_name
from qcompile.passes.rules import tflite_fixed_point as tflite
from qcompile.passes.rules.base import AnnotateContext, QTensor, RealizeContext, op_rule
from qcompile.passes.rules.chain import follow_chain
from qcompile.passes.rules.emit import centered, clamp_bounds, fixed_point_output, requantize
from qcompile.passes.rules.fixed_point import bits_needed, multiplier_bits, quantize_multiplier


class BinaryRule:
    def annotate(self, ctx: AnnotateContext, binding: relax.VarBinding) -> OpPlan | None:
        args = binding.value.args
        if len(args) != 2 or not all(ctx.is_float_tensor(a) for a in args):
            return None
        if not any(ctx.is_integer(a) for a in args):
            return None  # both operands float: quantizing here would only add conversions
        chain = follow_chain(ctx, binding.var)
        for a in args:
            ctx.need_site(a)
        ctx.produce(chain.output.name)
        return OpPlan(
            var=binding.var.name,
            rule=op_name(binding.value),
            inputs=tuple(a.name for a in args),
            output=chain.output.name,
            fused=chain.fused,
            clamp=chain.clamp,
        )


@op_rule("relax.add")
class AddRule(BinaryRule):
    """(a - za) * Ma + (b - zb) * Mb with one shared shift: a single rounding, as TFLite's add."""

    def realize(self, ctx: RealizeContext, binding: relax.VarBinding, plan: OpPlan) -> QTensor:
        a, b = (ctx.quantized(v) for v in binding.value.args)
        out = ctx.qparams(plan.output)
        if ctx.arithmetic == "tflite":
            y = tflite.emit_add(ctx.bb, a.expr, a.qparams, b.expr, b.qparams, out, plan.clamp, plan.output)
            return QTensor(y, out)
        ma, mb = a.qparams.scale / out.scale, b.qparams.scale / out.scale
        in_bits = bits_needed(max(a.qparams.qmax - a.qparams.qmin, b.qparams.qmax - b.qparams.qmin)) + 1
        _, shift = quantize_multiplier(np.array([max(ma, mb)]), multiplier_bits(in_bits))
        terms = [
            (centered(ctx.bb, x.expr, x.qparams), np.array([int(round(mult * 2.0**shift))]), in_bits)
            for x, mult in ((a, ma), (b, mb))
        ]
        clamp = clamp_bounds(out, plan.clamp)
        y = fixed_point_output(ctx.bb, terms, shift, out, clamp=clamp, name=plan.output, ndim=0)
        return QTensor(y, out)


@op_rule("relax.multiply")
class MultiplyRule(BinaryRule):
    """(a - za) * (b - zb) in int64, requantized by sa * sb / so."""

    def realize(self, ctx: RealizeContext, binding: relax.VarBinding, plan: OpPlan) -> QTensor:
        a, b = (ctx.quantized(v) for v in binding.value.args)
        out = ctx.qparams(plan.output)
        prod = ctx.emit(relax.op.multiply(centered(ctx.bb, a.expr, a.qparams), centered(ctx.bb, b.expr, b.qparams)))
        if ctx.arithmetic == "tflite":
            y = tflite.emit_requantize(
                ctx.bb, prod, a.qparams.scale, b.qparams.scale, out, ndim=0, axis=0, clamp=plan.clamp, name=plan.output
            )
            return QTensor(y, out)
        span = (a.qparams.qmax - a.qparams.qmin) * (b.qparams.qmax - b.qparams.qmin)
        y = requantize(
            ctx.bb,
            prod,
            a.qparams.scale * b.qparams.scale,
            out,
            acc_bits=bits_needed(span),
            ndim=0,
            clamp=clamp_bounds(out, plan.clamp),
            name=plan.output,
        )
        return QTensor(y, out)
