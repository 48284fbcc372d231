"""canonicalize: the float module in the shape annotate expects.

- every conv2d/matmul binding is named after its ONNX node, every binding name is unique (the plan and
  qparams.json refer to tensors by these names);
- batch norms are decomposed and folded, together with any other per-channel affine chain
  (bias add, subtract, multiply, divide by constants), into the weights and one bias add;
- the ONNX frontend's Clip lowering (call_tir of topi maximum/minimum) becomes one `R.clip`.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence

import numpy as np
import tvm
from tvm import relax

from qcompile.passes.rewrite import (
    Env,
    const_value,
    copy_binding,
    is_const,
    main_bindings,
    op_name,
    replay,
    substitute,
    var_uses,
)

LAYER_OPS = ("relax.nn.conv2d", "relax.matmul", "relax.take")


def is_layer(value: relax.Expr) -> bool:
    """A conv2d or matmul, or an embedding lookup (take from a constant table): the ops precision
    rules, --skip and the mixed-precision search address by their ONNX node names."""
    name = op_name(value)
    if name == "relax.take":
        from qcompile.passes.rules.embedding import is_table_lookup

        return is_table_lookup(value)
    return name in LAYER_OPS


_AFFINE_OPS = ("relax.add", "relax.subtract", "relax.multiply", "relax.divide")


def sanitize(name: str) -> str:
    clean = re.sub(r"\W+", "_", name).strip("_") or "layer"
    return clean if not clean[0].isdigit() else f"n{clean}"


@tvm.transform.module_pass(opt_level=0, name="NameLayers")
class NameLayers:
    """Name the k-th conv2d/matmul binding after the k-th ONNX node that produced that op.

    The Relax ONNX frontend converts nodes in graph order, so the order of conv2d (from Conv) and
    matmul (from Gemm/MatMul) bindings follows the ONNX node order. When the counts disagree (a
    frontend that emits extra matmuls) the names fall back to the binding names."""

    def __init__(self, onnx_layers: Mapping[str, Sequence[str]]) -> None:
        self.onnx_layers = onnx_layers
        self.layer_of: dict[str, str] = {}

    def transform_module(self, mod: tvm.IRModule, ctx: tvm.transform.PassContext) -> tvm.IRModule:
        bindings = main_bindings(mod["main"])
        found = {op: [b for b in bindings if op_name(b.value) == op and is_layer(b.value)] for op in LAYER_OPS}
        names: dict[relax.Var, str] = {}
        for op, onnx_names in self.onnx_layers.items():
            if len(found.get(op, [])) != len(onnx_names):
                continue
            for binding, onnx_name in zip(found[op], onnx_names):
                names[binding.var] = onnx_name
        taken: set[str] = set()

        def unique(base: str) -> str:
            name, k = base, 1
            while name in taken:
                name, k = f"{base}_{k}", k + 1
            taken.add(name)
            return name

        def step(bb: relax.BlockBuilder, env: Env, b: relax.VarBinding) -> None:
            if b.var in names:
                var_name = unique(sanitize(names[b.var]))
                self.layer_of[var_name] = names[b.var]
            else:
                var_name = unique(b.var.name)
                if is_layer(b.value):
                    self.layer_of[var_name] = var_name
            copy_binding(bb, env, b, var_name)

        return replay(mod, step)


@tvm.transform.module_pass(opt_level=0, name="CanonicalizeClip")
class CanonicalizeClip:
    """call_tir(maximum, (x, lo)) -> call_tir(minimum, (., hi)) becomes R.clip(x, lo, hi)."""

    def transform_module(self, mod: tvm.IRModule, ctx: tvm.transform.PassContext) -> tvm.IRModule:
        bindings = main_bindings(mod["main"])
        uses = var_uses(bindings, mod["main"])
        bounds: dict[relax.Var, tuple[relax.Expr, float, float]] = {}
        for b in bindings:
            parsed = _parse_bound(b.value)
            if parsed is None:
                continue
            src, kind, value = parsed
            lo, hi = -np.inf, np.inf
            if src in bounds and uses.get(src, 0) == 1:
                src, lo, hi = bounds[src]
            lo, hi = (max(lo, value), hi) if kind == "maximum" else (lo, min(hi, value))
            bounds[b.var] = (src, lo, hi)

        def step(bb: relax.BlockBuilder, env: Env, b: relax.VarBinding) -> None:
            if b.var not in bounds:
                copy_binding(bb, env, b)
                return
            src, lo, hi = bounds[b.var]
            env[b.var] = bb.emit(relax.op.clip(substitute(src, env), float(lo), float(hi)), b.var.name)

        new = replay(mod, step)
        return relax.transform.DeadCodeElimination()(new)


def _parse_bound(value: relax.Expr) -> tuple[relax.Expr, str, float] | None:
    """(x, 'maximum'|'minimum', scalar) for the frontend's call_tir lowering of a Clip bound."""
    if op_name(value) != "relax.call_tir":
        return None
    func, args = value.args[0], value.args[1]
    # The frontend names each legalized bound maximum, maximum1, maximum2, ... (one PrimFunc per shape).
    match = re.fullmatch(r"(maximum|minimum)\d*", getattr(func, "name_hint", ""))
    if match is None or not isinstance(args, relax.Tuple) or len(args.fields) != 2:
        return None
    x, bound = args.fields
    if not is_const(bound) or const_value(bound).size != 1:
        return None
    return x, match.group(1), float(const_value(bound).reshape(()))


