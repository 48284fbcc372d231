"""The requantize's 32x32->64 multiply, kept one instruction on x86.

The requantize epilogue (`passes/rules/emit.py`) multiplies an int32 value, widened to int64, by an int32
multiplier: `astype(acc + bias, int64) * m`. The signed int32 add carries LLVM's `nsw` flag, so LLVM (or
TVM's simplifier before it) rewrites the widened sum as `int64(acc) + int64(bias)`: a 33-bit value as
far as LLVM can tell, so LLVM cannot use the signed
32x32->64 multiply (`vpmuldq`) and emulates a full 64x64 multiply instead: three `vpmuludq` and the
shifts and adds between them for every four lanes. That made the epilogue cost more than the dot
products of a pointwise conv with few input channels (EfficientNet's 16 -> 96 expansion: 0.92 ms, of
which 0.55 ms remained with the multiply fixed, measured one kernel at a time).

`keep_int32_sums` puts the sum back into int32 where it feeds such a product: the add is done as a
wrapping uint32 add (no `nsw` flag, so LLVM cannot widen it again) and sign-extended once. The int32
add is what the Relax graph says (the sum is an int32 tensor there); the accumulators of int8 kernels
stay far from 2**31 (realize checks the bias headroom), so the bits are the same as before, on every
target. It runs after the schedules are applied (tuned or default), so the tuning records' workloads do
not change.
"""

from __future__ import annotations

import tvm
import tvm_ffi
from tvm import tirx


def _is_int(expr, bits: int) -> bool:
    return str(expr.ty).split("x")[0] == f"int{bits}"


def _widened_int32(expr) -> bool:
    return isinstance(expr, tirx.Cast) and _is_int(expr, 64) and _is_int(expr.value, 32)


def _int32_factor(expr) -> bool:
    """An int64 operand LLVM knows fits 32 bits: a widened int32, or a constant in int32's range."""
    if isinstance(expr, tirx.IntImm):
        return -(2**31) <= int(expr.value) < 2**31
    return _widened_int32(expr)


def _narrowed(wide):
    """int64(a + b) or int64(a) + int64(b), of int32 a and b -> int64(a + b) with the add a wrapping
    uint32 one; else None."""
    if _widened_int32(wide) and isinstance(wide.value, tirx.Add):
        a, b = wide.value.a, wide.value.b
    elif isinstance(wide, tirx.Add) and _widened_int32(wide.a) and _widened_int32(wide.b):
        a, b = wide.a.value, wide.b.value
    else:
        return None
    narrow = str(a.ty)
    unsigned = "u" + narrow
    total = tirx.Add(tirx.reinterpret(unsigned, a), tirx.reinterpret(unsigned, b))
    return tirx.Cast(str(wide.ty), tirx.reinterpret(narrow, total))


def _product(mul):
    if not isinstance(mul, tirx.Mul) or not _is_int(mul, 64):
        return mul
    for sum_, factor, first in ((mul.a, mul.b, True), (mul.b, mul.a, False)):
        narrowed = _narrowed(sum_) if _int32_factor(factor) else None
        if narrowed is not None:
            return tirx.Mul(narrowed, factor) if first else tirx.Mul(factor, narrowed)
    return mul


def keep_int32_sums(mod: tvm.IRModule) -> tvm.IRModule:
    """Every PrimFunc of `mod` with its widened int32 sums that feed a 32x32->64 product narrowed."""
    updates = {}
    for gvar, func in mod.functions_items():
        if isinstance(func, tirx.PrimFunc):
            mapped = tvm_ffi.structural_map(func, [(tirx.Mul, _product)])
            if not mapped.same_as(func):
                updates[gvar] = mapped
    for gvar, func in updates.items():
        mod[gvar] = func
    return mod
