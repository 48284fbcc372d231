"""Relax emission helpers shared by the rules: quantize, dequantize, requantize, integer constants."""

from __future__ import annotations

import numpy as np
from tvm import relax

from qcompile.passes.plan import QParams
from qcompile.passes.rules.fixed_point import multiplier_bits, quantize_multiplier


def int_const(value: np.ndarray | int, dtype: str) -> relax.Expr:
    """An integer constant of exactly `dtype` (relax.const would narrow int64 to int32)."""
    return relax.const(np.asarray(value).astype(dtype), dtype)


def channel_shape(values: np.ndarray, ndim: int, axis: int) -> np.ndarray:
    """Reshape a per-channel vector so it broadcasts along `axis` of an ndim tensor."""
    if values.size == 1:
        return values.reshape(())
    shape = [1] * ndim
    shape[axis] = values.size
    return values.reshape(shape)


def quantize(bb: relax.BlockBuilder, x: relax.Expr, qp: QParams, name: str = "q") -> relax.Expr:
    """float -> integer at a float boundary: clip(round(x / scale) + zp)."""
    y = bb.emit(relax.op.multiply(x, relax.const(1.0 / qp.scale, "float32")))
    y = bb.emit(relax.op.round(y))
    if qp.zero_point:
        y = bb.emit(relax.op.add(y, relax.const(float(qp.zero_point), "float32")))
    y = bb.emit(relax.op.clip(y, float(qp.qmin), float(qp.qmax)))
    return bb.emit(relax.op.astype(y, qp.dtype), name)


def dequantize(bb: relax.BlockBuilder, q: relax.Expr, qp: QParams, name: str = "dq") -> relax.Expr:
    """integer -> float at a float boundary: (q - zp) * scale."""
    y = bb.emit(relax.op.astype(q, "float32"))
    if qp.zero_point:
        y = bb.emit(relax.op.subtract(y, relax.const(float(qp.zero_point), "float32")))
    return bb.emit(relax.op.multiply(y, relax.const(qp.scale, "float32")), name)


def requantize(
    bb: relax.BlockBuilder,
    acc: relax.Expr,
    acc_scale: np.ndarray | float,
    out: QParams,
    *,
    acc_bits: int,
    axis: int = 1,
    ndim: int = 4,
    clamp: tuple[int, int] | None = None,
    name: str = "rq",
) -> relax.Expr:
    """int accumulator (real = acc * acc_scale, per channel along `axis`) -> out.dtype with fixed-point
    multiplier and shift; `clamp` (integer bounds in the output domain) folds relu/clip."""
    multiplier = np.atleast_1d(np.asarray(acc_scale, dtype=np.float64)) / out.scale
    m, shift = quantize_multiplier(multiplier, multiplier_bits(acc_bits))
    y = bb.emit(relax.op.astype(acc, "int64"))
    if m.size == 1:
        factor = int_const(int(m[0]), "int64")
    else:  # stored as int32 (m < 2**31) and widened inside the fused kernel: a third of the bytes
        factor = bb.emit(relax.op.astype(int_const(channel_shape(m, ndim, axis), "int32"), "int64"))
    y = bb.emit(relax.op.multiply(y, factor))
    return shift_to_output(bb, y, shift, out, clamp=clamp, name=name)


def shift_to_output(
    bb: relax.BlockBuilder,
    y: relax.Expr,
    shift: int,
    out: QParams,
    *,
    clamp: tuple[int, int] | None = None,
    name: str = "rq",
) -> relax.Expr:
    """int64 y (real = y * out.scale * 2**-shift) -> rounded, shifted, offset, clamped out.dtype."""
    y = bb.emit(relax.op.add(y, int_const(1 << (shift - 1), "int64")))
    y = bb.emit(relax.op.right_shift(y, int_const(shift, "int64")))
    if out.zero_point:
        y = bb.emit(relax.op.add(y, int_const(out.zero_point, "int64")))
    lo, hi = clamp if clamp is not None else (out.qmin, out.qmax)
    y = bb.emit(relax.op.clip(y, int(max(lo, out.qmin)), int(min(hi, out.qmax))))
    return bb.emit(relax.op.astype(y, out.dtype), name)


def clamp_bounds(qp: QParams, clamp: tuple[float, float] | None) -> tuple[int, int] | None:
    """A fused activation's real bounds as integers of the output site."""
    if clamp is None:
        return None
    lo = qp.qmin if clamp[0] == -np.inf else qp.quantize_real(clamp[0])
    hi = qp.qmax if clamp[1] == np.inf else qp.quantize_real(clamp[1])
    return lo, hi


def centered(bb: relax.BlockBuilder, x: relax.Expr, qp: QParams, dtype: str = "int64") -> relax.Expr:
    """x - zero_point, widened to `dtype`."""
    y = bb.emit(relax.op.astype(x, dtype))
    if qp.zero_point:
        y = bb.emit(relax.op.subtract(y, int_const(qp.zero_point, dtype)))
    return y
