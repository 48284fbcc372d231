"""Fixed-point requantization constants (Jacob et al., CVPR 2018; TFLite's integer-only scheme).

A real multiplier M > 0 becomes an integer m and a right shift s with M ~= m * 2**-s; at run time
q = ((acc * m + 2**(s-1)) >> s) + zero_point, all in int64, so no float touches the integer path."""

from __future__ import annotations

import numpy as np

MAX_SHIFT = 62


def multiplier_bits(acc_bits: int) -> int:
    """Precision of m such that acc * m cannot overflow int64 (|acc| < 2**acc_bits)."""
    return max(8, min(31, 62 - acc_bits))


def quantize_multiplier(multiplier: np.ndarray, bits: int = 31) -> tuple[np.ndarray, np.ndarray]:
    """Per element (m, s) with m < 2**bits, 1 <= s <= 62 and m * 2**-s the closest such value to M."""
    mult = np.atleast_1d(np.asarray(multiplier, dtype=np.float64))
    if np.any(mult <= 0) or not np.all(np.isfinite(mult)):
        raise ValueError("requantize multipliers must be positive and finite")
    exponent = np.floor(np.log2(mult)).astype(np.int64)
    shift = (bits - 1) - exponent
    m = np.round(mult * np.exp2(shift.astype(np.float64))).astype(np.int64)
    carry = m >= (1 << bits)
    m = np.where(carry, m >> 1, m)
    shift = np.where(carry, shift - 1, shift)
    if np.any(shift < 1):
        raise ValueError(f"requantize multiplier {mult.max():g} too large for fixed point")
    too_small = shift > MAX_SHIFT
    if np.any(too_small):
        m = np.where(too_small, np.round(mult * np.exp2(MAX_SHIFT)).astype(np.int64), m)
        shift = np.where(too_small, MAX_SHIFT, shift)
    return m, shift


def apply_multiplier(acc: np.ndarray, m: np.ndarray, shift: np.ndarray) -> np.ndarray:
    """The integer reference of what the emitted Relax ops compute (used by tests)."""
    acc = acc.astype(np.int64)
    return (acc * m + (np.int64(1) << (shift - 1))) >> shift


def bits_needed(bound: float) -> int:
    """Bits for a signed magnitude up to `bound` (sign excluded)."""
    return int(np.ceil(np.log2(max(bound, 2.0)))) + 1
