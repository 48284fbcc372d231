"""TFLite's reference integer arithmetic, for targets whose kernels are TFLite's (the Ethos-U NPU: Vela's
command stream is bit-exact with TFLite's reference kernels).

qcompile's own requantize (`fixed_point.py`) rounds once, with one shift per tensor. TFLite's rounds twice:
a Q31 multiplier per channel with its own exponent (`QuantizeMultiplier`, from frexp), the high half of
the doubled product rounded half away from zero (`SaturatingRoundingDoublingHighMul`), then a rounding
right shift (`RoundingDivideByPOT`); its fully-connected kernel rounds once (x * m + 2**(30 - e)) >> (31 - e),
measured on LiteRT 2.3's reference kernels. The forms differ by one LSB on about 0.1% of outputs, so a plan with
`arithmetic="tflite"` realizes TFLite's form, and the integer Relax module then computes exactly what the
reference kernels (and the NPU) compute. Everything runs in int64, so no product overflows.

`multiply` is the numpy reference the tests hold the emitted ops to."""

from __future__ import annotations

import numpy as np
from tvm import relax

from qcompile.passes.plan import QParams
from qcompile.passes.rules.emit import channel_shape, int_const

ADD_LEFT_SHIFT = 20  # TFLite's int8 add: inputs are scaled up by 2**20 before their multipliers


def quantize_multiplier(real: np.ndarray | float) -> tuple[np.ndarray, np.ndarray]:
    """TFLite's QuantizeMultiplier, elementwise: real = m * 2**(e - 31) with 2**30 <= m < 2**31."""
    real = np.atleast_1d(np.asarray(real, np.float64))
    if np.any(real <= 0) or not np.all(np.isfinite(real)):
        raise ValueError("requantize multipliers must be positive and finite")
    frac, exp = np.frexp(real)
    m = np.round(frac * 2.0**31).astype(np.int64)
    carry = m == 2**31
    m[carry] //= 2
    exp = exp.astype(np.int64) + carry
    return m, exp


def multiply(x: np.ndarray, real: np.ndarray | float) -> np.ndarray:
    """MultiplyByQuantizedMultiplier(x, QuantizeMultiplier(real)) in numpy (int64 in, int64 out)."""
    m, e = quantize_multiplier(real)
    x = np.asarray(x, np.int64) * (np.int64(1) << np.maximum(e, 0))
    product = x * m
    rounded = product + np.where(product >= 0, 1 << 30, 1 - (1 << 30))
    high = np.where(rounded >= 0, rounded >> 31, -((-rounded) >> 31))  # C's division: toward zero
    shift = np.maximum(-e, 0)
    mask = (np.int64(1) << shift) - 1
    return (high >> shift) + ((high & mask) > (mask >> 1) + (high < 0))


def multiply_once(x: np.ndarray, real: np.ndarray | float) -> np.ndarray:
    """The fully-connected kernel's single rounding of x * real (int64 in, int64 out)."""
    m, e = quantize_multiplier(real)
    total = 31 - e
    return (np.asarray(x, np.int64) * m + (np.int64(1) << (total - 1))) >> total


