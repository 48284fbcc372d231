"""Fusion of the bindings that follow an integer op: a constant bias add, then relu/clip (an integer
clamp) or a smooth activation (SiLU, sigmoid, tanh, GELU) computed in float in the op's epilogue,
between the accumulator and the output site: one rounding per layer instead of one per op."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import tvm
from tvm import relax

from qcompile.passes.rewrite import const_value, is_const, op_name
from qcompile.passes.rules.base import AnnotateContext


@dataclass(frozen=True)
class Chain:
    output: relax.Var
    fused: tuple[str, ...]
    bias: str | None
    clamp: tuple[float, float] | None
    activation: str | None = None  # a FLOAT_ACTIVATIONS name


# Smooth activations as one Relax op each (the epilogue applies them to the dequantized accumulator).
FLOAT_ACTIVATIONS = {
    "relax.sigmoid": "sigmoid",
    "relax.tanh": "tanh",
    "relax.nn.gelu": "gelu",
    "relax.nn.gelu_tanh": "gelu_tanh",
    "relax.nn.silu": "silu",
}


def apply_activation(bb: relax.BlockBuilder, y: relax.Expr, activation: str, name: str | None = None) -> relax.Expr:
    """The float activation on y (what the chain absorbed), emitted as Relax ops."""
    if activation == "silu":
        return bb.emit(relax.op.multiply(y, bb.emit(relax.op.sigmoid(y))), name)
    op = {v: k for k, v in FLOAT_ACTIVATIONS.items()}[activation]
    return bb.emit(relax.Call(tvm.ir.Op.get(op), [y]), name)


def _silu(ctx: AnnotateContext, last: relax.Var) -> list[relax.VarBinding] | None:
    """x * sigmoid(x) as exporters write SiLU/Swish: [sigmoid binding, multiply binding] when those two
    are the only readers of x and the multiply the only reader of the sigmoid."""
    users = ctx.consumers.get(last, [])
    if len(users) != 2 or ctx.uses.get(last, 0) != 2:
        return None
    sig = next((u for u in users if op_name(u.value) == "relax.sigmoid"), None)
    mul = next((u for u in users if op_name(u.value) == "relax.multiply"), None)
    if sig is None or mul is None or ctx.single_consumer(sig.var) is not mul:
        return None
    args = list(mul.value.args)
    if not any(a.same_as(last) for a in args) or not any(a.same_as(sig.var) for a in args):
        return None
    return [sig, mul]


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


def follow_chain(
    ctx: AnnotateContext,
    anchor: relax.Var,
    bias_ok: Callable[[np.ndarray], bool] | None = None,
    float_activation: bool = False,
) -> Chain:
    """Absorb `anchor -> [add const bias] -> [relu|clip|float activation]` while each link has a single
    reader (SiLU's x * sigmoid(x) reads x twice: both readers are the activation)."""
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
        elif float_activation and op_name(nxt.value) in FLOAT_ACTIVATIONS and _is_float(nxt.var):
            fused.append(nxt.var.name)
            return Chain(nxt.var, tuple(fused), bias, None, FLOAT_ACTIVATIONS[op_name(nxt.value)])
    if float_activation and clamp is None:
        silu = _silu(ctx, last)
        if silu is not None and _is_float(silu[1].var):
            fused += [b.var.name for b in silu]
            return Chain(silu[1].var, tuple(fused), bias, None, "silu")
    return Chain(output=last, fused=tuple(fused), bias=bias, clamp=clamp)


def _is_float(var: relax.Var) -> bool:
    return getattr(var.ty, "dtype", None) == "float32"
