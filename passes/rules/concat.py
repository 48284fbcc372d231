"""concat: every operand requantized into the output site, then joined as integers."""

from __future__ import annotations

from tvm import relax

from qcompile.passes.plan import OpPlan
from qcompile.passes.rewrite import op_name
from qcompile.passes.rules.base import AnnotateContext, QTensor, RealizeContext, op_rule
from qcompile.passes.rules.emit import centered, requantize
from qcompile.passes.rules.fixed_point import bits_needed


@op_rule("relax.concat")
class ConcatRule:
    def annotate(self, ctx: AnnotateContext, binding: relax.VarBinding) -> OpPlan | None:
        operands = binding.value.args[0]
        fields = list(operands.fields) if isinstance(operands, relax.Tuple) else []
        if not fields or not all(ctx.is_float_tensor(f) for f in fields):
            return None
        if not any(ctx.is_integer(f) for f in fields):
            return None
        for f in fields:
            ctx.need_site(f)
        ctx.produce(binding.var.name)
        return OpPlan(
            var=binding.var.name,
            rule=op_name(binding.value),
            inputs=tuple(f.name for f in fields),
            output=binding.var.name,
        )

    def realize(self, ctx: RealizeContext, binding: relax.VarBinding, plan: OpPlan) -> QTensor:
        out = ctx.qparams(plan.output)
        parts = []
        for f in binding.value.args[0].fields:
            x = ctx.quantized(f)
            if x.qparams == out:
                parts.append(x.expr)
                continue
            span = x.qparams.qmax - x.qparams.qmin
            c = centered(ctx.bb, x.expr, x.qparams)
            parts.append(requantize(ctx.bb, c, x.qparams.scale, out, acc_bits=bits_needed(span), ndim=0))
        y = ctx.emit(relax.op.concat(parts, axis=int(binding.value.attrs.axis)), plan.output)
        return QTensor(y, out)
