"""Replaying a Relax `main` binding by binding into a new function: the one mechanism every qcompile
pass uses to rewrite, so each pass only says what a binding becomes."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import tvm
from tvm import relax

from qcompile.errors import UnsupportedModelError

Env = dict  # old relax.Var -> new relax.Expr


def main_bindings(func: relax.Function) -> list[relax.VarBinding]:
    """The bindings of a single-dataflow-block function (what the ONNX frontend emits without If)."""
    body = func.body
    if not isinstance(body, relax.SeqExpr) or len(body.blocks) != 1:
        raise UnsupportedModelError("models with control flow (ONNX If/Loop) cannot be quantized yet")
    return list(body.blocks[0].bindings)


def substitute(expr: relax.Expr, env: Env) -> relax.Expr:
    """Rebuild `expr` with the variables in `env` replaced (calls, tuples, tuple-get-item, vars)."""
    if isinstance(expr, relax.Var):
        return env.get(expr, expr)
    if isinstance(expr, relax.Call):
        args = [substitute(a, env) for a in expr.args]
        return relax.Call(expr.op, args, expr.attrs, expr.ty_args)
    if isinstance(expr, relax.Tuple):
        return relax.Tuple([substitute(f, env) for f in expr.fields])
    if isinstance(expr, relax.TupleGetItem):
        return relax.TupleGetItem(substitute(expr.tuple_value, env), expr.index)
    return expr


def operands(expr: relax.Expr) -> list[relax.Var]:
    """The variables an expression reads directly (through calls, tuples and tuple-get-item)."""
    if isinstance(expr, relax.Var):
        return [expr]
    if isinstance(expr, relax.Call):
        return [v for a in expr.args for v in operands(a)]
    if isinstance(expr, relax.Tuple):
        return [v for f in expr.fields for v in operands(f)]
    if isinstance(expr, relax.TupleGetItem):
        return operands(expr.tuple_value)
    return []


def var_uses(bindings: Sequence[relax.VarBinding], func: relax.Function) -> dict[relax.Var, int]:
    """How many times each variable is read (by bindings and by the function's return value)."""
    counts: dict[relax.Var, int] = {}
    for expr in [b.value for b in bindings] + [func.body.body]:
        for var in operands(expr):
            counts[var] = counts.get(var, 0) + 1
    return counts


def replay(
    mod: tvm.IRModule,
    on_binding: Callable[[relax.BlockBuilder, Env, relax.VarBinding], None],
    extra_outputs: Callable[[Env], Sequence[relax.Expr]] | None = None,
    finish: Callable[[relax.BlockBuilder, Env, relax.Expr], relax.Expr] | None = None,
    extra_params: Sequence[relax.Var] = (),
) -> tvm.IRModule:
    """Rebuild `main`: `on_binding` emits each binding's replacement and records it in `env`.

    `finish` may rewrite the return value (e.g. dequantize integer outputs); `extra_outputs` appends
    tensors to it (calibration exposes its sites this way)."""
    func = mod["main"]
    bindings = main_bindings(func)
    params = [relax.Var(p.name, p.ty) for p in func.params]
    env: Env = dict(zip(func.params, params))
    params += list(extra_params)
    bb = relax.BlockBuilder()
    attrs = dict(func.attrs) if func.attrs is not None else None
    with bb.function("main", params, attrs=attrs):
        with bb.dataflow():
            for binding in bindings:
                on_binding(bb, env, binding)
            result = substitute(func.body.body, env)
            if finish is not None:
                result = finish(bb, env, func.body.body)
            if extra_outputs is not None:
                fields = list(result.fields) if isinstance(result, relax.Tuple) else [result]
                result = relax.Tuple(fields + list(extra_outputs(env)))
            out = bb.emit_output(result)
        bb.emit_func_output(out)
    new_mod = tvm.IRModule({gv: f for gv, f in mod.functions.items() if gv.name_hint != "main"})
    for gv, f in bb.get().functions.items():  # the new main, and any PrimFunc a step added (call_te)
        new_mod[gv] = f
    return new_mod


def copy_binding(bb: relax.BlockBuilder, env: Env, binding: relax.VarBinding, name: str | None = None) -> None:
    """The default replay step: re-emit the binding unchanged (with its variables substituted)."""
    env[binding.var] = bb.emit(substitute(binding.value, env), name or binding.var.name)


def is_const(expr: relax.Expr) -> bool:
    return isinstance(expr, tvm.ir.expr.GenericConst)


def const_value(expr: relax.Expr):
    """The numpy value of a Relax constant."""
    return expr.value.numpy()


def op_name(expr: relax.Expr) -> str | None:
    if isinstance(expr, relax.Call) and isinstance(expr.op, tvm.ir.Op):
        return str(expr.op.name)
    return None
