"""Data-movement ops (reshape, transpose, flatten, squeeze, ...): the integers pass through unchanged."""

from __future__ import annotations

from tvm import relax

from qcompile.passes.plan import OpPlan
from qcompile.passes.rules.base import QTensor, RealizeContext, op_rule
from qcompile.passes.rules.pooling import SameScaleRule

PASS_THROUGH = (
    "relax.reshape",
    "relax.permute_dims",
    "relax.squeeze",
    "relax.expand_dims",
    "relax.flatten",
    "relax.nn.batch_flatten",
    "relax.strided_slice",
)


@op_rule(*PASS_THROUGH)
class PassThroughRule(SameScaleRule):
    def realize(self, ctx: RealizeContext, binding: relax.VarBinding, plan: OpPlan) -> QTensor:
        x = ctx.quantized(binding.value.args[0])
        y = ctx.emit(ctx.substitute(binding.value, {binding.value.args[0]: x.expr}), plan.output)
        return QTensor(y, x.qparams)
