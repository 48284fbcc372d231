"""annotate: decide which tensors become integer. Walks the canonical float module in binding order,
asks each op's rule, and returns a QuantPlan; it never changes the IR."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import replace

import tvm
from tvm import relax

from qcompile.errors import InputError
from qcompile.passes.plan import OpPlan, QuantPlan, root_site
from qcompile.passes.rewrite import main_bindings, op_name, operands, var_uses
from qcompile.passes.rules import OP_RULES, AnnotateContext
from qcompile.passes.rules.base import rule_key
from qcompile.passes.scheme import WEIGHT_INT8, QuantSpec


def resolve_skips(layer_names: list[str], skip: Iterable[str], skip_first: bool, skip_last: bool) -> frozenset[str]:
    """ONNX node names to keep float; an unknown name is an error that lists the real ones."""
    names = set(skip)
    unknown = sorted(names - set(layer_names))
    if unknown:
        sample = ", ".join(layer_names[:8]) + (", ..." if len(layer_names) > 8 else "")
        raise InputError(f"--skip names no quantizable layer: {', '.join(unknown)} (layers: {sample})")
    if layer_names and skip_first:
        names.add(layer_names[0])
    if layer_names and skip_last:
        names.add(layer_names[-1])
    return frozenset(names)


def annotate(
    mod: tvm.IRModule,
    *,
    layer_of: Mapping[str, str],
    act: QuantSpec,
    bits: int,
    target: str,
    skip: frozenset[str] = frozenset(),
    layer_act: Mapping[str, QuantSpec] | None = None,
    precisions: Mapping[str, str] | None = None,
    weight: QuantSpec = WEIGHT_INT8,
    layer_weight: Mapping[str, QuantSpec] | None = None,
    layer_scheme: Mapping[str, str] | None = None,
    arithmetic: str = "qcompile",
    integer_outputs: bool = False,
) -> QuantPlan:
    """`integer_outputs`: every op the rules can take stays integer up to the model's outputs (a target
    that runs the whole graph in integers, e.g. the NPU, whose last layer writes int8, not floats)."""
    func = mod["main"]
    bindings = main_bindings(func)
    consumers: dict[relax.Var, list[relax.VarBinding]] = {}
    for b in bindings:
        for a in operands(b.value):
            consumers.setdefault(a, []).append(b)
    ctx = AnnotateContext(
        bindings={b.var.name: b for b in bindings},
        uses=var_uses(bindings, func),
        consumers=consumers,
        layer_of=dict(layer_of),
        skip=skip,
        act=act,
        layer_act=dict(layer_act or {}),
        weight=weight,
        layer_weight=dict(layer_weight or {}),
        layer_scheme=dict(layer_scheme or {}),
        arithmetic=arithmetic,
    )
    ops = []
    absorbed: set[str] = set()
    for b in bindings:
        if b.var.name in absorbed:
            continue
        op = op_name(b.value) or ""
        layer = ctx.layer_of.get(b.var.name)
        scheme = ctx.layer_scheme.get(layer) if layer is not None else None
        if scheme is not None and rule_key(op, scheme) not in OP_RULES:
            raise InputError(f"layer {layer!r} ({op.removeprefix('relax.')}) cannot take the {scheme} scheme")
        rule = OP_RULES.find(rule_key(op, scheme))
        plan = rule.annotate(ctx, b) if rule is not None else None
        if plan is not None:
            ops.append(plan)
            absorbed.update(plan.fused)
    sites = dict(ctx.sites)
    if not integer_outputs:
        ops = _drop_float_only(ops)
        ops, sites = _dequantize_wide_outputs(ops, sites)
    sites, aliases = _used(ops, sites, dict(ctx.aliases))
    return QuantPlan(
        bits=bits,
        target=target,
        ops=tuple(ops),
        sites=sites,
        aliases=aliases,
        float_layers=tuple(ctx.float_layers),
        layer_precision=_layer_precision(ops, ctx.float_layers, sites, aliases, precisions or {}),
        arithmetic=arithmetic,
    )


def _layer_precision(
    ops: list[OpPlan],
    float_layers: list[str],
    sites: dict[str, QuantSpec],
    aliases: dict[str, str],
    asked: Mapping[str, str],
) -> dict[str, str]:
    """What each layer computes in, as realized: its input site's width for integer layers (a layer may
    read 16 bits because another reader of the same tensor asked for int16), else the float precision."""
    # a float layer computes in the float precision asked for it, fp32 where an integer one was asked
    # but the op cannot take it (an activation x activation matmul under --weights int4)
    out = {name: asked[name] if asked.get(name) in ("fp16", "fp32") else "fp32" for name in float_layers}
    for op in ops:
        if op.layer is not None and op.rule.endswith("@weight-only") and op.weight is not None:
            out[op.layer] = f"w{op.weight.bits}a16"  # float activations: the weights' width names it
        elif op.layer is not None:
            roots = (root_site(aliases, name) for name in op.inputs)
            widths = {sites[root].dtype for root in roots if root in sites}
            out[op.layer] = "int16" if "int16" in widths else "int8"
    return out


def _drop_float_only(ops: list[OpPlan]) -> list[OpPlan]:
    """An integer op without weights (add, concat, reshape, ...) whose result no integer op reads would
    only be dequantized again: it stays float, and so, in turn, may the ops feeding it (a transformer's
    residual add before LayerNorm, the reshapes between a projection and a float attention matmul).
    Layers stay integer; their accumulators are then dequantized directly (_dequantize_wide_outputs)."""
    while True:
        read = {name for op in ops for name in op.inputs}
        kept = [op for op in ops if op.layer is not None or op.output in read]
        if len(kept) == len(ops):
            return ops
        ops = kept


def _used(ops: list[OpPlan], sites: dict[str, QuantSpec], aliases: dict[str, str]) -> tuple[dict, dict]:
    """Only the sites and aliases the remaining ops read or write."""
    produced = {op.output for op in ops if not op.float_output}
    aliases = {k: v for k, v in aliases.items() if k in produced}
    needed = {root_site(aliases, name) for op in ops for name in op.inputs}
    needed |= {root_site(aliases, name) for name in produced}
    return {k: v for k, v in sites.items() if k in needed}, aliases


def _dequantize_wide_outputs(ops: list[OpPlan], sites: dict[str, QuantSpec]) -> tuple[list[OpPlan], dict]:
    """A conv/matmul whose result no integer op reads never needs its 8-bit output site."""
    read_as_integer = {name for op in ops for name in op.inputs}
    out = []
    for op in ops:
        if op.layer is not None and op.output not in read_as_integer:
            op = replace(op, float_output=True)
            sites.pop(op.output, None)
        out.append(op)
    return out, sites
