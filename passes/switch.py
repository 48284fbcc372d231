"""PrecisionSwitch: one compiled module in which every planned integer op (conv/matmul layers and the
integer add/pool/concat ops between them) can run integer or float, chosen at run time by a flag vector.
Sensitivity analysis and the mixed-precision search evaluate hundreds of precision configurations;
compiling each (~20 s for EfficientNet-Lite0 here) would cost hours, running one switchable library
costs a few seconds per configuration.

Which ops are integer in a configuration is what annotate says for it (qcompile.mixed sets the flags
from the plan of each configuration). Each switched op computes both paths from the same input: the
integer path exactly as realize emits it (quantize at the input site, integer op, requantize to the
output site), dequantized, and the float path (the original bindings); `where(flags[i] > 0, integer,
float)` picks one. Its readers quantize the picked value again with the output site's parameters, which
gives back the very integers the integer path produced (|q| <= 32767: the float32 round trip is exact),
so the module computes what that configuration's library computes. It differs from the real build only
where realize would skip the 8-bit output rounding of an integer layer read only by float layers (the
search verifies its final choice with a real build).
"""

from __future__ import annotations

import tvm
from tvm import relax

from qcompile.passes.plan import QuantPlan
from qcompile.passes.realize import Calibration, _Realizer
from qcompile.passes.rewrite import Env, copy_binding, main_bindings, operands, replay
from qcompile.passes.rules import OP_RULES, QTensor
from qcompile.passes.rules.emit import dequantize

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
        result = OP_RULES.get(plan.rule).realize(self, binding, plan)
        if isinstance(result, QTensor):
            result = dequantize(bb, result.expr, result.qparams, f"{plan.output}_i")
        index = relax.const(self.index[plan.var], "int32")
        picked = bb.emit(
            relax.op.greater(relax.op.take(self.flags, index, axis=0, mode="clip"), relax.const(0, "int32"))
        )
        env[out_var] = bb.emit(relax.op.where(picked, result, as_float), plan.output)


@tvm.transform.module_pass(opt_level=0, name="PrecisionSwitch")
class PrecisionSwitch:
    """`main(inputs..., layer_flags: int32[len(plan.ops)])`: plan.ops[i] integer where layer_flags[i] > 0."""

    def __init__(self, plan: QuantPlan, calibration: Calibration) -> None:
        self.plan = plan
        self.calibration = calibration

    def transform_module(self, mod: tvm.IRModule, ctx: tvm.transform.PassContext) -> tvm.IRModule:
        bindings = main_bindings(mod["main"])
        flags = relax.Var(FLAGS, relax.TensorType((len(self.plan.ops),), "int32"))
        switcher = _Switcher(self.plan, self.calibration, bindings, flags=flags)
        out = replay(mod, switcher.step, finish=switcher.finish, extra_params=[flags])
        return relax.transform.DeadCodeElimination()(out)
