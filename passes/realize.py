"""realize: rewrite each planned op through its rule into integer ops; float everywhere else, with
quantize/dequantize only where an integer tensor meets a float op (or the model's edges)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np
import tvm
from tvm import relax

from qcompile.calibration.rounding import WeightRounding
from qcompile.errors import QCompileError
from qcompile.passes.plan import QParams, QuantPlan
from qcompile.passes.rewrite import Env, copy_binding, main_bindings, operands, replay, substitute
from qcompile.passes.rules import OP_RULES, QTensor
from qcompile.passes.rules.emit import dequantize, quantize
from qcompile.passes.scheme import QuantSpec


@dataclass(frozen=True)
class Calibration:
    """What realize takes from calibration besides the plan: every site's parameters, whether to correct
    each layer's mean output shift (bias correction), and how to round its weights (None: to nearest)."""

    qparams: Mapping[str, QParams]
    bias_correction: bool = False
    rounding: WeightRounding | None = None
    weight_scales: Mapping[str, np.ndarray] = field(default_factory=dict)  # layer -> a QDQ model's own


class _Realizer:
    """The RealizeContext the rules see, plus the per-binding replay step."""

    def __init__(
        self, plan: QuantPlan, calibration: Calibration, bindings: list[relax.VarBinding], records: dict | None
    ):
        self.plan = plan
        self.records = records
        self.arithmetic = plan.arithmetic
        self.bias_correction = calibration.bias_correction
        self.rounding = calibration.rounding
        self.weight_scales = calibration.weight_scales
        self.params = calibration.qparams
        self.by_name = {b.var.name: b for b in bindings}
        self.anchors = {op.var: op for op in plan.ops}
        self.fused = {v for op in plan.ops for v in op.fused}
        self.ints: dict[str, QTensor] = {}
        self.env: Env = {}
        self.bb: relax.BlockBuilder

    # -- RealizeContext --------------------------------------------------------------------------
    def qparams(self, var: str) -> QParams:
        site = self.plan.site_of(var)
        if site not in self.params:
            raise QCompileError(f"no quantization parameters for tensor {site!r}: calibrate again")
        return self.params[site]

    def site_spec(self, var: relax.Var) -> QuantSpec:
        """The spec of the site whose integers `var` holds (through pass-through aliases)."""
        return self.plan.sites[self.plan.site_of(var.name)]

    def quantized(self, var: relax.Var) -> QTensor:
        if var.name not in self.ints:
            qp = self.qparams(var.name)
            self.ints[var.name] = QTensor(quantize(self.bb, self.floated(var), qp, f"{var.name}_q"), qp)
        return self.ints[var.name]

    def input_mean(self, var: relax.Var) -> np.ndarray | None:
        """Calibration mean per channel of `var` when bias correction is on and `var` was observed
        itself (not through an alias such as a reshape, whose channels differ)."""
        if not self.bias_correction or self.plan.site_of(var.name) != var.name or var.name not in self.params:
            return None
        mean = self.params[var.name].channel_mean
        return None if mean is None else np.asarray(mean, dtype=np.float64)

    def binding(self, var: str) -> relax.VarBinding:
        return self.by_name[var]

    def record(self, op: str, **data) -> None:
        if self.records is not None:
            self.records[op] = data

    def substitute(self, expr: relax.Expr, override: dict) -> relax.Expr:
        return substitute(expr, {**self.env, **override})

    def emit(self, expr: relax.Expr, name: str | None = None) -> relax.Expr:
        return self.bb.emit(expr, name) if name else self.bb.emit(expr)

    # -- replay ------------------------------------------------------------------------------------
    def floated(self, var: relax.Var) -> relax.Expr:
        """The float value of `var`, dequantizing (once) when it only exists as integers."""
        if var not in self.env:
            if var.name not in self.ints:
                raise QCompileError(f"internal: tensor {var.name!r} has neither a float nor an integer value")
            qt = self.ints[var.name]
            self.env[var] = dequantize(self.bb, qt.expr, qt.qparams, f"{var.name}_dq")
        return self.env[var]

    def step(self, bb: relax.BlockBuilder, env: Env, binding: relax.VarBinding) -> None:
        self.bb, self.env = bb, env
        name = binding.var.name
        if name in self.anchors:
            plan = self.anchors[name]
            result = OP_RULES.get(plan.rule).realize(self, binding, plan)
            if isinstance(result, QTensor):
                self.ints[plan.output] = result
            else:  # the rule ended in float (a layer only float ops read)
                env[self.by_name[plan.output].var] = result
            return
        if name in self.fused:
            return
        for var in operands(binding.value):
            self.floated(var)
        copy_binding(bb, env, binding)

    def finish(self, bb: relax.BlockBuilder, env: Env, body: relax.Expr) -> relax.Expr:
        for var in operands(body):
            self.floated(var)
        return substitute(body, env)


@tvm.transform.module_pass(opt_level=0, name="RealizeIntegerOps")
class RealizeIntegerOps:
    """Turn the planned float ops of `main` into integer compute (see the rules for each op)."""

    def __init__(
        self, plan: QuantPlan, calibration: Calibration, expose: tuple[str, ...] = (), records: dict | None = None
    ) -> None:
        self.plan = plan
        self.calibration = calibration
        self.expose = expose  # extra float outputs (dequantized), for per-layer error analysis
        self.records = records  # filled with what each layer computes in integers (an exporter's input)

    def transform_module(self, mod: tvm.IRModule, ctx: tvm.transform.PassContext) -> tvm.IRModule:
        bindings = main_bindings(mod["main"])
        realizer = _Realizer(self.plan, self.calibration, bindings, self.records)
        extra = None
        if self.expose:
            by_name = {b.var.name: b.var for b in bindings}

            def extra(env: Env) -> list[relax.Expr]:
                return [realizer.floated(by_name[n]) for n in self.expose]

        out = replay(mod, realizer.step, finish=realizer.finish, extra_outputs=extra)
        return relax.transform.DeadCodeElimination()(out)
