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


def per_channel(values: np.ndarray, expr: relax.Expr) -> relax.Expr:
    """A float32 constant that broadcasts along `expr`'s channel axis (axis 1 of NCHW / [N, K], the last
    axis otherwise: where per-channel statistics and SmoothQuant divisors live)."""
    ndim = len(expr.ty.shape)
    values = np.asarray(values, np.float64)
    if values.size == 1:
        return relax.const(np.float32(values.reshape(())), "float32")
    return relax.const(channel_shape(values.astype(np.float32), ndim, 1 if ndim in (2, 4) else ndim - 1), "float32")


def quantize(bb: relax.BlockBuilder, x: relax.Expr, qp: QParams, name: str = "q") -> relax.Expr:
    """float -> integer at a float boundary: clip(round(x / scale) + zp) (x / (scale * divisor) per channel
    on a smoothed site)."""
    y = bb.emit(relax.op.multiply(x, per_channel(1.0 / qp.channel_scales(), x)))
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
    return bb.emit(relax.op.multiply(y, per_channel(qp.channel_scales(), y)), name)


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
    return fixed_point_output(bb, [(acc, m, acc_bits)], shift, out, clamp=clamp, name=name, ndim=ndim, axis=axis)


def fixed_point_output(
    bb: relax.BlockBuilder,
    terms: list[tuple[relax.Expr, np.ndarray, int]],
    shift: int,
    out: QParams,
    *,
    clamp: tuple[int, int] | None = None,
    name: str = "rq",
    ndim: int = 4,
    axis: int = 1,
) -> relax.Expr:
    """q = clamp(((sum_i x_i * m_i + 2**(shift-1)) >> shift) + zero_point) for integer terms
    (x_i with |x_i| < 2**bits_i, multipliers m_i < 2**31 per tensor or per channel along `axis`).

    When the terms are int32 the same integers are computed the way vector units like: each product is
    one 32x32->64 multiply, and with shift >= 33 only the high 32 bits of the sum are needed, so the
    rounding, shift, zero point and clamp run in int32 (the low bits only ever feed the rounding,
    and 2**(shift-1) is a whole multiple of 2**32). A smaller shift is raised by pre-shifting the
    terms left where their range allows. Otherwise the sum is rounded and shifted in int64."""
    narrow = all(str(x.ty.dtype) == "int32" for x, _, _ in terms)
    raise_by = 33 - shift
    if narrow and raise_by > 0 and all(bits + raise_by <= 30 for _, _, bits in terms):
        terms = [
            (bb.emit(relax.op.left_shift(x, int_const(raise_by, "int32"))), m, bits + raise_by) for x, m, bits in terms
        ]
        shift += raise_by
    bound = sum(2.0**bits * float(np.max(m)) for _, m, bits in terms)
    y = None
    for x, m, _ in terms:
        if m.size == 1:
            factor = int_const(int(m.reshape(-1)[0]), "int64")
        else:  # stored as int32 (m < 2**31) and widened inside the fused kernel: half the bytes
            factor = bb.emit(relax.op.astype(int_const(channel_shape(m, ndim, axis), "int32"), "int64"))
        product = bb.emit(relax.op.multiply(bb.emit(relax.op.astype(x, "int64")), factor))
        y = product if y is None else bb.emit(relax.op.add(y, product))
    lo, hi = clamp if clamp is not None else (out.qmin, out.qmax)
    lo, hi = int(max(lo, out.qmin)), int(min(hi, out.qmax))
    if not (narrow and shift >= 33 and bound < 2.0**62):
        return _shift_int64(bb, y, shift, out, lo, hi, name)
    high = bb.emit(relax.op.astype(bb.emit(relax.op.right_shift(y, int_const(32, "int64"))), "int32"))
    rest = shift - 32
    offset = 1 << (rest - 1)
    folded = abs(out.zero_point) << rest
    zero_point_inside = folded + offset < 2**30  # then |high + offset| stays far from 2**31
    if zero_point_inside:
        offset += out.zero_point << rest
    q = bb.emit(relax.op.right_shift(bb.emit(relax.op.add(high, int_const(offset, "int32"))), int_const(rest, "int32")))
    if out.zero_point and not zero_point_inside:
        q = bb.emit(relax.op.add(q, int_const(out.zero_point, "int32")))
    return bb.emit(relax.op.astype(bb.emit(relax.op.clip(q, lo, hi)), out.dtype), name)


def _shift_int64(bb, y: relax.Expr, shift: int, out: QParams, lo: int, hi: int, name: str) -> relax.Expr:
    """int64 y (real = y * out.scale * 2**-shift) -> rounded, shifted, offset, clamped out.dtype."""
    y = bb.emit(relax.op.add(y, int_const(1 << (shift - 1), "int64")))
    y = bb.emit(relax.op.right_shift(y, int_const(shift, "int64")))
    if out.zero_point:
        y = bb.emit(relax.op.add(y, int_const(out.zero_point, "int64")))
    return bb.emit(relax.op.astype(bb.emit(relax.op.clip(y, lo, hi)), out.dtype), name)


def clamp_bounds(qp: QParams, clamp: tuple[float, float] | None) -> tuple[int, int] | None:
    """A fused activation's real bounds as integers of the output site."""
    if clamp is None:
        return None
    lo = qp.qmin if clamp[0] == -np.inf else qp.quantize_real(clamp[0])
    hi = qp.qmax if clamp[1] == np.inf else qp.quantize_real(clamp[1])
    return lo, hi


def centered(bb: relax.BlockBuilder, x: relax.Expr, qp: QParams, dtype: str = "int32") -> relax.Expr:
    """x - zero_point, widened to `dtype`."""
    y = bb.emit(relax.op.astype(x, dtype))
    if qp.zero_point:
        y = bb.emit(relax.op.subtract(y, int_const(qp.zero_point, dtype)))
    return y
