"""Weight-only matmul layers (the w8a16 and w4a16 precisions): float activations times integer weights
the kernel dequantizes on the fly, the scheme for memory-bound transformer layers.

- int8: per-output-channel scales, stored int8.
- int4: levels 0..15 with a scale and a zero point per group of `group_size` input channels (rows of
  the K x N weight), packed two per byte along K (the low nibble is the even row), so the library holds
  K * N / 2 bytes plus a float scale and a uint8 zero point per group; the unpacking (mask, shift,
  subtract the zero point, multiply by the group's scale) is elementwise on constants and is inlined
  into the matmul kernel's loads.
Integers come from GPTQ rounding when calibration data gives the layer's input statistics (each
column's error pushed onto the columns not yet rounded), else from rounding to nearest."""

from __future__ import annotations

import numpy as np
from tvm import relax

from qcompile.errors import InputError
from qcompile.passes.plan import OpPlan
from qcompile.passes.rewrite import const_value, is_const
from qcompile.passes.rules.base import AnnotateContext, RealizeContext, op_rule, rule_key
from qcompile.passes.rules.chain import follow_chain
from qcompile.passes.rules.emit import int_const
from qcompile.passes.rules.linear import MatmulRule, float_epilogue, layer_plan
from qcompile.passes.scheme import QuantSpec

SCHEME = "weight-only"


SHRINK = np.linspace(1.0, 0.6, 9)  # candidate clipping of each group's range (int4: 15 levels)


