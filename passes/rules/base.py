"""The op-rule protocol: how one Relax op family is annotated (decide) and realized (rewrite).

Annotate and realize each hand a rule a small context object, so a rule never walks the graph itself.
Adding an op means one file in this folder with one `@op_rule("relax.<op>")` class."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np
from tvm import relax

from qcompile.calibration.rounding import WeightRounding
from qcompile.passes.plan import OpPlan, QParams, root_site
from qcompile.passes.scheme import WEIGHT_INT8, QuantSpec
from qcompile.registry import Registry


@dataclass(frozen=True)
class QTensor:
    """An integer tensor in the realized IR and the affine parameters it carries."""

    expr: relax.Expr
    qparams: QParams


@dataclass
class AnnotateContext:
    """What a rule may ask while annotating: producers, use counts, which tensors are integer."""

    bindings: dict[str, relax.VarBinding]
    uses: dict[relax.Var, int]
    consumers: dict[relax.Var, list[relax.VarBinding]]
    layer_of: dict[str, str]
    skip: frozenset[str]
    act: QuantSpec
    layer_act: dict[str, QuantSpec] = field(default_factory=dict)  # layers whose input is wider (int16)
    weight: QuantSpec = WEIGHT_INT8  # the target's weight spec
    layer_weight: dict[str, QuantSpec] = field(default_factory=dict)  # per-layer weight specs (rules)
    layer_scheme: dict[str, str] = field(default_factory=dict)  # layer -> scheme whose rule it takes
    integer: set[str] = field(default_factory=set)
    sites: dict[str, QuantSpec] = field(default_factory=dict)
    aliases: dict[str, str] = field(default_factory=dict)
    float_layers: list[str] = field(default_factory=list)
    arithmetic: str = "qcompile"  # "tflite": only what TFLite's integer kernels compute (no float epilogues)

    def is_integer(self, expr: relax.Expr) -> bool:
        return isinstance(expr, relax.Var) and expr.name in self.integer

    def is_float_tensor(self, expr: relax.Expr) -> bool:
        ty = getattr(expr, "ty", None)
        return isinstance(expr, relax.Var) and getattr(ty, "dtype", None) == "float32"

    def single_consumer(self, var: relax.Var) -> relax.VarBinding | None:
        """The one binding reading `var`, when nothing else (not even the return value) reads it."""
        users = self.consumers.get(var, [])
        return users[0] if len(users) == 1 and self.uses.get(var, 0) == 1 else None

    def weight_spec(self, layer: str) -> QuantSpec:
        return self.layer_weight.get(layer, self.weight)

    def need_site(self, var: relax.Var, spec: QuantSpec | None = None) -> None:
        """`var` enters integer compute: calibrate it unless it already is integer (and so has qparams).
        `spec` (an int16 layer's input) widens the tensor's site, also when another op produces it: a
        tensor is stored at the widest precision any of its integer readers asks for."""
        spec = spec or self.act
        if var.name not in self.integer:
            current = self.sites.get(var.name)
            if current is None or _bits(spec) > _bits(current):
                self.sites[var.name] = spec
            return
        root = root_site(self.aliases, var.name)
        if _bits(spec) > _bits(self.sites[root]):
            self.sites[root] = spec

    def produce(self, var: str, alias_of: str | None = None) -> None:
        """Mark `var` integer: either a fresh site or one sharing `alias_of`'s qparams."""
        self.integer.add(var)
        if alias_of is None:
            self.sites[var] = self.act
        else:
            self.aliases[var] = alias_of


def _bits(spec: QuantSpec) -> int:
    return spec.bits


class RealizeContext(Protocol):
    """What a rule may use while realizing (implemented by passes.realize)."""

    bb: relax.BlockBuilder
    rounding: WeightRounding | None  # how weights round to integers (None: to nearest)
    weight_scales: Mapping[str, np.ndarray]  # layer -> per-channel weight scales a QDQ model carries
    arithmetic: str  # how requantization rounds (QuantPlan.arithmetic)

    def quantized(self, var: relax.Var) -> QTensor: ...

    def qparams(self, var: str) -> QParams: ...

    def site_spec(self, var: relax.Var) -> QuantSpec: ...

    def input_mean(self, var: relax.Var) -> np.ndarray | None: ...

    def binding(self, var: str) -> relax.VarBinding: ...

    def substitute(self, expr: relax.Expr, override: dict) -> relax.Expr: ...

    def emit(self, expr: relax.Expr, name: str | None = None) -> relax.Expr: ...

    def record(self, op: str, **data) -> None:
        """Keep what op `op` computes in integers (its weights, bias, scales) for an exporter."""


class OpRule(Protocol):
    def annotate(self, ctx: AnnotateContext, binding: relax.VarBinding) -> OpPlan | None: ...

    def realize(self, ctx: RealizeContext, binding: relax.VarBinding, plan: OpPlan) -> QTensor: ...


OP_RULES: Registry[OpRule] = Registry("op rule")


def rule_key(op: str, scheme: str | None = None) -> str:
    """The registry key of a rule: the Relax op name, and `@scheme` for a scheme's own rule."""
    return op if scheme is None else f"{op}@{scheme}"


def op_rule(*names: str, scheme: str | None = None):
    """Class decorator: register one instance of the rule under each Relax op name (for `scheme`: the
    rule layers of that scheme use, e.g. weight-only matmuls, beside the op's default rule)."""

    def decorator(cls):
        for name in names:
            OP_RULES.add(rule_key(name, scheme), cls())
        return cls

    return decorator
