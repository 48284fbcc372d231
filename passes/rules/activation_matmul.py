"""Activation x activation matmuls (attention's QK^T and probabilities x V): both operands are
calibrated 8-bit sites, the product accumulates exactly in the two specs' accumulator, and is
dequantized for the float op reading it. Used by the matmul rule when its second operand is no
constant."""

from __future__ import annotations

import numpy as np
from tvm import relax

from qcompile.passes.plan import OpPlan
from qcompile.passes.rules.base import AnnotateContext, RealizeContext
from qcompile.passes.rules.emit import int_const
from qcompile.passes.scheme import accumulator


def annotate_activation_matmul(ctx: AnnotateContext, binding: relax.VarBinding, layer: str) -> OpPlan | None:
    """An activation x activation matmul (attention's QK^T and probabilities x V): both operands are
    calibrated sites, the product accumulates in int32 and is dequantized (softmax, or the reshape into
    the output projection, reads it in float). Float when skipped, under run-time (dynamic) scales, or
    when an operand is not a float tensor."""
    a, b = binding.value.args
    if layer in ctx.skip or ctx.act.dynamic or not (ctx.is_float_tensor(a) and ctx.is_float_tensor(b)):
        ctx.float_layers.append(layer)
        return None
    if len(a.ty.shape) < 2 or len(b.ty.shape) < 2:
        ctx.float_layers.append(layer)
        return None
    ctx.need_site(a, ctx.layer_act.get(layer))
    ctx.need_site(b, ctx.layer_act.get(layer))
    return OpPlan(
        var=binding.var.name,
        rule="relax.matmul",
        inputs=(a.name, b.name),
        output=binding.var.name,
        layer=layer,
        float_output=True,
    )


def realize_activation_matmul(ctx: RealizeContext, binding: relax.VarBinding, plan: OpPlan) -> relax.Expr:
    """sum_k (qa - za)(qb - zb) = qa.qb - zb * rowsum(qa) - za * colsum(qb) + K za zb, in the wide
    accumulator of the two specs; then times scale_a * scale_b (both per tensor)."""
    a_var, b_var = binding.value.args
    a, b = ctx.quantized(a_var), ctx.quantized(b_var)
    acc_dtype = accumulator(ctx.site_spec(a_var), ctx.site_spec(b_var))
    k = int(a_var.ty.shape[-1])
    acc = ctx.emit(relax.op.matmul(a.expr, b.expr, out_dtype=acc_dtype))
    za, zb = int(a.qparams.zero_point), int(b.qparams.zero_point)
    if zb:
        rows = relax.op.sum(relax.op.astype(a.expr, acc_dtype), axis=[-1], keepdims=True)  # ... x M x 1
        acc = ctx.emit(relax.op.subtract(acc, relax.op.multiply(rows, int_const(zb, acc_dtype))))
    if za:
        cols = relax.op.sum(relax.op.astype(b.expr, acc_dtype), axis=[-2], keepdims=True)  # ... x 1 x N
        acc = ctx.emit(relax.op.subtract(acc, relax.op.multiply(cols, int_const(za, acc_dtype))))
    if za and zb:
        acc = ctx.emit(relax.op.add(acc, int_const(k * za * zb, acc_dtype)))
    scale = float(a.qparams.scale) * float(b.qparams.scale)
    y = ctx.emit(relax.op.astype(acc, "float32"))
    return ctx.emit(relax.op.multiply(y, relax.const(np.float32(scale))), plan.output)