@tvm.transform.module_pass(opt_level=0, name="FoldAffineIntoLayer")
class FoldAffineIntoLayer:
    """conv2d/matmul followed by per-channel constant add/subtract/multiply/divide (a decomposed batch
    norm, a bias) becomes one layer with scaled weights and a single bias add."""

    def transform_module(self, mod: tvm.IRModule, ctx: tvm.transform.PassContext) -> tvm.IRModule:
        func = mod["main"]
        bindings = main_bindings(func)
        uses = var_uses(bindings, func)
        consumer: dict[relax.Var, relax.VarBinding] = {}
        for b in bindings:
            if isinstance(b.value, relax.Call):
                for a in b.value.args:
                    if isinstance(a, relax.Var):
                        consumer[a] = b
        folds: dict[relax.Var, tuple[np.ndarray, np.ndarray, relax.Var]] = {}
        absorbed: set[relax.Var] = set()
        for b in bindings:
            channels = _layer_channels(b.value)
            if channels is None:
                continue
            scale, shift, last = np.ones(channels), np.zeros(channels), b.var
            while uses.get(last, 0) == 1 and last in consumer:
                step = _affine_step(consumer[last].value, last, channels, b.value)
                if step is None:
                    break
                kind, vec = step
                if kind in ("multiply", "divide"):
                    factor = vec if kind == "multiply" else 1.0 / vec
                    scale, shift = scale * factor, shift * factor
                else:
                    shift = shift + (vec if kind == "add" else -vec)
                last = consumer[last].var
                absorbed.add(last)
            if not last.same_as(b.var):
                folds[b.var] = (scale, shift, last)
        if not folds:
            return mod

        def step(bb: relax.BlockBuilder, env: Env, b: relax.VarBinding) -> None:
            if b.var in absorbed:
                return
            if b.var not in folds:
                copy_binding(bb, env, b)
                return
            scale, shift, last = folds[b.var]
            layer = _scaled_layer(b.value, scale, env)
            out = bb.emit(layer, b.var.name)
            if np.any(shift != 0):
                out = bb.emit(relax.op.add(out, _channel_const(shift, b.value)), f"{b.var.name}_bias")
            env[last] = out

        return replay(mod, step)


def _layer_channels(value: relax.Expr) -> int | None:
    name = op_name(value)
    if name not in ("relax.nn.conv2d", "relax.matmul") or not is_const(value.args[1]):
        return None
    if name == "relax.nn.conv2d":
        if value.attrs.data_layout != "NCHW" or value.attrs.kernel_layout != "OIHW":
            return None
        return int(const_value(value.args[1]).shape[0])
    weight = const_value(value.args[1])
    return int(weight.shape[-1]) if weight.ndim == 2 else None


def _affine_step(value: relax.Expr, src: relax.Var, channels: int, layer: relax.Expr):
    name = op_name(value)
    if name not in _AFFINE_OPS or len(value.args) != 2:
        return None
    lhs, rhs = value.args
    if not lhs.same_as(src) or not is_const(rhs):
        return None  # only `layer_out OP const`; `const - layer_out` and friends are left alone
    arr = const_value(rhs).astype(np.float64)
    out_ndim = len(value.ty.shape) if hasattr(value.ty, "shape") and value.ty.shape is not None else 0
    axis = 1 if op_name(layer) == "relax.nn.conv2d" else out_ndim - 1
    vec = _per_channel(arr, out_ndim, axis, channels)
    if vec is None:
        return None
    return name.split(".")[-1], vec


def _per_channel(arr: np.ndarray, ndim: int, axis: int, channels: int) -> np.ndarray | None:
    """The per-channel vector of a constant that broadcasts only along `axis`, else None."""
    if arr.ndim > ndim:
        return None
    full = arr.reshape((1,) * (ndim - arr.ndim) + arr.shape)
    for i, d in enumerate(full.shape):
        if i != axis and d != 1:
            return None
    if full.shape[axis] not in (1, channels):
        return None
    return np.broadcast_to(full.reshape(-1), (channels,)).astype(np.float64)


def _scaled_layer(value: relax.Call, scale: np.ndarray, env: Env) -> relax.Expr:
    weight = const_value(value.args[1]).astype(np.float64)
    if op_name(value) == "relax.nn.conv2d":
        weight = weight * scale.reshape(-1, 1, 1, 1)
    else:
        weight = weight * scale.reshape(1, -1)
    new_w = relax.const(weight.astype(np.float32), "float32")
    return relax.Call(value.op, [substitute(value.args[0], env), new_w], value.attrs, value.ty_args)


