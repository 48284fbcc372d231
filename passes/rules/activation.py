"""relu / clip on an integer tensor that no conv or add absorbed: a clamp in the integer domain."""

from __future__ import annotations

import numpy as np
from tvm import relax

from qcompile.passes.plan import OpPlan
from qcompile.passes.rules.base import QTensor, RealizeContext, op_rule
from qcompile.passes.rules.chain import activation_bounds
from qcompile.passes.rules.emit import clamp_bounds
from qcompile.passes.rules.pooling import SameScaleRule


@op_rule("relax.nn.relu", "relax.nn.relu6", "relax.clip")
class ClampRule(SameScaleRule):
    def realize(self, ctx: RealizeContext, binding: relax.VarBinding, plan: OpPlan) -> QTensor:
        x = ctx.quantized(binding.value.args[0])
        lo, hi = clamp_bounds(x.qparams, activation_bounds(binding.value)) or (-np.inf, np.inf)
        y = ctx.emit(relax.op.clip(x.expr, int(lo), int(hi)), plan.output)
        return QTensor(y, x.qparams)
