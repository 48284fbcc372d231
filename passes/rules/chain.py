"""Fusion of the bindings that follow an integer op: a constant bias add, then relu/clip."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from tvm import relax

from qcompile.passes.rewrite import const_value, is_const, op_name
from qcompile.passes.rules.base import AnnotateContext


@dataclass(frozen=True)
class Chain:
    output: relax.Var
    fused: tuple[str, ...]
    bias: str | None
    clamp: tuple[float, float] | None


def prim_float(expr: relax.Expr) -> float:
    """The float in a Relax PrimValue/FloatImm argument (R.clip's bounds)."""
    value = getattr(expr, "value", expr)
    return float(getattr(value, "value", value))


def activation_bounds(value: relax.Expr) -> tuple[float, float] | None:
    name = op_name(value)
    if name == "relax.nn.relu":
        return 0.0, np.inf
    if name == "relax.nn.relu6":
        return 0.0, 6.0
    if name == "relax.clip":
        return prim_float(value.args[1]), prim_float(value.args[2])
    return None


def follow_chain(ctx: AnnotateContext, anchor: relax.Var, bias_ok: Callable[[np.ndarray], bool] | None = None) -> Chain:
    """Absorb `anchor -> [add const bias] -> [relu|clip]` while each link has a single reader."""
    fused: list[str] = []
    bias = None
    clamp = None
    last = anchor
    nxt = ctx.single_consumer(last)
    if (
        bias_ok is not None
        and nxt is not None
        and op_name(nxt.value) == "relax.add"
        and nxt.value.args[0].same_as(last)
        and is_const(nxt.value.args[1])
        and bias_ok(const_value(nxt.value.args[1]))
    ):
        bias, last = nxt.var.name, nxt.var
        fused.append(nxt.var.name)
        nxt = ctx.single_consumer(last)
    if nxt is not None and isinstance(nxt.value, relax.Call) and nxt.value.args and nxt.value.args[0].same_as(last):
        bounds = activation_bounds(nxt.value)
        if bounds is not None:
            clamp, last = bounds, nxt.var
            fused.append(nxt.var.name)
    return Chain(output=last, fused=tuple(fused), bias=bias, clamp=clamp)