def rounded_mean(total: np.ndarray, count: int) -> np.ndarray:
    """TFLite's average pool: the window sum divided by its count, rounded half away from zero."""
    total = np.asarray(total, np.int64)
    num = np.where(total > 0, total + count // 2, total - count // 2)
    return np.where(num >= 0, num // count, -((-num) // count))


def activation_bounds(out: QParams, clamp: tuple[float, float] | None) -> tuple[int, int]:
    """TFLite's fused-activation range in the output's integers (TfLiteRound: half away from zero)."""
    lo, hi = out.qmin, out.qmax
    if clamp is not None:
        for bound, side in ((clamp[0], "lo"), (clamp[1], "hi")):
            if np.isfinite(bound):
                q = out.zero_point + int(np.sign(bound / out.scale) * np.floor(abs(bound / out.scale) + 0.5))
                lo, hi = (max(lo, q), hi) if side == "lo" else (lo, min(hi, q))
    return lo, hi


def _const(values: np.ndarray, ndim: int, axis: int) -> relax.Expr:
    values = np.asarray(values, np.int64)
    if np.all(values == values.reshape(-1)[0]):
        return int_const(int(values.reshape(-1)[0]), "int64")
    return int_const(channel_shape(values, ndim, axis), "int64")


def emit_multiply(bb: relax.BlockBuilder, x: relax.Expr, real, ndim: int = 0, axis: int = 1) -> relax.Expr:
    """The ops of `multiply` on an integer expression (per channel along `axis` when `real` is a vector),
    in a form that reads each intermediate as few times as the rounding allows (TVM inlines a fused
    chain into one expression, copying an intermediate once per read):
    - TFLite's high half, (p + nudge) / 2**31 truncated with nudge = 2**30 or 1 - 2**30 by p's sign,
      equals (p + 2**30) >> 31 for every p (for p < 0 the truncation is a ceiling: (p + 1 - 2**30 +
      2**31 - 1) >> 31);
    - its rounding divide by 2**s, (h >> s) + ((h & mask) > (mask >> 1) + (h < 0)), rounds half away
      from zero: (h + 2**(s - 1) - (h < 0)) >> s.
    `multiply` keeps TFLite's own form: the tests hold one to the other."""
    m, e = quantize_multiplier(real)
    x = bb.emit(relax.op.astype(x, "int64"))
    if np.any(e > 0):
        x = bb.emit(relax.op.multiply(x, _const(np.int64(1) << np.maximum(e, 0), ndim, axis)))
    product = bb.emit(relax.op.add(relax.op.multiply(x, _const(m, ndim, axis)), int_const(1 << 30, "int64")))
    high = bb.emit(relax.op.right_shift(product, int_const(31, "int64")))
    shift = np.maximum(-e, 0)
    if not np.any(shift):
        return high
    half = np.where(shift > 0, np.int64(1) << np.maximum(shift - 1, 0), 0)
    negative = relax.op.astype(relax.op.less(high, int_const(0, "int64")), "int64")
    if not np.all(shift > 0):  # a channel with no shift keeps h as it is
        negative = relax.op.multiply(negative, _const((shift > 0).astype(np.int64), ndim, axis))
    nudged = bb.emit(relax.op.subtract(relax.op.add(high, _const(half, ndim, axis)), negative))
    return bb.emit(relax.op.right_shift(nudged, _const(shift, ndim, axis)))


def emit_multiply_once(bb: relax.BlockBuilder, x: relax.Expr, real, ndim: int = 0, axis: int = 1) -> relax.Expr:
    """The ops of `multiply_once`."""
    m, e = quantize_multiplier(real)
    total = 31 - e
    x = bb.emit(relax.op.astype(x, "int64"))
    product = bb.emit(relax.op.multiply(x, _const(m, ndim, axis)))
    rounded = bb.emit(relax.op.add(product, _const(np.int64(1) << (total - 1), ndim, axis)))
    return bb.emit(relax.op.right_shift(rounded, _const(total, ndim, axis)))


def emit_output(bb: relax.BlockBuilder, y: relax.Expr, out: QParams, bounds: tuple[int, int], name: str) -> relax.Expr:
    """int64 y -> y + zero point, clamped to `bounds`, in the output's dtype."""
    if out.zero_point:
        y = bb.emit(relax.op.add(y, int_const(out.zero_point, "int64")))
    return bb.emit(relax.op.astype(bb.emit(relax.op.clip(y, bounds[0], bounds[1])), out.dtype), name)


def f32(scale) -> np.ndarray:
    """A scale as the flatbuffer stores it (float32), back in float64: TFLite computes its multipliers in
    double from the float32 scales, so realize must start from the same numbers."""
    return np.asarray(scale, np.float32).astype(np.float64)


def emit_requantize(
    bb: relax.BlockBuilder,
    acc: relax.Expr,
    input_scale: float,
    weight_scale: np.ndarray | float,
    out: QParams,
    *,
    ndim: int,
    axis: int,
    clamp: tuple[float, float] | None,
    name: str,
    round_once: bool = False,
) -> relax.Expr:
    """An accumulator (real = acc * input_scale * weight_scale[c]) -> the output site, as TFLite's conv
    and mul kernels do it (`round_once`: as its fully-connected kernel)."""
    real = f32(input_scale) * np.atleast_1d(f32(weight_scale)) / f32(out.scale)
    y = (emit_multiply_once if round_once else emit_multiply)(bb, acc, real, ndim, axis)
    return emit_output(bb, y, out, activation_bounds(out, clamp), name)


def add_multipliers(a: QParams, b: QParams, out: QParams) -> tuple[float, float, float]:
    """TFLite's int8 add: each input's multiplier and the output's, around the larger input scale."""
    sa, sb, so = (float(f32(qp.scale)) for qp in (a, b, out))
    twice_max = 2.0 * max(sa, sb)
    return sa / twice_max, sb / twice_max, twice_max / ((1 << ADD_LEFT_SHIFT) * so)


def emit_add(
    bb: relax.BlockBuilder, a: relax.Expr, qa: QParams, b: relax.Expr, qb: QParams, out: QParams, clamp, name: str
) -> relax.Expr:
    ma, mb, mo = add_multipliers(qa, qb, out)
    terms = []
    for x, qp, mult in ((a, qa, ma), (b, qb, mb)):
        centered = bb.emit(relax.op.subtract(bb.emit(relax.op.astype(x, "int64")), int_const(qp.zero_point, "int64")))
        shifted = bb.emit(relax.op.left_shift(centered, int_const(ADD_LEFT_SHIFT, "int64")))
        terms.append(emit_multiply(bb, shifted, mult))
    total = bb.emit(relax.op.add(terms[0], terms[1]))
    return emit_output(bb, emit_multiply(bb, total, mo), out, activation_bounds(out, clamp), name)


def emit_mean(bb: relax.BlockBuilder, total: relax.Expr, count: int, out: QParams, name: str) -> relax.Expr:
    """`rounded_mean` of a window sum of the raw integers (the zero point included: in and out share it)."""
    total = bb.emit(relax.op.astype(total, "int64"))
    zero = int_const(0, "int64")
    half = int_const(count // 2, "int64")
    num = bb.emit(
        relax.op.where(relax.op.greater(total, zero), relax.op.add(total, half), relax.op.subtract(total, half))
    )
    divisor = int_const(count, "int64")
    positive = relax.op.floor_divide(num, divisor)
    negative = relax.op.negative(relax.op.floor_divide(relax.op.negative(num), divisor))
    y = bb.emit(relax.op.where(relax.op.greater_equal(num, zero), positive, negative))
    return bb.emit(relax.op.astype(bb.emit(relax.op.clip(y, out.qmin, out.qmax)), out.dtype), name)
