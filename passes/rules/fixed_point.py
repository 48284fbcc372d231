"""Fixed-point requantization constants (Jacob et al., CVPR 2018; TFLite's integer-only scheme).

A real multiplier M > 0 becomes an integer m and a right shift s with M ~= m * 2**-s; at run time
q = ((acc * m + 2**(s-1)) >> s) + zero_point, all in int64 (m per channel, s per tensor), so no float
touches the integer path."""

from __future__ import annotations

import numpy as np

MAX_SHIFT = 62


def multiplier_bits(acc_bits: int) -> int:
    """Precision of m such that acc * m cannot overflow int64 (|acc| < 2**acc_bits)."""
    return max(8, min(31, 62 - acc_bits))


def quantize_multiplier(multiplier: np.ndarray, bits: int = 31) -> tuple[np.ndarray, int]:
    """Per-element integers m < 2**bits and one shared right shift s with m * 2**-s ~= M.

    One shift per tensor (not per channel) keeps the per-channel constants to a single int32 vector;
    the largest multiplier keeps `bits` of precision and every element has the same absolute error,
    at most 2**-(s+1), which is what matters once the result is rounded to an integer."""
    mult = np.atleast_1d(np.asarray(multiplier, dtype=np.float64))
    if np.any(mult <= 0) or not np.all(np.isfinite(mult)):
        raise ValueError("requantize multipliers must be positive and finite")
    shift = (bits - 1) - int(np.floor(np.log2(mult.max())))
    if np.round(mult.max() * np.exp2(shift)) >= (1 << bits):
        shift -= 1
    if shift < 1:
        raise ValueError(f"requantize multiplier {mult.max():g} too large for fixed point")
    shift = min(shift, MAX_SHIFT)
    m = np.round(mult * np.exp2(shift)).astype(np.int64)
    return m, shift


def apply_multiplier(acc: np.ndarray, m: np.ndarray, shift: int) -> np.ndarray:
    """The integer reference of what the emitted Relax ops compute (used by tests)."""
    acc = acc.astype(np.int64)
    return (acc * m + (np.int64(1) << (shift - 1))) >> shift


def bits_needed(bound: float) -> int:
    """Bits for a signed magnitude up to `bound` (sign excluded)."""
    return int(np.ceil(np.log2(max(bound, 2.0)))) + 1