def group_scales(weight: np.ndarray, spec: QuantSpec) -> tuple[np.ndarray, np.ndarray]:
    """Scales and zero points for a K x N weight: per column (channel) or per (group of rows, column),
    each G x N (G = K / group size, or 1). Symmetric specs have zero points 0; affine ones span each
    group's [min, max] (with 0 representable). With fewer than 8 bits each group's range is the one,
    among its full range shrunk by SHRINK, with the least squared rounding error: at 16 levels, clipping
    a few large weights costs less than a coarser grid."""
    w = weight.astype(np.float64)
    k, n = w.shape
    rows = spec.group_size if spec.granularity == "group" else k
    grouped = w.reshape(k // rows, rows, n)
    if spec.symmetric:
        lo, hi = -np.abs(grouped).max(axis=1), np.abs(grouped).max(axis=1)  # G x N
    else:
        lo, hi = np.minimum(grouped.min(axis=1), 0.0), np.maximum(grouped.max(axis=1), 0.0)
    best = best_err = None
    for shrink in SHRINK if spec.bits < 8 else (1.0,):
        scale, zero = _grid(lo * shrink, hi * shrink, spec)
        q = np.clip(np.round(grouped / scale[:, None, :]) + zero[:, None, :], spec.qmin, spec.qmax)
        err = np.sum((grouped - (q - zero[:, None, :]) * scale[:, None, :]) ** 2, axis=1)
        if best is None:
            best, best_err = (scale, zero), err
        else:
            better = err < best_err
            best = (np.where(better, scale, best[0]), np.where(better, zero, best[1]))
            best_err = np.where(better, err, best_err)
    return best


def _grid(lo: np.ndarray, hi: np.ndarray, spec: QuantSpec) -> tuple[np.ndarray, np.ndarray]:
    """The scale and integer zero point that map [lo, hi] onto the spec's levels."""
    if spec.symmetric:
        scale = np.where(hi > 0, hi / spec.qmax, 1.0)
        return scale, np.zeros_like(scale)
    scale = np.where(hi > lo, (hi - lo) / (spec.qmax - spec.qmin), 1.0)
    zero = np.clip(np.round(spec.qmin - lo / scale), spec.qmin, spec.qmax)
    return scale, zero


def pack_int4(q: np.ndarray) -> np.ndarray:
    """K x N integers in 0..15 -> K/2 x N bytes: row 2i in the low nibble, row 2i+1 in the high one."""
    u = q.astype(np.uint8)
    return (u[0::2] | (u[1::2] << 4)).astype(np.uint8)


def unpack_int4(packed: np.ndarray) -> np.ndarray:
    """The inverse of pack_int4 (numpy; the library does the same in Relax)."""
    return np.stack([packed & 15, packed >> 4], axis=1).reshape(-1, packed.shape[1]).astype(np.uint8)


@op_rule("relax.matmul", scheme=SCHEME)
class WeightOnlyMatmulRule(MatmulRule):
    def annotate(self, ctx: AnnotateContext, binding: relax.VarBinding) -> OpPlan | None:
        data, weight = binding.value.args[0], binding.value.args[1]
        layer = ctx.layer_of.get(binding.var.name, binding.var.name)
        if not (is_const(weight) and ctx.is_float_tensor(data) and self.supported(binding)) or layer in ctx.skip:
            ctx.float_layers.append(layer)
            return None
        spec = ctx.weight_spec(layer)
        k, n = const_value(weight).shape
        if spec.granularity == "group" and k % spec.group_size:
            raise InputError(
                f"--group-size {spec.group_size} does not divide the {k} input channels of layer {layer!r}"
            )
        if spec.bits == 4 and k % 2:
            raise InputError(f"layer {layer!r} has an odd number of input channels ({k}): int4 packs them in pairs")
        chain = follow_chain(ctx, binding.var, bias_ok=lambda a: a.size in (1, n), float_activation=True)
        return layer_plan(binding, rule_key("relax.matmul", SCHEME), data, chain, layer, spec, True)

    def realize(self, ctx: RealizeContext, binding: relax.VarBinding, plan: OpPlan) -> relax.Expr:
        call = binding.value
        x = ctx.floated(call.args[0])
        weight = const_value(call.args[1]).astype(np.float64)
        spec = plan.weight
        assert spec is not None
        k, n = weight.shape
        scales, zeros = group_scales(weight, spec)  # G x N (G = 1 per channel)
        per_weight = np.repeat(scales, k // scales.shape[0], axis=0)  # K x N
        zero = np.repeat(zeros, k // zeros.shape[0], axis=0)
        lo, hi = spec.qmin - zero, spec.qmax - zero  # the levels around each weight's zero point
        if ctx.rounding is not None:
            centred = ctx.rounding.round(plan.var, weight.T, per_weight.T, np.zeros(n, np.int64), hi.T, qmin=lo.T).T
        else:
            centred = np.clip(np.round(weight / per_weight), lo, hi)
        w = self._dequantized(ctx, centred + zero, scales, zeros, spec)
        bias = None
        if plan.bias is not None:
            bias = np.broadcast_to(const_value(ctx.binding(plan.bias).value.args[1]).reshape(-1), (n,))
        ndim = len(call.ty.shape)
        return float_epilogue(ctx, relax.op.matmul(x, w), plan, bias, ndim, ndim - 1)

    def _dequantized(
        self, ctx: RealizeContext, q: np.ndarray, scales: np.ndarray, zeros: np.ndarray, spec: QuantSpec
    ) -> relax.Expr:
        """The float K x N weight the matmul reads, (q - zero) * scale, computed from the stored integers."""
        k, n = q.shape
        groups = scales.shape[0]
        if spec.bits == 4:
            packed = relax.const(pack_int4(q), "uint8")
            lo = ctx.emit(relax.op.bitwise_and(packed, relax.const(np.uint8(15), "uint8")))
            hi = ctx.emit(relax.op.right_shift(packed, relax.const(np.uint8(4), "uint8")))
            stored = ctx.emit(relax.op.reshape(relax.op.stack([lo, hi], axis=1), [k, n]))
        else:
            stored = int_const(q, spec.storage)
        w = ctx.emit(relax.op.reshape(relax.op.astype(stored, "float32"), [groups, k // groups, n]))
        if np.any(zeros):
            zero = relax.const(zeros.astype(np.uint8)[:, None, :], "uint8")
            w = ctx.emit(relax.op.subtract(w, relax.op.astype(zero, "float32")))
        scaled = ctx.emit(relax.op.multiply(w, relax.const(scales.astype(np.float32)[:, None, :])))
        return ctx.emit(relax.op.reshape(scaled, [k, n]))
