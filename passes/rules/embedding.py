"""Embedding lookups (ONNX Gather on a constant table -> relax.take): the table is stored int8 with one
scale per row, the rows a lookup reads are dequantized after the gather.

A transformer's word-embedding table is most of its weights (MiniLM: 47 of 91 MB) and is only ever
read a few rows at a time, so the scheme costs nothing at run time: take the int8 rows and their
scales, multiply. One scale per row (per token) keeps rare tokens' small rows as precise as common
ones'. The result is float: what reads it (position add, LayerNorm) computes in float."""

from __future__ import annotations

import numpy as np
from tvm import relax

from qcompile.passes.plan import OpPlan
from qcompile.passes.rewrite import const_value, is_const
from qcompile.passes.rules.base import AnnotateContext, RealizeContext, op_rule
from qcompile.passes.rules.emit import int_const


def is_table_lookup(value: relax.Expr) -> bool:
    """take(constant 2-D float table, integer indices, axis=0): an embedding lookup."""
    if not isinstance(value, relax.Call) or len(value.args) != 2 or not is_const(value.args[0]):
        return False
    table, ids = value.args
    return (
        const_value(table).ndim == 2
        and str(getattr(table.ty, "dtype", "")) == "float32"
        and str(getattr(ids.ty, "dtype", "")).startswith(("int", "uint"))
        and int(value.attrs.axis) == 0
    )


def quantize_rows(table: np.ndarray, qmax: int) -> tuple[np.ndarray, np.ndarray]:
    """Symmetric per-row integers and scales: row r = scale[r] * q[r]."""
    t = table.astype(np.float64)
    absmax = np.abs(t).max(axis=1)
    scale = np.where(absmax > 0, absmax / qmax, 1.0)
    return np.clip(np.round(t / scale[:, None]), -qmax, qmax), scale


@op_rule("relax.take")
class EmbeddingRule:
    def annotate(self, ctx: AnnotateContext, binding: relax.VarBinding) -> OpPlan | None:
        layer = ctx.layer_of.get(binding.var.name)
        if layer is None or not is_table_lookup(binding.value):
            return None
        if layer in ctx.skip:
            ctx.float_layers.append(layer)
            return None
        ids = binding.value.args[1]
        return OpPlan(
            var=binding.var.name,
            rule="relax.take",
            inputs=(ids.name,),
            output=binding.var.name,
            layer=layer,
            weight=ctx.weight_spec(layer),
            float_output=True,
        )

    def realize(self, ctx: RealizeContext, binding: relax.VarBinding, plan: OpPlan) -> relax.Expr:
        table, ids = binding.value.args
        spec = plan.weight
        assert spec is not None
        q, scale = quantize_rows(const_value(table), spec.qmax)
        idx, mode = ctx.floated(ids), str(binding.value.attrs.mode)  # out-of-range ids as the model had them
        rows = ctx.emit(relax.op.take(int_const(q, spec.storage), idx, axis=0, mode=mode))
        row_scale = ctx.emit(relax.op.take(relax.const(scale.astype(np.float32)), idx, axis=0, mode=mode))
        dequantized = relax.op.multiply(relax.op.astype(rows, "float32"), relax.op.expand_dims(row_scale, -1))
        return ctx.emit(dequantized, plan.output)