def _channel_const(vec: np.ndarray, layer: relax.Call) -> relax.Expr:
    if op_name(layer) == "relax.nn.conv2d":
        return relax.const(vec.astype(np.float32).reshape(1, -1, 1, 1), "float32")
    return relax.const(vec.astype(np.float32), "float32")


@tvm.transform.module_pass(opt_level=0, name="FuseErfGelu")
class FuseErfGelu:
    """x * (0.5 * (1 + erf(x / sqrt(2)))) (and the (x * 0.5) * (1 + erf(x * 1/sqrt(2))) spelling) becomes
    one R.nn.gelu(x), as exporters decompose GELU: then a matmul's chain can take it as one float
    activation instead of quantizing the product of two activations."""

    def transform_module(self, mod: tvm.IRModule, ctx: tvm.transform.PassContext) -> tvm.IRModule:
        bindings = main_bindings(mod["main"])
        uses = var_uses(bindings, mod["main"])
        by_var = {b.var: b.value for b in bindings}
        found: dict[relax.Var, tuple[relax.Var, set]] = {}
        for b in bindings:
            match = _gelu_of(b.value, by_var, uses)
            if match is not None:
                found[b.var] = match
        if not found:
            return mod
        absorbed = {v for _, inner in found.values() for v in inner}

        def step(bb: relax.BlockBuilder, env: Env, b: relax.VarBinding) -> None:
            if b.var in found:
                env[b.var] = bb.emit(relax.op.nn.gelu(substitute(found[b.var][0], env)), b.var.name)
            elif b.var not in absorbed:
                copy_binding(bb, env, b)

        return relax.transform.DeadCodeElimination()(replay(mod, step))


def _scalar(expr: relax.Expr) -> float | None:
    if is_const(expr) and const_value(expr).size == 1:
        return float(const_value(expr).reshape(()))
    return None


def _gelu_of(value: relax.Expr, by_var: dict, uses: dict) -> tuple[relax.Var, set] | None:
    """(x, the bindings it spans) when `value` is an erf-GELU of x."""
    if op_name(value) != "relax.multiply":
        return None
    for x, other in ((value.args[0], value.args[1]), (value.args[1], value.args[0])):
        inner = _half_one_plus_erf(other, x, by_var, uses)
        if inner is not None:
            return x, inner
        # (x * 0.5) * (1 + erf(x / sqrt 2)): x here is the halved operand
        if isinstance(x, relax.Var) and op_name(by_var.get(x)) == "relax.multiply" and uses.get(x, 0) == 1:
            a, b = by_var[x].args
            base = a if _scalar(b) == 0.5 else b if _scalar(a) == 0.5 else None
            if base is not None:
                erf_part = _one_plus_erf(other, base, by_var, uses)
                if erf_part is not None:
                    return base, erf_part | {x}
    return None


def _half_one_plus_erf(expr, x, by_var, uses) -> set | None:
    if not isinstance(expr, relax.Var) or uses.get(expr, 0) != 1 or op_name(by_var.get(expr)) != "relax.multiply":
        return None
    a, b = by_var[expr].args
    rest = b if _scalar(a) == 0.5 else a if _scalar(b) == 0.5 else None
    inner = _one_plus_erf(rest, x, by_var, uses) if rest is not None else None
    return None if inner is None else inner | {expr}


def _one_plus_erf(expr, x, by_var, uses) -> set | None:
    if not isinstance(expr, relax.Var) or uses.get(expr, 0) != 1 or op_name(by_var.get(expr)) != "relax.add":
        return None
    a, b = by_var[expr].args
    erf = b if _scalar(a) == 1.0 else a if _scalar(b) == 1.0 else None
    if not isinstance(erf, relax.Var) or uses.get(erf, 0) != 1 or op_name(by_var.get(erf)) != "relax.erf":
        return None
    scaled = by_var[erf].args[0]
    if not isinstance(scaled, relax.Var) or uses.get(scaled, 0) != 1:
        return None
    call = by_var.get(scaled)
    name = op_name(call)
    if name not in ("relax.divide", "relax.multiply") or not call.args[0].same_as(x):
        return None
    c = _scalar(call.args[1])
    if c is None or abs((c if name == "relax.divide" else 1.0 / c) - np.sqrt(2.0)) > 1e-5:
        return None
    return {expr, erf, scaled}


def canonicalize(mod: tvm.IRModule, onnx_layers: Mapping[str, Sequence[str]]) -> tuple[tvm.IRModule, dict]:
    """Run the canonicalization pipeline; returns the module and {binding name: ONNX layer name}."""
    namer = NameLayers(onnx_layers)
    seq = tvm.transform.Sequential(
        [
            relax.transform.DecomposeOpsForInference(),
            relax.transform.FoldConstant(),
            relax.transform.CanonicalizeBindings(),
            relax.transform.DeadCodeElimination(),
            CanonicalizeClip(),
            FuseErfGelu(),
            FoldAffineIntoLayer(),
            relax.transform.FoldConstant(),
            relax.transform.CanonicalizeBindings(),
            relax.transform.DeadCodeElimination(),
            namer,
        ]
    )
    out = seq(mod)
    return out, dict(namer.layer_of)
