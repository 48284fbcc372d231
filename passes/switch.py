"""PrecisionSwitch: one compiled module in which every planned integer op (conv/matmul layers and the
integer add/pool/concat ops between them) can run integer or float, chosen at run time by a flag vector.
Sensitivity analysis and the mixed-precision search evaluate hundreds of precision configurations;
compiling each (~20 s for EfficientNet-Lite0 here) would cost hours, running one switchable library
costs a few seconds per configuration.

Which ops are integer in a configuration is what annotate says for it (qcompile.mixed sets the flags
from the plan of each configuration). Each switched op computes both paths from the same input: the
integer path exactly as realize emits it (quantize at the input site, integer op, requantize to the
output site), dequantized, and the float path (the original bindings); flags[i] picks one (0 float,
1 integer). Its readers quantize the picked value again with the output site's parameters, which gives
back the very integers the integer path produced (|q| <= 32767: the float32 round trip is exact), so
the module computes what that configuration's library computes. A conv/matmul that only float ops read
in a configuration skips its 8-bit output rounding in the real build (its accumulator is dequantized
directly): flag 2 picks that third path. The one remaining difference: a tensor that is an integer
alias of another in the all-integer plan (a max-pool's output) but gets its own site in a
configuration (the pool turned float) is quantized here with the aliased site's parameters and gets
no bias correction from it, whereas the real build calibrates it (the search verifies its final
choice with a real build). The direct path repeats the integer conv/matmul; common-subexpression
elimination leaves one copy.
"""

from __future__ import annotations

from dataclasses import replace

import tvm
from tvm import relax

from qcompile.passes.plan import QuantPlan
from qcompile.passes.realize import Calibration, _Realizer
from qcompile.passes.rewrite import Env, copy_binding, main_bindings, operands, replay
from qcompile.passes.rules import OP_RULES, QTensor
from qcompile.passes.rules.emit import dequantize
from qcompile.passes.rules.linear import LinearRule

FLAGS = "layer_flags"


class _Switcher(_Realizer):
    def __init__(self, *args, flags: relax.Var, **kwargs):
        super().__init__(*args, **kwargs)
        self.index = {op.var: i for i, op in enumerate(self.plan.ops)}
        self.flags = flags

    def step(self, bb: relax.BlockBuilder, env: Env, binding: relax.VarBinding) -> None:
        plan = self.anchors.get(binding.var.name)
        if plan is None:
            super().step(bb, env, binding)
            return
        self.bb, self.env = bb, env
        out_var = self.by_name[plan.output].var
        for b in [binding] + [self.by_name[n] for n in plan.fused]:  # the float path: the original bindings
            for var in operands(b.value):
                if var not in env:
                    self.floated(var)
            copy_binding(bb, env, b, f"{b.var.name}_f")
        as_float = env.pop(out_var)
        rule = OP_RULES.get(plan.rule)
        result = rule.realize(self, binding, plan)
        if isinstance(result, QTensor):
            result = dequantize(bb, result.expr, result.qparams, f"{plan.output}_i")
        flag = bb.emit(relax.op.take(self.flags, relax.const(self.index[plan.var], "int32"), axis=0, mode="clip"))
        choice = relax.op.where(relax.op.greater(flag, relax.const(0, "int32")), result, as_float)
        if isinstance(rule, LinearRule) and not plan.float_output:
            direct = rule.realize(self, binding, replace(plan, float_output=True))
            choice = relax.op.where(relax.op.equal(flag, relax.const(2, "int32")), direct, bb.emit(choice))
        env[out_var] = bb.emit(choice, plan.output)


@tvm.transform.module_pass(opt_level=0, name="PrecisionSwitch")
class PrecisionSwitch:
    """`main(inputs..., layer_flags: int32[len(plan.ops)])`: plan.ops[i] float where layer_flags[i] is 0,
    integer where it is 1, integer with its accumulator dequantized directly (no output rounding) where 2."""

    def __init__(self, plan: QuantPlan, calibration: Calibration) -> None:
        self.plan = plan
        self.calibration = calibration

    def transform_module(self, mod: tvm.IRModule, ctx: tvm.transform.PassContext) -> tvm.IRModule:
        bindings = main_bindings(mod["main"])
        flags = relax.Var(FLAGS, relax.TensorType((len(self.plan.ops),), "int32"))
        switcher = _Switcher(self.plan, self.calibration, bindings, None, flags=flags)
        out = replay(mod, switcher.step, finish=switcher.finish, extra_params=[flags])
        out = relax.transform.EliminateCommonSubexpr()(out)  # the direct path's repeated conv/matmul
        return relax.transform.DeadCodeElimination()(out)
